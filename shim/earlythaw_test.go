//go:build linux

package shim

import (
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/api/types/runc/options"

	"github.com/precopy/precopy/precopy/policy"
)

func TestEarlyThawDecision(t *testing.T) {
	justPaused := time.Now().Add(-100 * time.Millisecond)
	for _, tc := range []struct {
		name      string
		mode      policy.EarlyThaw
		readonly  bool
		pausedAt  time.Time
		exit      bool
		want      bool
		reasonHas string
	}{
		{"read-only rootfs", "", true, justPaused, false, true, "read-only"},
		{"auto, read-only rootfs", policy.EarlyThawAuto, true, justPaused, false, true, "read-only"},
		{"writable rootfs", "", false, justPaused, false, false, "writable"},
		{"forced", policy.EarlyThawForce, false, justPaused, false, true, "force"},
		{"never", policy.EarlyThawNever, true, justPaused, false, false, "never"},
		{"exit mode", policy.EarlyThawForce, true, justPaused, true, false, "stops the container"},
		{"running task", policy.EarlyThawForce, true, time.Time{}, false, false, "did not pause"},
		{"pause the user holds", policy.EarlyThawForce, true, time.Now().Add(-time.Minute), false, false, "user holds"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &container{readonlyRootfs: tc.readonly, pausedAt: tc.pausedAt}
			c.settings.Policy.EarlyThaw = tc.mode
			got, thaw := c.earlyThaw(&options.CheckpointOptions{Exit: tc.exit})
			if got != tc.want || !strings.Contains(thaw.Reason, tc.reasonHas) {
				t.Errorf("earlyThaw = %v (%q), want %v (%q)", got, thaw.Reason, tc.want, tc.reasonHas)
			}
			if thaw.Early {
				t.Error("the decision must not claim a thaw that has not happened")
			}
		})
	}
}
