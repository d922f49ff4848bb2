//go:build linux

package shim

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"

	"github.com/precopy/precopy/precopy/settings"
)

// TestSpecFacts reads what the shim needs of a container's OCI spec: a
// read-only rootfs, whether it has a network namespace of its own (new or
// joined, like a pod's) or the host's, and a CRIU config file of its own.
func TestSpecFacts(t *testing.T) {
	for name, tc := range map[string]struct {
		spec string
		want specFacts
	}{
		"own netns":       {`{"linux":{"namespaces":[{"type":"pid"},{"type":"network"}]}}`, specFacts{ownNetns: true}},
		"pod's netns":     {`{"linux":{"namespaces":[{"type":"network","path":"/var/run/netns/cni-1"}]}}`, specFacts{ownNetns: true, netnsPath: "/var/run/netns/cni-1"}},
		"own CRIU config": {`{"annotations":{"org.criu.config":"/etc/criu/mine.conf"}}`, specFacts{criuConfig: "/etc/criu/mine.conf"}},
		"host netns":      {`{"root":{"readonly":true},"linux":{"namespaces":[{"type":"pid"},{"type":"mount"}]}}`, specFacts{readonlyRootfs: true}},
		"no linux at all": {`{}`, specFacts{}},
	} {
		t.Run(name, func(t *testing.T) {
			bundle := t.TempDir()
			if err := os.WriteFile(filepath.Join(bundle, "config.json"), []byte(tc.spec), 0o600); err != nil {
				t.Fatal(err)
			}
			_, got, err := readSpec(bundle, settings.Default())
			if err != nil || got != tc.want {
				t.Fatalf("facts %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
	bundle := t.TempDir()
	os.WriteFile(filepath.Join(bundle, "config.json"), []byte(`{`), 0o600)
	if _, _, err := readSpec(bundle, settings.Default()); err == nil {
		t.Error("a bad spec was read")
	}
}

func TestCRIUConfigName(t *testing.T) {
	for want, lines := range map[string][]string{
		"nftables-read.conf": {"network-lock nftables", "pre-dump-mode read"},
		"read.conf":          {"pre-dump-mode read"},
	} {
		if got := configName(lines); got != want {
			t.Errorf("configName(%q) = %q, want %q", lines, got, want)
		}
	}
}

func TestBadConfigFailsCreate(t *testing.T) {
	config := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(config, []byte(`mode = "sometimes"`), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PRECOPY_CONFIG", config)
	s := NewFromConfig(nil) // Create must refuse before it reaches the runc-v2 service
	_, err := s.Create(t.Context(), &taskAPI.CreateTaskRequest{ID: "c1"})
	if err == nil || !strings.Contains(err.Error(), "io.precopy.mode") || !errdefs.IsInvalidArgument(errgrpc.ToNative(err)) {
		t.Fatalf("create with a bad config file: %v; want InvalidArgument naming the setting", err)
	}
}
