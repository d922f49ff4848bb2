//go:build linux

package shim

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/runc/options"

	"github.com/precopy/precopy/precopy"
	"github.com/precopy/precopy/precopy/settings"
)

// netnsSpec is an OCI spec with a network namespace of the container's
// own and annotations.
func netnsSpec(annotations map[string]string) map[string]any {
	return map[string]any{"annotations": annotations, "linux": map[string]any{"namespaces": []map[string]string{{"type": "network"}}}}
}

// criuConfigOf reads the CRIU config file the bundle's spec names, and
// fails t unless it is precopy's, in the bundle.
func (h *harness) criuConfigOf() []string {
	h.t.Helper()
	_, facts, err := readSpec(h.bundle, settings.Default())
	if err != nil {
		h.t.Fatal(err)
	}
	if want := filepath.Join(h.bundle, criuRPCConfigName); facts.criuConfig != want {
		h.t.Fatalf("the spec names CRIU config %q, want %q", facts.criuConfig, want)
	}
	b, err := os.ReadFile(facts.criuConfig)
	if err != nil {
		h.t.Fatal(err)
	}
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

// TestNetworkCheckpoint: a container with a network namespace of its own
// gets a CRIU config of its own with tcp-established, named in its spec,
// and its checkpoint's report accounts for its loopback and sockets, read
// before the freeze.
func TestNetworkCheckpoint(t *testing.T) {
	h := newHarnessFrom(t, netnsSpec(nil), "")
	if lines := h.criuConfigOf(); !slices.Contains(lines, "tcp-established") {
		t.Errorf("CRIU config %q, want tcp-established", lines)
	}
	report := h.ctrCheckpoint()
	n := report.Network
	// The fake task's init is this test, in the host's network namespace.
	if n == nil || n.TCP != tcpEstablished || n.Loopback == nil || !n.Loopback.Up || n.Sockets == nil {
		t.Fatalf("report's network %+v, want established TCP, loopback up, sockets counted", n)
	}
	// The read is the Pause's, before the freeze: a checkpoint of a
	// running task reads it in the Checkpoint.
	if report, err := h.checkpoint(&options.CheckpointOptions{}); err != nil || report.Network == nil || report.Network.Loopback == nil {
		t.Errorf("checkpoint of a running task: network %+v, %v", report.Network, err)
	}
}

// TestNetworkSettings: io.precopy.tcp=refuse tells CRIU nothing of TCP;
// a container naming its own CRIU config keeps it; one in the host's
// network namespace gets no file and no account.
func TestNetworkSettings(t *testing.T) {
	h := newHarnessFrom(t, netnsSpec(map[string]string{settings.AnnotationTCP: "refuse"}), "")
	if lines := h.criuConfigOf(); slices.Contains(lines, "tcp-established") {
		t.Errorf("tcp=refuse: CRIU config %q", lines)
	}
	if n := h.ctrCheckpoint().Network; n == nil || n.TCP != tcpRefused {
		t.Errorf("tcp=refuse: report's network %+v", n)
	}

	h = newHarnessFrom(t, netnsSpec(map[string]string{criuAnnotation: "/etc/criu/mine.conf"}), "")
	if _, facts, _ := readSpec(h.bundle, settings.Default()); facts.criuConfig != "/etc/criu/mine.conf" {
		t.Errorf("the container's own CRIU config became %q", facts.criuConfig)
	}
	if n := h.ctrCheckpoint().Network; n == nil || n.TCP != tcpOperatorConfig {
		t.Errorf("own CRIU config: report's network %+v", n)
	}

	h = newHarness(t, nil, false)
	if _, err := os.Stat(filepath.Join(h.bundle, criuRPCConfigName)); !os.IsNotExist(err) {
		t.Errorf("host network namespace: a CRIU config of its own (%v)", err)
	}
	if n := h.ctrCheckpoint().Network; n != nil {
		t.Errorf("host network namespace: report's network %+v", n)
	}
}

// TestNetworkRestore: a container restored from an image gets the shim
// as CRIU's action script and tcp-close or tcp-established as the image
// and io.precopy.tcp allow, until its Start restored it; then its dump
// options again.
func TestNetworkRestore(t *testing.T) {
	image := t.TempDir()
	lo := precopy.Loopback{Up: true, Addrs: []string{"127.0.0.1/8"}}
	if err := (&precopy.Report{Network: &precopy.Network{Loopback: &lo}}).Write(image); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		tcp, want, why string
	}{
		{"restore", "tcp-close", "files.img"}, // no sockets to read in this image
		{"close", "tcp-close", "io.precopy.tcp is close"},
	} {
		h := newHarnessFrom(t, netnsSpec(map[string]string{settings.AnnotationTCP: tc.tcp}), image)
		lines := h.criuConfigOf()
		if !slices.Contains(lines, tc.want) || !slices.Contains(lines, "action-script "+shimBinary()) {
			t.Errorf("tcp=%s: restore's CRIU config %q, want the action script and %s", tc.tcp, lines, tc.want)
		}
		if _, why := h.container().network.restoreTCP(image); !strings.Contains(why, tc.why) {
			t.Errorf("tcp=%s: why %q, want it to say %q", tc.tcp, why, tc.why)
		}
		if _, err := h.s.Start(h.ctx, &taskAPI.StartRequest{ID: h.id}); err != nil {
			t.Fatal(err)
		}
		if lines := h.criuConfigOf(); slices.ContainsFunc(lines, func(l string) bool { return strings.HasPrefix(l, "action-script") }) {
			t.Errorf("tcp=%s: after the restore, CRIU config %q, want the dump options", tc.tcp, lines)
		}
	}
}

// TestNetworkRunConfigFirst: precopy's CRIU config starts with the lines
// runc would have handed CRIU.
func TestNetworkRunConfigFirst(t *testing.T) {
	runc := filepath.Join(t.TempDir(), "runc.conf")
	os.WriteFile(runc, []byte("tcp-skip-in-flight\n"), 0o600)
	defer func(old string) { runcDefaultCRIUConfig = old }(runcDefaultCRIUConfig)
	runcDefaultCRIUConfig = runc
	h := newHarnessFrom(t, netnsSpec(nil), "")
	lines := h.criuConfigOf()
	if i, j := slices.Index(lines, "tcp-skip-in-flight"), slices.Index(lines, "tcp-established"); i < 0 || j < i {
		t.Errorf("CRIU config %q: want runc's lines first, then tcp-established", lines)
	}
}

// TestFailedDumpSaysWhy: a failed dump's error carries CRIU's reason from
// its log, which runc's error only names.
func TestFailedDumpSaysWhy(t *testing.T) {
	h := newHarnessFrom(t, netnsSpec(nil), "")
	h.tasks.failDump = true
	h.tasks.dumpLog = "(00.320216) Error (criu/sk-inet.c:137): inet: Unsupported proto 262 for socket 1f1e3\n"
	_, err := h.checkpoint(&options.CheckpointOptions{})
	if err == nil || !strings.Contains(err.Error(), "CRIU: inet: Unsupported proto 262") {
		t.Errorf("failed dump: %v, want CRIU's reason", err)
	}
}

func TestCRIUErrors(t *testing.T) {
	log := filepath.Join(t.TempDir(), "dump.log")
	os.WriteFile(log, []byte(`(00.060307) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted
(00.320216) Error (criu/sk-inet.c:137): inet: Unsupported proto 262 for socket 1f1e3
(00.320220) Error (criu/sk-inet.c:139): inet: For Go programs, consider using "GODEBUG=multipathtcp=0" to disable MPTCP
(00.428463) Error (criu/cr-dump.c:1975): Dumping FAILED.
`), 0o600)
	want := `inet: Unsupported proto 262 for socket 1f1e3; inet: For Go programs, consider using "GODEBUG=multipathtcp=0" to disable MPTCP; Dumping FAILED.`
	if got := criuErrors(log); got != want {
		t.Errorf("criuErrors = %q, want %q", got, want)
	}
	if got := criuErrors(filepath.Join(t.TempDir(), "none")); got != "" {
		t.Errorf("no log: %q", got)
	}
}

func TestWithCRIUReasonOldCRIU(t *testing.T) {
	work := t.TempDir()
	os.WriteFile(filepath.Join(work, "dump.log"), []byte("(01.850713) Error (criu/sockets.c:628): sockets: Can't get 1:16 opt: Operation not supported\n"), 0o600)
	cause := errors.New("OCI runtime checkpoint failed")
	err := withCRIUReason(cause, work)
	if !errors.Is(err, cause) || !strings.Contains(err.Error(), "Can't get 1:16 opt") || !strings.Contains(err.Error(), "CRIU older than 4.2") {
		t.Errorf("error %v: want the cause, CRIU's reason and the hint", err)
	}
}

// TestSetBundleAnnotation: precopy's CRIU config is named in config.json
// without losing any field runc reads.
func TestSetBundleAnnotation(t *testing.T) {
	bundle := t.TempDir()
	spec := `{"ociVersion":"1.2.0","process":{"args":["/netload"]},"annotations":null,"linux":{"namespaces":[{"type":"network","path":"/run/netns/x"}],"unknownField":{"k":1}}}`
	os.WriteFile(filepath.Join(bundle, "config.json"), []byte(spec), 0o600)
	if err := setBundleAnnotation(bundle, criuAnnotation, "/x/precopy-criu.conf"); err != nil {
		t.Fatal(err)
	}
	if err := setBundleAnnotation(bundle, "a", "b"); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(bundle, "config.json"))
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if a := got["annotations"].(map[string]any); a["a"] != "b" || a[criuAnnotation] != "/x/precopy-criu.conf" {
		t.Errorf("annotations: %v", a)
	}
	if got["linux"].(map[string]any)["unknownField"] == nil || got["process"] == nil {
		t.Errorf("fields lost: %s", b)
	}
	os.WriteFile(filepath.Join(bundle, "config.json"), []byte(`{"annotations":[]}`), 0o600)
	if err := setBundleAnnotation(bundle, "a", "b"); err == nil {
		t.Error("annotations that are not a map were replaced")
	}
}
