// Package harness runs the real stack precopy's integration tests drive: a
// private containerd with precopy's shim first on its PATH, runc and CRIU.
// It checks that the stack is there at the versions precopy needs, and tears
// everything it started down again, also when a test fails.
package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"

	criu "github.com/checkpoint-restore/go-criu/v7"
	runc "github.com/containerd/go-runc"
)

// Minimum versions of the stack. containerd 2.4 passes parent_path through
// to runc; runc 1.3 and CRIU 4.1 are what pre-copy was checked against (and
// Debian 12's CRIU 3.17 fails on newer kernels).
var (
	MinContainerd = Version{2, 4, 0}
	MinRunc       = Version{1, 3, 0}
	MinCRIU       = Version{4, 1, 0}
)

// Version is a major.minor.patch triple.
type Version [3]int

func (v Version) String() string { return fmt.Sprintf("%d.%d.%d", v[0], v[1], v[2]) }

// Less reports whether v is older than o.
func (v Version) Less(o Version) bool {
	for i := range v {
		if v[i] != o[i] {
			return v[i] < o[i]
		}
	}
	return false
}

var versionRE = regexp.MustCompile(`(\d+)\.(\d+)(?:\.(\d+))?`)

// ParseVersion finds the first x.y[.z] in s.
func ParseVersion(s string) (Version, error) {
	m := versionRE.FindStringSubmatch(s)
	if m == nil {
		return Version{}, fmt.Errorf("no version in %q", s)
	}
	var v Version
	for i := range v {
		if m[i+1] != "" {
			v[i], _ = strconv.Atoi(m[i+1])
		}
	}
	return v, nil
}

// Stack is what CheckStack found out about this machine's stack.
type Stack struct {
	// CRIUEnv is what CRIU needs in its environment here: give it to
	// StartDaemon as Options.Env.
	CRIUEnv []string
	// Notes say what is unusual about this machine, for the log.
	Notes []string
}

// CheckStack checks that everything the integration tests drive is
// installed at a usable version and works on this machine. Its error has a
// line for each thing missing, saying what is needed (`make deps` installs
// all of it).
func CheckStack(ctx context.Context) (Stack, error) {
	keepInheritedFiles()
	var s Stack
	if os.Geteuid() != 0 {
		return s, errors.New("integration tests need root (they run containerd, runc and CRIU)")
	}
	if err := errors.Join(checkContainerd(), checkRunc(ctx), checkCRIU()); err != nil {
		return s, err
	}
	env, note, err := CRIUEnv(ctx)
	if err != nil {
		return s, err
	}
	s.CRIUEnv = env
	if note != "" {
		s.Notes = append(s.Notes, note)
	}
	return s, nil
}

func need(what string, min Version, found string) error {
	return fmt.Errorf("%s >= %s is needed, found %s (make deps installs it)", what, min, found)
}

func checkContainerd() error {
	for _, bin := range []string{"containerd", "ctr", "containerd-shim-runc-v2"} {
		if _, err := exec.LookPath(bin); err != nil {
			return need(bin, MinContainerd, "none on PATH")
		}
	}
	out, err := exec.Command("containerd", "--version").Output()
	if err != nil {
		return need("containerd", MinContainerd, fmt.Sprintf("a containerd that fails --version (%v)", err))
	}
	// "containerd github.com/containerd/containerd/v2 v2.4.2 <revision>"
	fields := strings.Fields(string(out))
	if len(fields) < 3 {
		return need("containerd", MinContainerd, strings.TrimSpace(string(out)))
	}
	v, err := ParseVersion(fields[2])
	if err != nil || v.Less(MinContainerd) {
		return need("containerd", MinContainerd, fields[2])
	}
	return nil
}

func checkRunc(ctx context.Context) error {
	if _, err := exec.LookPath("runc"); err != nil {
		return need("runc", MinRunc, "none on PATH")
	}
	rv, err := (&runc.Runc{}).Version(ctx)
	if err != nil {
		return need("runc", MinRunc, fmt.Sprintf("a runc that fails --version (%v)", err))
	}
	v, err := ParseVersion(rv.Runc)
	if err != nil || v.Less(MinRunc) {
		return need("runc", MinRunc, rv.Runc)
	}
	return nil
}

func checkCRIU() error {
	if _, err := exec.LookPath("criu"); err != nil {
		return need("criu", MinCRIU, "none on PATH")
	}
	// go-criu asks CRIU itself over its RPC, as runc does.
	n, err := criu.MakeCriu().GetCriuVersion()
	if err != nil {
		return need("criu", MinCRIU, fmt.Sprintf("a criu that does not answer its version RPC (%v)", err))
	}
	// GetCriuVersion encodes x.y.z as x*10000 + y*100 + z.
	v := Version{n / 10000, n / 100 % 100, n % 100}
	if v.Less(MinCRIU) {
		return need("criu", MinCRIU, v.String())
	}
	return nil
}

// SoftDirty reports whether CRIU can track memory changes on this kernel,
// which pre-dump needs (CONFIG_MEM_SOFT_DIRTY). It asks `criu check` for its
// exit status: go-criu's FeatureCheck echoes the request back and is no
// answer. reason says why not.
func SoftDirty(ctx context.Context) (ok bool, reason string) {
	if err := CRIUCheck(ctx, nil, "mem_dirty_track"); err != nil {
		return false, fmt.Sprintf("this kernel cannot track dirty memory (%v): pre-dump needs CONFIG_MEM_SOFT_DIRTY; run the soft-dirty VM tier (make test-vm)", err)
	}
	return true, ""
}

// CRIUCheck runs `criu check --feature feature` with env added to the
// environment; the error carries the last line CRIU printed.
func CRIUCheck(ctx context.Context, env []string, feature string) error {
	cmd := exec.CommandContext(ctx, "criu", "check", "--feature", feature)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("criu check --feature %s: %s", feature, strings.TrimSpace(lastLine(string(out), err)))
	}
	return nil
}

func lastLine(out string, err error) string {
	out = strings.TrimSpace(out)
	if out == "" {
		return err.Error()
	}
	lines := strings.Split(out, "\n")
	return lines[len(lines)-1]
}
