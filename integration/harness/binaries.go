package harness

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
)

const (
	// ShimBinary is precopy's shim under its own runtime name.
	ShimBinary = "containerd-shim-precopy-v1"
	// MemloadBinary is the memory workload tests run in containers.
	MemloadBinary = "memload"
	// NetloadBinary is the network workload (a TCP key-value server
	// with its load generator), in the memload image beside memload.
	NetloadBinary = "netload"
	// PauseBinary is the pod sandbox process of the CRI tests' pause
	// image.
	PauseBinary = "pause"
	// PrecopyctlBinary is precopy's command-line tool.
	PrecopyctlBinary = "precopyctl"

	runcShimBinary = "containerd-shim-runc-v2"
)

// Binaries is a directory holding precopy's own programs: the shim and the
// test workloads.
type Binaries struct{ Dir string }

// Path is the path of the named program.
func (b Binaries) Path(name string) string { return filepath.Join(b.Dir, name) }

var (
	buildOnce sync.Once
	built     Binaries
	buildErr  error
)

// FindBinaries returns $PRECOPY_BIN_DIR (set by the Makefile, and by the VM
// tier, whose guest should not compile) or else builds the programs once
// per test process into a temporary directory, which cleanup removes.
func FindBinaries() (b Binaries, cleanup func(), err error) {
	if dir := os.Getenv("PRECOPY_BIN_DIR"); dir != "" {
		b = Binaries{Dir: dir}
		for _, name := range []string{ShimBinary, MemloadBinary, NetloadBinary, PauseBinary, PrecopyctlBinary} {
			if _, err := os.Stat(b.Path(name)); err != nil {
				return b, func() {}, fmt.Errorf("PRECOPY_BIN_DIR=%s: %w (make build puts it there)", dir, err)
			}
		}
		return b, func() {}, nil
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "precopy-bin-")
		if err != nil {
			buildErr = err
			return
		}
		built = Binaries{Dir: dir}
		cmd := exec.Command("go", "build", "-o", dir+"/",
			"github.com/precopy/precopy/cmd/"+ShimBinary,
			"github.com/precopy/precopy/cmd/"+PrecopyctlBinary,
			"github.com/precopy/precopy/integration/workloads/"+MemloadBinary,
			"github.com/precopy/precopy/integration/workloads/"+NetloadBinary,
			"github.com/precopy/precopy/integration/workloads/"+PauseBinary)
		// Static: the workload runs in an image that holds nothing else.
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("build precopy binaries: %w: %s", err, out)
		}
	})
	return built, func() { os.RemoveAll(built.Dir) }, buildErr
}

// DropInDir makes a directory, under parent, that holds precopy's shim
// installed as containerd-shim-runc-v2: put first on containerd's PATH, it
// serves io.containerd.runc.v2. It is a copy, not a link: the shim re-execs
// itself through /proc/self/exe, which would resolve a link to the
// original name.
func (b Binaries) DropInDir(parent string) (string, error) {
	dir := filepath.Join(parent, "dropin")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	if err := copyFile(b.Path(ShimBinary), filepath.Join(dir, runcShimBinary)); err != nil {
		return "", fmt.Errorf("install shim as %s: %w", runcShimBinary, err)
	}
	return dir, nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	return writeFrom(dst, in, os.O_TRUNC, 0o755)
}

// writeFrom creates dst (with flag added to O_CREATE|O_WRONLY, and mode)
// and copies r into it.
func writeFrom(dst string, r io.Reader, flag int, mode os.FileMode) error {
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|flag, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, r); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
