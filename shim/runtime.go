package shim

import (
	"os"
	"path/filepath"
)

const (
	// Runtime is the runtime name precopy registers under.
	Runtime = "io.containerd.precopy.v1"
	// RuncRuntime is the name of containerd's runc shim, which precopy
	// can replace. nerdctl and the CRI plugin send runc checkpoint options
	// only to a runtime of this name.
	RuncRuntime = "io.containerd.runc.v2"

	runcShimBinary = "containerd-shim-runc-v2"
)

// RuntimeName returns the runtime name this shim process serves, derived
// from the name it was installed under: containerd derives the binary name
// from the runtime name, so a binary called containerd-shim-runc-v2 is
// serving io.containerd.runc.v2.
func RuntimeName() string {
	return runtimeNameFor(os.Args[0])
}

func runtimeNameFor(arg0 string) string {
	if filepath.Base(arg0) == runcShimBinary {
		return RuncRuntime
	}
	return Runtime
}
