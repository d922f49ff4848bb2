package app

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/precopy/precopy/cmd/precopyctl/internal/supervise"
)

func TestUsageExitCodes(t *testing.T) {
	for _, args := range [][]string{
		{"bogus"},
		{"report"},
		{"report", "a", "b"},
		{"report", "--bogus", "x"},
		{"checkpoint", "c1"},                  // --every is required
		{"checkpoint", "--every", "1x", "c1"}, // not a duration
		{"checkpoint", "--every", "0s", "c1"}, // not positive
		{"checkpoint", "--every", "1s", "--keep", "0", "c1"},
		{"checkpoint", "--every", "1s", "--grace", "-1s", "c1"},
		{"restore", "c1"},                    // neither a checkpoint nor --latest
		{"restore", "--latest", "c1", "ref"}, // both
	} {
		var out, errOut bytes.Buffer
		root := New(&out, &errOut, context.Background())
		err := root.Run(context.Background(), append([]string{"precopyctl"}, args...))
		if code := ExitCode(err); code != ExitUsage {
			t.Errorf("%v: exit code %d (%v), want %d", args, code, err, ExitUsage)
		}
		if strings.Contains(errOut.String()+out.String(), "USAGE:") {
			t.Errorf("%v: help dumped after a usage error:\n%s%s", args, out.String(), errOut.String())
		}
	}
}

func TestExitCodes(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code int
	}{
		{nil, ExitOK},
		{fmt.Errorf("image x: %w", errdefs.ErrNotFound), ExitNotFound},
		{fmt.Errorf("c1: %w: exit status 1", supervise.ErrDied), ExitDied},
		{fmt.Errorf("checkpoint c1: %w", errdefs.ErrFailedPrecondition), ExitFailed},
	} {
		if got := ExitCode(tc.err); got != tc.code {
			t.Errorf("%v: exit code %d, want %d", tc.err, got, tc.code)
		}
	}
}

func TestHelpSaysExitCodes(t *testing.T) {
	var out bytes.Buffer
	root := New(&out, &out, context.Background())
	if err := root.Run(context.Background(), []string{"precopyctl", "--help"}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"EXIT CODES", "--address", "CONTAINERD_ADDRESS", "--namespace", "CONTAINERD_NAMESPACE", "report", "checkpoint", "restore"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("help lacks %q", want)
		}
	}
}
