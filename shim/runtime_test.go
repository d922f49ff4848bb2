package shim

import "testing"

func TestRuntimeNameFor(t *testing.T) {
	for arg0, want := range map[string]string{
		"containerd-shim-precopy-v1":                Runtime,
		"/usr/local/bin/containerd-shim-precopy-v1": Runtime,
		"/opt/precopy/bin/containerd-shim-runc-v2":  RuncRuntime,
		"containerd-shim-runc-v2":                   RuncRuntime,
		"something-else":                            Runtime,
	} {
		if got := runtimeNameFor(arg0); got != want {
			t.Errorf("runtimeNameFor(%q) = %q, want %q", arg0, got, want)
		}
	}
}
