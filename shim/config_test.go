//go:build linux

package shim

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"

	"github.com/precopy/precopy/precopy/policy"
)

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadSettings(t *testing.T) {
	s, err := LoadSettings(filepath.Join(t.TempDir(), "missing.toml"))
	if err != nil || s.Mode != ModeAlways || s.Policy != policy.DefaultConfig() || s.PrecopydAddress != DefaultPrecopydAddress {
		t.Fatalf("missing file: %+v, %v; want the defaults", s, err)
	}

	s, err = LoadSettings(writeConfig(t, `
mode = "annotated"
target-downtime = "50ms"
max-rounds = 3
memory-budget = "1GiB"
precopyd-address = ""
`))
	if err != nil {
		t.Fatal(err)
	}
	if s.Mode != ModeAnnotated || s.Policy.TargetFreeze != 50*time.Millisecond || s.Policy.MaxRounds != 3 ||
		s.Policy.MemoryBudget != 1<<30 || s.PrecopydAddress != "" {
		t.Errorf("settings %+v", s)
	}
	// A container's annotation still wins over the file's default mode.
	c, err := s.With(map[string]string{policy.AnnotationMode: "always"})
	if err != nil || c.Mode != ModeAlways {
		t.Errorf("annotated default, annotated container: %+v, %v", c, err)
	}
	if c, _ := s.With(nil); c.Mode != ModeNever {
		t.Errorf("annotated default, container without annotation: mode %s, want never", c.Mode)
	}

	for text, want := range map[string]string{
		`max-round = 3`:           "io.precopy.max-round: unknown annotation (did you mean io.precopy.max-rounds?)",
		`max-rounds = 99`:         `"99" is not a whole number`,
		`target-downtime = "-1s"`: "target-downtime",
		`max-rounds = [1]`:        "max-rounds: a []interface {} is not a setting's value",
		`max-rounds = `:           "precopy config",
	} {
		if _, err := LoadSettings(writeConfig(t, text)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want it to say %q", text, err, want)
		}
	}
}

func TestBadConfigFailsCreate(t *testing.T) {
	t.Setenv("PRECOPY_CONFIG", writeConfig(t, `mode = "sometimes"`))
	s := NewFromConfig(nil) // Create must refuse before it reaches the runc-v2 service
	_, err := s.Create(t.Context(), &taskAPI.CreateTaskRequest{ID: "c1"})
	if err == nil || !strings.Contains(err.Error(), "io.precopy.mode") || !errdefs.IsInvalidArgument(errgrpc.ToNative(err)) {
		t.Fatalf("create with a bad config file: %v; want InvalidArgument naming the setting", err)
	}
}
