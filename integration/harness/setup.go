package harness

import (
	"context"
)

// Env is a ready stack: the machine checked, precopy's programs at hand,
// and a private containerd with precopy's shim on its PATH and the memory
// workload's image imported.
type Env struct {
	Stack
	Bins   Binaries
	Daemon *Daemon

	removeBins func()
}

// Setup checks the stack and starts a private containerd in namespace with
// the workload's image. On error it has removed whatever it started.
func Setup(ctx context.Context, namespace string) (*Env, error) {
	return setup(ctx, namespace, nil)
}

// SetupCRI is Setup for a containerd with the CRI plugin and the runtime
// handlers handlers returns (given precopy's programs), with the pause and
// memory workload images in CRI's namespace too.
func SetupCRI(ctx context.Context, namespace string, handlers func(Binaries) []CRIHandler) (*Env, error) {
	return setup(ctx, namespace, handlers)
}

func setup(ctx context.Context, namespace string, handlers func(Binaries) []CRIHandler) (_ *Env, retErr error) {
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
	e.Daemon, err = StartDaemon(ctx, opts)
	if err != nil {
		return nil, err
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

// Close tears the containerd down and removes binaries Setup built.
func (e *Env) Close() error {
	var err error
	if e.Daemon != nil {
		err = e.Daemon.Close()
	}
	e.removeBins()
	return err
}
