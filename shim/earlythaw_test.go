//go:build linux

package shim

import (
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/api/types/runc/options"

	"github.com/precopy/precopy/settings"
)

func TestEarlyThawDecision(t *testing.T) {
	justPaused := time.Now().Add(-100 * time.Millisecond)
	for _, tc := range []struct {
		name      string
		mode      settings.EarlyThaw
		readonly  bool
		upper     string
		precopyd  string
		pausedAt  time.Time
		exit      bool
		want      thawDecision
		reasonHas string
	}{
		{"read-only rootfs", "", true, "", "", justPaused, false, thawYes, "read-only"},
		{"auto, read-only rootfs", settings.EarlyThawAuto, true, "", "", justPaused, false, thawYes, "read-only"},
		{"writable rootfs, no precopyd", "", false, "/u", "", justPaused, false, thawNo, "no precopyd"},
		{"writable rootfs, layer unknown", "", false, "", "/p.sock", justPaused, false, thawNo, "unknown"},
		{"writable rootfs, precopyd", "", false, "/u", "/p.sock", justPaused, false, thawIfPinned, "pins"},
		{"forced", settings.EarlyThawForce, false, "/u", "", justPaused, false, thawYes, "force"},
		{"never", settings.EarlyThawNever, true, "/u", "/p.sock", justPaused, false, thawNo, "never"},
		{"exit mode", settings.EarlyThawForce, true, "", "", justPaused, true, thawNo, "stops the container"},
		{"running task", settings.EarlyThawForce, true, "", "", time.Time{}, false, thawNo, "did not pause"},
		{"pause the user holds", settings.EarlyThawForce, true, "", "", time.Now().Add(-time.Minute), false, thawNo, "user holds"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &container{readonlyRootfs: tc.readonly, pausedAt: tc.pausedAt, upper: tc.upper}
			c.settings.EarlyThaw = tc.mode
			c.settings.PrecopydAddress = tc.precopyd
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

func TestWritableLayer(t *testing.T) {
	for _, tc := range []struct {
		mounts []*types.Mount
		want   string
	}{
		{[]*types.Mount{{Type: "overlay", Source: "overlay", Options: []string{"index=off", "workdir=/s/1/work", "upperdir=/s/1/fs", "lowerdir=/s/0/fs"}}}, "/s/1/fs"},
		{[]*types.Mount{{Type: "bind", Source: "/s/1/fs", Options: []string{"rw", "rbind"}}}, "/s/1/fs"},
		{[]*types.Mount{{Type: "bind", Source: "/s/1/fs", Options: []string{"ro", "rbind"}}}, ""},
		{[]*types.Mount{{Type: "overlay", Options: []string{"lowerdir=/a:/b"}}}, ""},
		{nil, ""},
	} {
		if got := writableLayer(tc.mounts); got != tc.want {
			t.Errorf("writableLayer(%v) = %q, want %q", tc.mounts, got, tc.want)
		}
	}
}
