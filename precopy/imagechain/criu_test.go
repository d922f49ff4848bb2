package imagechain

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/precopy/precopy/integration/workload"
	"golang.org/x/sys/unix"
)

// The tests here make real chains with CRIU: pre-dump, pre-dump, dump of a
// running workload, flatten, restore from the flat dir alone, and let the
// workload check every page. `criu pre-dump` needs soft-dirty tracking,
// which this project's hosts lack: they run in the VM tier
// (integration/vm/run.sh) and skip elsewhere.
//
//	make build
//	go test -c -o _output/imagechain.test ./precopy/imagechain/
//	PRECOPY_BIN_DIR=$PWD/_output/bin integration/vm/run.sh -- _output/imagechain.test -test.v -test.run CRIU
//
// PRECOPY_IMAGECHAIN_MIB: memload sizes (default "64,256").
// PRECOPY_IMAGECHAIN_SAVE: copy each raw chain there (run from a working
// directory under /tmp, which the VM shares, to get them out).

func TestMain(m *testing.M) {
	if os.Getenv(shmloadStatusEnv) != "" {
		if err := runShmload(); err != nil {
			fmt.Fprintln(os.Stderr, "shmload:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

const criuTimeout = 10 * time.Minute // TCG is slow

// requirePreDump skips unless CRIU can pre-dump here.
func requirePreDump(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("CRIU chains need root")
	}
	out, err := exec.Command("criu", "check", "--feature", "mem_dirty_track").CombinedOutput()
	if err != nil {
		t.Skipf("criu check --feature mem_dirty_track: %v: %s (no soft-dirty tracking: run in integration/vm/run.sh)",
			err, strings.TrimSpace(string(out)))
	}
	// The restored workload is orphaned when criu restore -d exits; as
	// subreaper, this process gets it and can reap it, freeing its pid for
	// the next restore.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatal(err)
	}
}

func criu(t *testing.T, env []string, logPath string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), criuTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "criu", append(args, "-o", logPath, "-v4")...)
	cmd.Env = append(os.Environ(), env...)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if err != nil {
		log, _ := os.ReadFile(logPath)
		if len(log) > 4000 {
			log = log[len(log)-4000:]
		}
		t.Fatalf("criu %s: %v: %s\n... %s", strings.Join(args, " "), err, out, log)
	}
	t.Logf("criu %s: %s", args[0], time.Since(start).Round(time.Millisecond))
}

// startSession starts a workload in its own session with stdio on
// /dev/null, as CRIU wants it without --shell-job.
func startSession(t *testing.T, env []string, name string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd
}

// makeChain pre-dumps pid twice and dumps it (killing it), into root/d1,
// d2 and d3, pause apart, the way precopy's rounds do.
func makeChain(t *testing.T, root string, pid int, pause time.Duration, env []string) {
	t.Helper()
	logs := filepath.Join(root, "logs")
	p := strconv.Itoa(pid)
	for _, d := range []string{"logs", "chain/d1", "chain/d2", "chain/d3"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	chain := filepath.Join(root, "chain")
	criu(t, env, filepath.Join(logs, "d1.log"), "pre-dump", "-t", p, "-D", filepath.Join(chain, "d1"), "--track-mem")
	time.Sleep(pause)
	criu(t, env, filepath.Join(logs, "d2.log"), "pre-dump", "-t", p, "-D", filepath.Join(chain, "d2"), "--prev-images-dir", "../d1", "--track-mem")
	time.Sleep(pause)
	criu(t, env, filepath.Join(logs, "d3.log"), "dump", "-t", p, "-D", filepath.Join(chain, "d3"), "--prev-images-dir", "../d2", "--track-mem")
	if dir := os.Getenv("PRECOPY_IMAGECHAIN_SAVE"); dir != "" {
		dst := filepath.Join(dir, filepath.Base(root))
		copyTree(t, chain, dst)
		t.Logf("chain saved in %s", dst)
	}
}

// flattenings are the ways precopy may flatten a chain: each round right
// after it is written (one level each time), the same with the last dump
// flattened by FlattenConsuming, or the last dump alone (recursive). The
// copies are flattened in the test's temp dir: with TMPDIR on ext4 or XFS,
// FlattenConsuming shifts ranges where pages moved; on tmpfs (the VM's
// default) it keeps the parent's layout or copies.
var flattenings = []struct {
	name        string
	dirs        []string
	consumeLast bool
}{
	{"one-level", []string{"d2", "d3"}, false},
	{"consuming", []string{"d2", "d3"}, true},
	{"recursive", []string{"d3"}, false},
}

// flattenCopy copies chain to dst, flattens the given dirs in order (the
// last with FlattenConsuming if consumeLast), logs what each took, removes
// d1 and d2 and checks that d3 alone holds the memory the chain held.
func flattenCopy(t *testing.T, label, chain, dst string, dirs []string, consumeLast bool, want map[string]map[uint64]uint64) {
	t.Helper()
	copyTree(t, chain, dst)
	for i, d := range dirs {
		flatten, how := Flatten, "flatten"
		if consumeLast && i == len(dirs)-1 {
			flatten, how = FlattenConsuming, "flatten-consuming"
		}
		res, err := flatten(filepath.Join(dst, d))
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("TIMING %s %s %s: %s (depth %d, %d pagemaps, %d pages copied = %d MiB, %d taken over, %d kept, %d MiB written, %d range shifts)",
			label, how, d, res.Duration.Round(10*time.Microsecond), res.Depth, res.Pagemaps, res.PagesCopied,
			res.BytesCopied>>20, res.PagesTakenOver, res.PagesKept, res.BytesWritten>>20, res.RangeShifts)
		if res.TakeoverRefused != "" {
			t.Logf("%s %s %s copied: %s", label, how, d, res.TakeoverRefused)
		}
	}
	for _, d := range []string{"d1", "d2"} {
		if err := os.RemoveAll(filepath.Join(dst, d)); err != nil {
			t.Fatal(err)
		}
	}
	d3 := filepath.Join(dst, "d3")
	checkFlat(t, d3)
	if err := CheckFlat(d3); err != nil {
		t.Error(err)
	}
	sameMemory(t, memoryOfDir(t, d3), want)
}

// restore restores dir detached and returns the pid of the restored task.
func restore(t *testing.T, dir, logPath string, pid int) {
	t.Helper()
	criu(t, nil, logPath, "restore", "-D", dir, "-d")
	t.Cleanup(func() { killAndReap(pid) })
}

func killAndReap(pid int) {
	if syscall.Kill(pid, syscall.SIGKILL) == nil {
		var ws unix.WaitStatus
		unix.Wait4(pid, &ws, 0, nil)
	}
}

func TestFlattenCRIUChainMemload(t *testing.T) {
	requirePreDump(t)
	binDir := os.Getenv("PRECOPY_BIN_DIR")
	if binDir == "" {
		t.Skip("PRECOPY_BIN_DIR unset: it must hold memload (make build fills _output/bin)")
	}
	memload := filepath.Join(binDir, "memload")
	if _, err := os.Stat(memload); err != nil {
		t.Skipf("no memload: %v (make build)", err)
	}
	sizes := os.Getenv("PRECOPY_IMAGECHAIN_MIB")
	if sizes == "" {
		sizes = "64,256"
	}
	for _, s := range strings.Split(sizes, ",") {
		mib, err := strconv.Atoi(s)
		if err != nil {
			t.Fatalf("PRECOPY_IMAGECHAIN_MIB: %v", err)
		}
		t.Run(fmt.Sprintf("%dMiB", mib), func(t *testing.T) { memloadChain(t, memload, mib) })
	}
}

func memloadChain(t *testing.T, memload string, mib int) {
	root := filepath.Join(t.TempDir(), fmt.Sprintf("memload-%dmib", mib))
	status := filepath.Join(root, "status.json")
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := startSession(t, nil, memload, "-mib", strconv.Itoa(mib), "-dirty-mibps", "16", "-hot", "0.25", "-status", status)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := workload.WaitReadable(ctx, status); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	makeChain(t, root, pid, time.Second, nil)
	cmd.Wait() // the dump killed it; reap it so that its pid is free
	chain := filepath.Join(root, "chain")
	describeChain(t, chain)
	want := memoryOfDir(t, filepath.Join(chain, "d3"))
	// The dump may catch memload with its status file (or the .tmp it
	// renames over it) open; CRIU's restore then wants that file as it was
	// at the dump, and each restore below runs memload, which rewrites it.
	atDump := statusFilesAt(t, status)

	for _, f := range flattenings {
		t.Run(f.name, func(t *testing.T) {
			dst := filepath.Join(root, f.name)
			flattenCopy(t, fmt.Sprintf("%dMiB %s", mib, f.name), chain, dst, f.dirs, f.consumeLast, want)
			putBackStatusFiles(t, status, atDump)
			restore(t, filepath.Join(dst, "d3"), filepath.Join(root, "logs", f.name+"-restore.log"), pid)
			out, err := exec.Command(memload, "query", "-status", status, "-pid", strconv.Itoa(pid), "-timeout", "5m").Output()
			if err != nil {
				t.Fatalf("memload query: %v", err)
			}
			st, err := workload.ParseStatus(out)
			if err != nil {
				t.Fatal(err)
			}
			if err := st.Check(); err != nil {
				t.Fatal(err)
			}
			t.Logf("restored memload verified %d pages at cursor %d", st.Pages, st.QueryCursor)
			killAndReap(pid)
		})
	}
}

// statusFilesAt returns the content of a workload's status file and of
// the temporary file it writes first (nil where there is none).
func statusFilesAt(t *testing.T, status string) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	for _, p := range []string{status, status + ".tmp"} {
		b, err := os.ReadFile(p)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		files[p] = b
	}
	return files
}

// putBackStatusFiles makes the status files what statusFilesAt saw.
func putBackStatusFiles(t *testing.T, status string, files map[string][]byte) {
	t.Helper()
	for p, b := range files {
		var err error
		if b == nil {
			err = os.Remove(p)
			if errors.Is(err, os.ErrNotExist) {
				err = nil
			}
		} else {
			err = os.WriteFile(p, b, 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestFlattenCRIUChainShmem does the same with shmload, whose memory is an
// anonymous shared mapping. CRIU_TRACK_SHMEM=1 makes CRIU dump it
// incrementally (criu/shmem.c is_shmem_tracking_en): without it every
// round dumps shared memory in full and pagemap-shmem has no PE_PARENT.
func TestFlattenCRIUChainShmem(t *testing.T) {
	requirePreDump(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(t.TempDir(), "shmload-32mib")
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	status := filepath.Join(root, "status.json")
	cmd := startSession(t, []string{shmloadStatusEnv + "=" + status, shmloadMiBEnv + "=32"}, self)
	if _, err := waitShmload(status, func(shmloadStatus) bool { return true }); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	criuEnv := []string{"CRIU_TRACK_SHMEM=1"}
	makeChain(t, root, pid, time.Second, criuEnv)
	cmd.Wait()
	chain := filepath.Join(root, "chain")
	describeChain(t, chain)
	logLines(t, filepath.Join(root, "logs"), "shared memory", "shmem")
	if !slices.ContainsFunc(pagemapNames(t, filepath.Join(chain, "d3")), func(n string) bool {
		return strings.HasPrefix(n, "pagemap-shmem-")
	}) {
		t.Fatal("no pagemap-shmem image in the dump")
	}
	want := memoryOfDir(t, filepath.Join(chain, "d3"))

	for _, f := range flattenings {
		t.Run(f.name, func(t *testing.T) {
			dst := filepath.Join(root, f.name)
			flattenCopy(t, "shmem 32MiB "+f.name, chain, dst, f.dirs, f.consumeLast, want)
			// The restored shmload has the memory of the dump, where no check
			// was made yet; drop what an earlier restore wrote.
			if err := os.Remove(status); err != nil {
				t.Fatal(err)
			}
			restore(t, filepath.Join(dst, "d3"), filepath.Join(root, "logs", f.name+"-restore.log"), pid)
			if err := syscall.Kill(pid, syscall.SIGUSR1); err != nil {
				t.Fatal(err)
			}
			st, err := waitShmload(status, func(s shmloadStatus) bool { return s.Checks > 0 })
			if err != nil {
				t.Fatal(err)
			}
			if st.BadPages != 0 {
				t.Fatalf("restored shmload found %d bad pages of %d", st.BadPages, st.Pages)
			}
			t.Logf("restored shmload verified %d shared pages", st.Pages)
			killAndReap(pid)
		})
	}
}

func readShmload(path string) (shmloadStatus, error) {
	var st shmloadStatus
	b, err := os.ReadFile(path)
	if err == nil {
		err = json.Unmarshal(b, &st)
	}
	return st, err
}

func waitShmload(path string, done func(shmloadStatus) bool) (shmloadStatus, error) {
	deadline := time.Now().Add(5 * time.Minute)
	for {
		st, err := readShmload(path)
		if err == nil && done(st) {
			return st, nil
		}
		if time.Now().After(deadline) {
			return st, fmt.Errorf("shmload status %s: timed out (last: %+v, %v)", path, st, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// describeChain logs what CRIU wrote: per pagemap, entries, flags, whether
// they are sorted, and pages present vs in parent.
func describeChain(t *testing.T, chain string) {
	t.Helper()
	for _, d := range []string{"d1", "d2", "d3"} {
		dir := filepath.Join(chain, d)
		for _, name := range pagemapNames(t, dir) {
			img, err := readPagemap(filepath.Join(dir, name))
			if err != nil {
				t.Fatal(err)
			}
			flags := map[uint32]int{}
			var present, parent uint64
			sorted := true
			for i, e := range img.entries {
				flags[e.flags]++
				if e.present() {
					present += e.pages
				} else {
					parent += e.pages
				}
				if i > 0 && img.entries[i-1].end(pageSize) > e.vaddr {
					sorted = false
				}
			}
			t.Logf("%s/%s: pages-%d, %d entries, flags %v, %d pages present, %d in parent, sorted %v, wide %v",
				d, name, img.pagesID, len(img.entries), flags, present, parent, sorted, img.wide)
		}
	}
}

// copyTree copies a directory of regular files, directories and symlinks.
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.Walk(src, func(path string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		to := filepath.Join(dst, rel)
		switch {
		case fi.IsDir():
			return os.MkdirAll(to, fi.Mode().Perm())
		case fi.Mode()&os.ModeSymlink != 0:
			target, err := os.Readlink(path)
			if err != nil {
				return err
			}
			return os.Symlink(target, to)
		case fi.Mode().IsRegular():
			return copyFile(path, to, fi.Mode().Perm())
		}
		return fmt.Errorf("%s: unexpected %s", path, fi.Mode().Type())
	})
	if err != nil {
		t.Fatal(err)
	}
}

func copyFile(src, dst string, perm os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, perm)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	return errors.Join(err, out.Close())
}

// TestFlattenSavedChains times Flatten on chains that the CRIU tests saved
// (PRECOPY_IMAGECHAIN_SAVE), on a machine that cannot make them:
//
//	PRECOPY_IMAGECHAIN_CHAINS=_output/chains PRECOPY_IMAGECHAIN_TMP=/dev/shm \
//		go test -run SavedChains -v ./precopy/imagechain/
//
// PRECOPY_IMAGECHAIN_TMP is where the copies are flattened (tmpfs, like
// production; default the test's temp dir).
func TestFlattenSavedChains(t *testing.T) {
	dir := os.Getenv("PRECOPY_IMAGECHAIN_CHAINS")
	if dir == "" {
		t.Skip("PRECOPY_IMAGECHAIN_CHAINS unset: no saved chains to time")
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		chain := filepath.Join(dir, e.Name())
		if _, err := os.Stat(filepath.Join(chain, "d3")); err != nil {
			continue
		}
		t.Run(e.Name(), func(t *testing.T) {
			describeChain(t, chain)
			want := memoryOfDir(t, filepath.Join(chain, "d3"))
			for _, f := range flattenings {
				for run := range 3 {
					work, err := os.MkdirTemp(os.Getenv("PRECOPY_IMAGECHAIN_TMP"), "imagechain-")
					if err != nil {
						t.Fatal(err)
					}
					flattenCopy(t, fmt.Sprintf("%s %s #%d", e.Name(), f.name, run), chain, work, f.dirs, f.consumeLast, want)
					os.RemoveAll(work)
				}
			}
		})
	}
}

// logLines logs the lines of the CRIU logs in dir that mention any of words.
func logLines(t *testing.T, dir string, words ...string) {
	t.Helper()
	logs, _ := filepath.Glob(filepath.Join(dir, "*.log"))
	for _, l := range logs {
		b, err := os.ReadFile(l)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			for _, w := range words {
				if strings.Contains(line, w) {
					t.Logf("%s: %s", filepath.Base(l), line)
					break
				}
			}
		}
	}
}
