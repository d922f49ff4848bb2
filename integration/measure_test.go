package integration

import (
	"testing"

	"github.com/precopy/precopy/integration/harness"
	precopyshim "github.com/precopy/precopy/shim"
)

// TestMeasureCheckpointWindow checks that the bench's measurement of a
// checkpoint finds every boundary of the frozen window (the content
// store's commit times, CRIU's stats) and that its parts fit inside the
// checkpoint's wall time. It asserts the bookkeeping, not any duration.
func TestMeasureCheckpointWindow(t *testing.T) {
	requireStack(t)
	d := stack.daemon
	ctx := testContext(t, d)
	for _, runtime := range []string{precopyshim.RuncRuntime, precopyshim.Runtime} {
		t.Run(runtime, func(t *testing.T) {
			ref := "precopy.test/measure:" + runtime
			m, err := harness.MeasureCheckpoint(ctx, d, harness.CheckpointRun{
				ID: "measure-" + runtime, Runtime: runtime, Ref: ref,
				Args: []string{"-mib", "16"},
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = d.RemoveImage(ctx, ref) })
			w := m.Window
			t.Logf("calls %+v, window %+v, image %d bytes", m.Calls, w, m.ImageBytes)
			if w.RWDiff <= 0 || w.Dump <= 0 || w.Content <= 0 || w.Rest <= 0 {
				t.Errorf("a boundary of the frozen window is missing: %+v", w)
			}
			if w.Total() > m.Wall {
				t.Errorf("frozen window %v is longer than the checkpoint %v", w.Total(), m.Wall)
			}
			if m.ImageBytes < 16<<20 {
				t.Errorf("image of %d bytes cannot hold the workload's 16 MiB", m.ImageBytes)
			}
		})
	}
}
