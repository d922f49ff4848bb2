// Package integration drives precopy through a real containerd, runc and
// CRIU: a private containerd per test binary, with precopy's shim first on
// its PATH and containerd's stock runc-v2 shim after it.
package integration

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"testing"

	"github.com/precopy/precopy/integration/harness"
)

// stack is what every integration test shares; newStack fills it in
// TestMain.
var stack struct {
	// err says why the stack cannot run; tests skip with it, or fail when
	// PRECOPY_REQUIRE_STACK is set (the Makefile sets it, so CI never
	// passes by skipping).
	err       error
	bins      harness.Binaries
	daemon    *harness.Daemon
	softDirty bool
	// noSoftDirty says why pre-dump cannot run on this kernel.
	noSoftDirty string
	// criuEnv is what CRIU needs in its environment on this machine.
	criuEnv []string
}

func TestMain(m *testing.M) {
	cleanup := setUpStack()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sigs
		fmt.Fprintf(os.Stderr, "integration: %v: tearing down\n", s)
		cleanup()
		os.Exit(130)
	}()
	code := m.Run()
	cleanup()
	os.Exit(code)
}

func setUpStack() (cleanup func()) {
	ctx := context.Background()
	env, err := harness.Setup(ctx, fmt.Sprintf("precopy-test-%d", os.Getpid()))
	if err != nil {
		stack.err = err
		return func() {}
	}
	for _, note := range env.Notes {
		fmt.Fprintln(os.Stderr, "integration: note:", note)
	}
	stack.bins, stack.daemon, stack.criuEnv = env.Bins, env.Daemon, env.CRIUEnv
	stack.softDirty, stack.noSoftDirty = harness.SoftDirty(ctx)
	return func() {
		if err := env.Close(); err != nil {
			fmt.Fprintf(os.Stderr, "integration: teardown: %v\n", err)
		}
	}
}

// requireStack skips (or, under PRECOPY_REQUIRE_STACK, fails) t when the
// stack is not there, saying what is missing.
func requireStack(t *testing.T) {
	t.Helper()
	if stack.err == nil {
		return
	}
	if os.Getenv("PRECOPY_REQUIRE_STACK") != "" {
		t.Fatalf("integration stack unavailable: %v", stack.err)
	}
	t.Skipf("integration stack unavailable: %v", stack.err)
}

// requireSoftDirty skips t unless the kernel tracks dirty memory, as
// CRIU pre-dump needs; the soft-dirty VM tier runs it.
func requireSoftDirty(t *testing.T) {
	t.Helper()
	requireStack(t)
	if !stack.softDirty {
		t.Skip(stack.noSoftDirty)
	}
}
