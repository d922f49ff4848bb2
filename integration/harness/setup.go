package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/containerd/containerd/v2/defaults"
)

// Env is a ready stack: the machine checked, precopy's programs at hand,
// and a private containerd with precopy's shim on its PATH and the memory
// workload's image imported.
type Env struct {
	Stack
	Bins   Binaries
	Daemon *Daemon
	// Precopyd serves Daemon's content store and snapshotter, for
	// SetupPrecopyd; nil otherwise.
	Precopyd *Precopyd

	removeBins func()
}

// Setup checks the stack and starts a private containerd in namespace with
// the workload's image. On error it has removed whatever it started.
func Setup(ctx context.Context, namespace string) (*Env, error) {
	return setup(ctx, namespace, nil, nil)
}

// SetupPrecopyd is Setup for a containerd whose content store and
// snapshotter are a precopyd's, started with o (a snapshotter is
// required), as the README's config snippet sets it up: containerd's local
// content store off, precopyd's snapshotter the namespace's default, and
// precopy's shim configured to ask that precopyd for pins.
func SetupPrecopyd(ctx context.Context, namespace string, o PrecopydOptions) (*Env, error) {
	if o.SnapshotLimit <= 0 {
		return nil, errors.New("SetupPrecopyd: precopyd needs a snapshot limit")
	}
	return setup(ctx, namespace, nil, &o)
}

// SetupCRI is Setup for a containerd with the CRI plugin and the runtime
// handlers handlers returns (given precopy's programs), with the pause and
// memory workload images in CRI's namespace too.
func SetupCRI(ctx context.Context, namespace string, handlers func(Binaries) []CRIHandler) (*Env, error) {
	return setup(ctx, namespace, handlers, nil)
}

func setup(ctx context.Context, namespace string, handlers func(Binaries) []CRIHandler, precopyd *PrecopydOptions) (_ *Env, retErr error) {
	found, err := CheckStack(ctx)
	if err != nil {
		return nil, err
	}
	bins, removeBins, err := FindBinaries()
	e := &Env{Stack: found, Bins: bins, removeBins: removeBins}
	defer func() {
		if retErr != nil {
			e.Close()
		}
	}()
	if err != nil {
		return nil, err
	}
	opts := Options{ShimDirs: []string{bins.Dir}, Namespace: namespace, Env: found.CRIUEnv}
	if handlers != nil {
		opts.CRI = &CRIOptions{Handlers: handlers(bins)}
	}
	if precopyd != nil {
		if e.Precopyd, err = StartPrecopyd(ctx, bins, *precopyd); err != nil {
			return nil, err
		}
		if opts, err = e.Precopyd.DaemonOptions(opts, true); err != nil {
			return nil, err
		}
	}
	e.Daemon, err = StartDaemon(ctx, opts)
	if err != nil {
		return nil, err
	}
	if precopyd != nil {
		if err := UsePrecopydSnapshotter(ctx, e.Daemon); err != nil {
			return nil, err
		}
	}
	if err := ImportMemload(e.Daemon.Context(ctx), e.Daemon.Client(), bins); err != nil {
		return nil, err
	}
	if handlers != nil {
		if err := ImportCRIImages(ctx, e.Daemon, bins); err != nil {
			return nil, err
		}
	}
	return e, nil
}

// DaemonOptions is o for a containerd on p, as the README's config
// snippet sets it up: p as content and snapshot proxy plugins,
// containerd's local content store off, and precopy's shims configured
// (PRECOPY_CONFIG, a file in p's dir) to ask p for pins of writable
// layers if pins, or not to ask any precopyd.
func (p *Precopyd) DaemonOptions(o Options, pins bool) (Options, error) {
	address := ""
	if pins {
		address = p.Socket
	}
	config := filepath.Join(p.Dir, "precopy.toml")
	if err := os.WriteFile(config, fmt.Appendf(nil, "precopyd-address = %q\n", address), 0o644); err != nil {
		return o, err
	}
	o.Env = append(slices.Clone(o.Env), "PRECOPY_CONFIG="+config)
	o.ExtraConfig = p.ContainerdConfig()
	o.DisabledPlugins = append(slices.Clone(o.DisabledPlugins), LocalContentPlugin)
	return o, nil
}

// UsePrecopydSnapshotter makes precopyd's snapshotter the default of d's
// namespace: images unpack into it, containers and restores use it.
func UsePrecopydSnapshotter(ctx context.Context, d *Daemon) error {
	labels := map[string]string{defaults.DefaultSnapshotterNSLabel: PrecopydSnapshotter}
	return d.Client().NamespaceService().Create(ctx, d.Namespace, labels)
}

// Close tears the containerd down, then its precopyd, and removes
// binaries Setup built.
func (e *Env) Close() error {
	var errs []error
	if e.Daemon != nil {
		errs = append(errs, e.Daemon.Close())
	}
	if e.Precopyd != nil {
		errs = append(errs, e.Precopyd.Close())
	}
	if e.removeBins != nil {
		e.removeBins()
	}
	return errors.Join(errs...)
}
