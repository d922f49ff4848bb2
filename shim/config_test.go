//go:build linux

package shim

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
)

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestBadConfigFailsCreate(t *testing.T) {
	t.Setenv("PRECOPY_CONFIG", writeConfig(t, `mode = "sometimes"`))
	s := NewFromConfig(nil) // Create must refuse before it reaches the runc-v2 service
	_, err := s.Create(t.Context(), &taskAPI.CreateTaskRequest{ID: "c1"})
	if err == nil || !strings.Contains(err.Error(), "io.precopy.mode") || !errdefs.IsInvalidArgument(errgrpc.ToNative(err)) {
		t.Fatalf("create with a bad config file: %v; want InvalidArgument naming the setting", err)
	}
}
