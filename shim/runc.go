//go:build linux

package shim

import (
	"context"
	"fmt"
	"os/exec"
	"sync"

	"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2/process"
	"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2/runc"
	gorunc "github.com/containerd/go-runc"

	"github.com/precopy/precopy/precopy"
)

// newRunc returns a runc handle for the container in bundle, set up the
// way the runc-v2 service sets up its own (same root, binary and cgroup
// driver, from the bundle's options.json). The runc-v2 service keeps its
// handles private, so pre-dump rounds need their own.
func newRunc(bundle, namespace string) (runcHandle, error) {
	opts, err := runc.ReadOptions(bundle)
	if err != nil {
		return nil, fmt.Errorf("read runtime options of %s: %w", bundle, err)
	}
	var root, binary string
	var systemd bool
	if opts != nil {
		root, binary, systemd = opts.Root, opts.BinaryName, opts.SystemdCgroup
	}
	if binary == "" {
		binary = "runc"
	}
	return goRunc{process.NewRunc(root, bundle, namespace, binary, systemd)}, nil
}

// goRunc is a runcHandle with go-runc.
type goRunc struct{ r *gorunc.Runc }

// PreDump runs `runc checkpoint --pre-dump`.
func (g goRunc) PreDump(ctx context.Context, id string, d precopy.Dirs) error {
	return g.r.Checkpoint(ctx, id, &gorunc.CheckpointOpts{
		ImagePath:  d.Image,
		WorkDir:    d.Work,
		ParentPath: d.Parent,
	}, gorunc.PreDump)
}

// Frozen asks `runc state`: runc says paused for a frozen cgroup.
func (g goRunc) Frozen(ctx context.Context, id string) (bool, error) {
	st, err := g.r.State(ctx, id)
	if err != nil {
		return false, err
	}
	return st.Status == "paused", nil
}

// Freeze runs `runc pause`.
func (g goRunc) Freeze(ctx context.Context, id string) error { return g.r.Pause(ctx, id) }

// Thaw runs `runc resume`.
func (g goRunc) Thaw(ctx context.Context, id string) error { return g.r.Resume(ctx, id) }

// softDirty reports, once per shim process, whether CRIU can track dirty
// memory on this kernel (CONFIG_MEM_SOFT_DIRTY), which pre-dump needs. It
// asks `criu check` for its exit status: go-criu's FeatureCheck echoes the
// request back and is no answer.
var softDirty = sync.OnceValues(func() (bool, string) {
	out, err := runReaped(exec.Command("criu", "check", "--feature", "mem_dirty_track"))
	if err != nil {
		return false, fmt.Sprintf("criu check --feature mem_dirty_track failed (%v): %s", err, lastLine(out))
	}
	return true, ""
})

func lastLine(b []byte) string {
	end := len(b)
	for end > 0 && (b[end-1] == '\n' || b[end-1] == ' ') {
		end--
	}
	start := end
	for start > 0 && b[start-1] != '\n' {
		start--
	}
	return string(b[start:end])
}
