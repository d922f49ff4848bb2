//go:build linux

package shim

import (
	"context"
	"os"
	"path/filepath"

	"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2/manager"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	pkgshim "github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/log"

	"github.com/precopy/precopy/precopy/settings"
	"github.com/precopy/precopy/snapshotter/pin"
)

// NewManager is containerd's runc-v2 shim manager for runtime name, with
// one addition: the shim binary's delete (Stop), which containerd runs
// when a shim died (containerd's cleanup after a dead shim) before it
// removes the bundle and, later, the snapshot, first releases the pins of
// the container's writable layer that the dead shim left: the read-only
// copy bind-mounted over the upper dir would otherwise outlive the
// container and fail the snapshot's removal. localPinner records each pin
// in the bundle before it makes it.
func NewManager(name string) pkgshim.Shim {
	return releasingManager{Shim: manager.NewShimManager(name)}
}

type releasingManager struct{ pkgshim.Shim }

func (m releasingManager) Stop(ctx context.Context, id string) (pkgshim.StopStatus, error) {
	// The runc-v2 manager's Stop finds the bundle the same way: the shim
	// binary runs in the bundle's parent dir's entry for id.
	if cwd, err := os.Getwd(); err == nil {
		bundle := filepath.Join(filepath.Dir(cwd), id)
		if err := pin.ReleaseRecorded(ctx, bundle); err != nil {
			log.G(ctx).WithError(err).WithField("id", id).Error("precopy: release the pins a dead shim left")
		}
	}
	removeDeadShimRounds(ctx, id)
	return m.Shim.Stop(ctx, id)
}

// removeDeadShimRounds removes the rounds and kept image a dead shim left
// under the configured rounds dir (containerd removes the bundle, where
// they are otherwise). The shim binary's delete runs with the config
// file the shim had and the container's namespace in ctx.
func removeDeadShimRounds(ctx context.Context, id string) {
	cs, err := settings.Load(settings.Path())
	if err != nil || cs.RoundsDir == "" {
		return
	}
	ns, ok := namespaces.Namespace(ctx)
	if !ok {
		return
	}
	if err := removeRoundsDir(cs.RoundsDir, ns, id); err != nil {
		log.G(ctx).WithError(err).WithField("id", id).Error("precopy: remove the rounds a dead shim left")
	}
}
