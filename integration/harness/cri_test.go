package harness

import (
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestCRIConfigStaysInDaemonDir checks the promise of CRIOptions: every
// path the CRI config gives containerd is in the daemon's directory (but
// the shim binary a handler names and the CNI plugins' dir, both only
// read), and NRI, whose socket is
// machine-wide, stays off.
func TestCRIConfigStaysInDaemonDir(t *testing.T) {
	d := &Daemon{Dir: "/tmp/precopy-ctrd-test", Namespace: "ns", cri: &CRIOptions{Handlers: []CRIHandler{
		{Name: "a", RuntimeType: "io.containerd.runc.v2", RuntimePath: "/opt/bin/shim", RuncOptions: true, Annotations: []string{"io.precopy.*"}},
		{Name: "b", RuntimeType: "io.containerd.precopy.v1"},
	}}}
	config := d.criConfig()
	for _, m := range regexp.MustCompile(`"(/[^"]*)"`).FindAllStringSubmatch(config, -1) {
		if p := m[1]; p != "/opt/bin/shim" && p != CNIPluginDir && !strings.HasPrefix(p, d.Dir+"/") {
			t.Errorf("CRI config names %s, outside %s:\n%s", p, d.Dir, config)
		}
	}
	for _, want := range []string{`default_runtime_name = "a"`, `runtimes."a".options]`, `Root = "/tmp/precopy-ctrd-test/runc"`,
		`container_annotations = ["io.precopy.*"]`, `runtime_type = "io.containerd.precopy.v1"`} {
		if !strings.Contains(config, want) {
			t.Errorf("CRI config lacks %s:\n%s", want, config)
		}
	}
	if strings.Contains(config, `runtimes."b".options`) {
		t.Errorf("handler b has an options table, which the runc-v2 task service cannot read:\n%s", config)
	}
	disabled := d.pluginsToDisable()
	if slices.Contains(disabled, "io.containerd.grpc.v1.cri") || !slices.Contains(disabled, "io.containerd.nri.v1.nri") {
		t.Errorf("disabled plugins with CRI on: %v", disabled)
	}
	if d.cri = nil; !slices.Contains(d.pluginsToDisable(), "io.containerd.grpc.v1.cri") || d.criConfig() != "" {
		t.Error("a daemon without CRI options loads CRI")
	}
}
