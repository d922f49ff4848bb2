//go:build linux

// Command containerd-shim-precopy-v1 is the precopy runtime shim. It is
// containerd's own runc-v2 shim (pkg/shim + the runc-v2 manager and task
// service) with precopy's task service wrapped around it (and the
// manager's delete releasing what a dead shim left pinned), so it can be
// installed as io.containerd.precopy.v1 or in place of
// containerd-shim-runc-v2.
package main

import (
	"context"
	"os"

	"github.com/containerd/containerd/v2/pkg/shim"

	precopyshim "github.com/precopy/precopy/shim"
	"github.com/precopy/precopy/shim/criuaction"
	_ "github.com/precopy/precopy/shim/plugin"
)

func main() {
	// CRIU runs the shim binary as its action script at restores
	// (shim/criuaction).
	if criuaction.Requested() {
		os.Exit(criuaction.Main())
	}
	shim.RunShim(context.Background(), precopyshim.NewManager(precopyshim.RuntimeName()))
}
