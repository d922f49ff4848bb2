package integration

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"

	"github.com/precopy/precopy/integration/harness"
	precopyshim "github.com/precopy/precopy/shim"
)

// manyShims is how many containers TestManyShimsProbeCRIU starts at once:
// at 16, 1 shim in 16 lost its CRIU probe to its own child reaper
// before the probes went through the reaper.
const manyShims = 16

// TestManyShimsProbeCRIU starts manyShims containers on one containerd at
// once, each with a shim of its own that probes CRIU (`criu check`) while
// the others start: every shim's probes must be answered (no ECHILD from
// a child the shim's reaper took first), so every checkpoint's report has
// the CRIU options this kernel supports; and each shim's CRIU config file
// lies in its bundle, in containerd's state, and goes with its container.
func TestManyShimsProbeCRIU(t *testing.T) {
	requireStack(t)
	d := stack.daemon
	ctx := testContext(t, d)
	image, err := d.Client().GetImage(ctx, harness.MemloadImage)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i := range manyShims {
		id := fmt.Sprintf("many-shims-%d", i)
		if _, err := d.Client().NewContainer(ctx, id,
			containerd.WithNewSnapshot(id, image),
			containerd.WithNewSpec(oci.WithImageConfig(image), oci.WithProcessArgs("/"+harness.MemloadBinary, "-mib", "8")),
			containerd.WithRuntime(precopyshim.Runtime, nil)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { removeContainer(t, d, id) })
		ids = append(ids, id)
	}
	// Each task's creation starts its shim.
	tasks := make([]containerd.Task, len(ids))
	errs := make([]error, len(ids))
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Go(func() {
			ctr, err := d.Client().LoadContainer(ctx, id)
			if err == nil {
				tasks[i], err = ctr.NewTask(ctx, cio.NewCreator(cio.WithStreams(nil, os.Stderr, os.Stderr)))
			}
			if err == nil {
				err = tasks[i].Start(ctx)
			}
			errs[i] = err
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}

	var want []string
	if err := harness.CRIUCheck(ctx, stack.criuEnv, "network_lock_nftables"); err == nil {
		want = append(want, "network-lock nftables")
	}
	if stack.softDirty {
		want = append(want, "pre-dump-mode read")
	}
	for _, task := range tasks {
		waitMemloadReady(t, d, task)
		ref := "precopy.test/checkpoint:" + task.ID()
		checkpointCtr(t, ctx, d, task.ID(), ref)
		cp, err := harness.ReadCheckpoint(ctx, d.Client(), ref)
		if err != nil {
			t.Fatal(err)
		}
		if cp.Report == nil || !slices.Equal(cp.Report.CRIUOptions, want) {
			t.Errorf("%s: the report's CRIU options are %v, want %v (what CRIU and this kernel support)", task.ID(), reportOptions(cp), want)
		}
		checkShimFiles(t, d, task, want)
	}
	for _, task := range tasks {
		removeContainer(t, d, task.ID())
	}
	// The shims' CRIU config files went with their containers.
	left, _ := filepath.Glob(filepath.Join(d.Dir, "state", "io.containerd.runtime.v2.task", d.Namespace, "many-shims-*", "precopy-criu*.conf"))
	if len(left) > 0 {
		t.Errorf("CRIU config files left after their containers: %v", left)
	}
	log, err := os.ReadFile(d.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(log), "\n") {
		if strings.Contains(line, "no child processes") || strings.Contains(line, "ECHILD") {
			t.Errorf("a shim lost a child to its reaper: %s", line)
		}
	}
}

func reportOptions(cp *harness.Checkpoint) []string {
	if cp.Report == nil {
		return nil
	}
	return cp.Report.CRIUOptions
}

// checkShimFiles checks that task's shim keeps its CRIU config (if CRIU
// takes an option from it) in its bundle, in containerd's state.
func checkShimFiles(t *testing.T, d *harness.Daemon, task containerd.Task, options []string) {
	t.Helper()
	bundle := filepath.Dir(d.RootfsPath(task.ID()))
	found, _ := filepath.Glob(filepath.Join(bundle, "precopy-criu-env.*.conf"))
	if len(options) > 0 && len(found) != 1 {
		t.Errorf("%s: CRIU config files in the bundle %s: %v, want one", task.ID(), bundle, found)
	}
}
