package precopy

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Incremental checkpoints (io.precopy.incremental). The engine keeps the
// memory part of a checkpoint's image (Dir/kept), and the next pre-copy's
// first round dumps against it as its parent: CRIU writes only the pages
// whose soft-dirty bit is set and records the others as in the parent.
// The flatten after the round takes the kept image over (it becomes round
// 1's flat image), so the new checkpoint is as flat and complete as any.
//
// Correctness rests on what soft-dirty means at the first round: a clear
// bit says the page was not written since the bits were last reset. So
// the parent must hold every page as it was at that reset. CRIU (4.1.1,
// criu/mem.c __parasite_dump_pages_seized) resets the bits of each task
// (task_reset_dirty_track: "4" into /proc/<pid>/clear_refs) after it has
// collected that task's pages, only when memory tracking is on
// (opts.track_mem): always for a pre-dump (cr_pre_dump_tasks enforces
// it), and for a dump only when asked, which runc does exactly when it
// passes a parent (--parent-path sets TrackMem, libcontainer
// criu_linux.go). A final dump (not a pre-dump) collects and writes the
// pages with the tasks frozen, and they stay frozen until the dump ends,
// leave-running or not; so the image of a final dump on rounds holds the
// memory exactly as it was at its reset. That image, and only that one, is
// kept:
//
//   - every later CRIU run on the task resets the bits again; so the kept
//     image moves into the next pre-copy's rounds as soon as they start, and
//     goes with them if they are discarded (Resume, timer, failure): it is
//     never the parent of a dump after another reset;
//   - a one-shot checkpoint (no parent: no reset, and no dump_uptime in its
//     inventory, without which CRIU's pid-reuse check treats every task as
//     new and copies it all) is not kept, and drops the kept image: the
//     engine does not rely on a dump without a parent leaving the bits
//     alone;
//   - an exit-mode checkpoint stops the task; a failed or redone one leaves
//     nothing to keep.
//
// Processes started after the kept image's dump (a pid reused) are dumped
// whole: CRIU compares their start time with the parent's dump_uptime
// (detect_pid_reuse). New mappings are soft-dirty as a whole (VM_SOFTDIRTY).

// keptDirName is the kept image's dir in the engine's Dir.
const keptDirName = "kept"

// keptImage is the memory part of a checkpoint's image, kept as the next
// pre-copy's parent.
type keptImage struct {
	dir string
	// names are the files in dir (linkKept's, the engine's own dir).
	names  []string
	parent Parent
}

// keptFiles says whether a file of a CRIU image dir is part of what a
// dump against it as parent reads: the inventory (dump_uptime, for the
// pid-reuse check), the pagemaps and the pages.
func keptFile(name string) bool {
	return name == "inventory.img" || pagesFile(name) || strings.HasPrefix(name, "pagemap-") && strings.HasSuffix(name, ".img")
}

// pagesFile says whether a file of a CRIU image dir holds pages.
func pagesFile(name string) bool {
	return strings.HasPrefix(name, "pages-") && strings.HasSuffix(name, ".img")
}

// keep keeps the memory files of checkpoint image dir image, checkpoint
// number n whose final dump started at dumped, as the next pre-copy's
// parent: hard links where the image dir is on the engine's filesystem
// (milliseconds), copies otherwise. The files are not written to while
// linked: the next pre-copy unshares any file that still has another name
// before its flatten takes it over.
func (e *Engine) keep(image string, n int, dumped time.Time, inc *Incremental) {
	start := e.Now()
	k, err := e.linkKept(image, n, dumped)
	if err != nil {
		inc.NotKept = err.Error()
		e.Log.Warnf("precopy: image not kept for the next checkpoint: %v", err)
		return
	}
	e.kept = k
	inc.Kept, inc.KeptBytes, inc.Keep = true, k.parent.Bytes, e.Now().Sub(start)
	startWriteback(k, e.Log)
}

// startWriteback starts writing the pages files of kept image k back to
// disk and returns without waiting for it. The next checkpoint's first
// flatten takes them over, and where pages were added or removed below
// others it shifts ranges of the file (imagechain's range shifts, ext4
// and XFS), before which ext4 writes back every dirty page from the shift
// to the end of the file: natively here (hack/shift-cost.sh) an insert
// into a clean 1 GiB file took 20-67 ms, with 117 MiB dirty past the
// offset 111-135 ms. (Under TCG dropping the file's page cache dominates
// instead, and this does not help there.) The kernel would write the
// pages back within its dirty_expire (30 s) anyway; this only does it
// while nothing waits for it, between two checkpoints, instead of inside
// the next one's rounds.
// On tmpfs it does nothing. The files are opened here, so the next
// checkpoint may take them over at any time; the writes are asked for in
// a goroutine because sync_file_range blocks while the device's request
// queue is full. Failures are only logged: they cost the next round time,
// not correctness.
func startWriteback(k *keptImage, log Logger) {
	var files []*os.File
	for _, name := range k.names {
		if !pagesFile(name) {
			continue
		}
		f, err := os.Open(filepath.Join(k.dir, name))
		if err != nil {
			log.Warnf("precopy: kept image writeback: %v", err)
			continue
		}
		files = append(files, f)
	}
	go writeBack(files, log)
}

// writeBack asks for files' dirty pages to be written out (not waiting
// for the disk) and closes them.
func writeBack(files []*os.File, log Logger) {
	for _, f := range files {
		if err := unix.SyncFileRange(int(f.Fd()), 0, 0, unix.SYNC_FILE_RANGE_WRITE); err != nil {
			log.Warnf("precopy: kept image writeback of %s: %v", f.Name(), err)
		}
		f.Close()
	}
}

func (e *Engine) linkKept(image string, n int, dumped time.Time) (*keptImage, error) {
	entries, err := os.ReadDir(image)
	if err != nil {
		return nil, err
	}
	var names []string
	var bytes int64
	for _, de := range entries {
		if !keptFile(de.Name()) || !de.Type().IsRegular() {
			continue
		}
		info, err := de.Info()
		if err != nil {
			return nil, err
		}
		names, bytes = append(names, de.Name()), bytes+info.Size()
	}
	if !slices.Contains(names, "inventory.img") {
		return nil, fmt.Errorf("%s holds no inventory.img", image)
	}
	if e.KeepBudget > 0 && uint64(bytes) > e.KeepBudget {
		return nil, fmt.Errorf("its memory (%d MiB) is over the budget for a kept image (%d MiB, io.precopy.incremental-budget)", bytes>>20, e.KeepBudget>>20)
	}
	if err := os.MkdirAll(e.Dir, 0o700); err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(e.Dir, keptDirName+"-")
	if err != nil {
		return nil, err
	}
	for _, name := range names {
		if err := linkOrCopy(filepath.Join(image, name), filepath.Join(tmp, name)); err != nil {
			os.RemoveAll(tmp)
			return nil, fmt.Errorf("keep %s: %w", name, err)
		}
	}
	dir := filepath.Join(e.Dir, keptDirName)
	if err := os.Rename(tmp, dir); err != nil {
		os.RemoveAll(tmp)
		return nil, err
	}
	return &keptImage{dir: dir, names: names, parent: Parent{Number: n, DumpedAt: dumped, Bytes: bytes}}, nil
}

// linkOrCopy links src to dst, or copies it where they are on different
// filesystems.
func linkOrCopy(src, dst string) error {
	err := os.Link(src, dst)
	if !errors.Is(err, syscall.EXDEV) {
		return err
	}
	return copyFile(src, dst)
}

// copyFile copies src to a new file dst (the kernel copies, in
// copy_file_range, where it can).
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// adopt moves the kept image into rounds dir as their first image (the
// parent of round 1), making every file of it a file of its own: the
// flatten after round 1 consumes it, and must not write into a file the
// checkpoint it came from still has (a caller's image dir that outlived
// the checkpoint). It returns the parent's description and what
// unsharing cost; with an error the image is gone.
func (e *Engine) adopt(k *keptImage, into string) (string, time.Duration, error) {
	defer os.RemoveAll(k.dir)
	start := e.Now()
	copied := false
	for _, name := range k.names {
		p := filepath.Join(k.dir, name)
		var st syscall.Stat_t
		if err := syscall.Lstat(p, &st); err != nil {
			return "", 0, err
		}
		if st.Nlink == 1 {
			continue
		}
		if err := unshare(p); err != nil {
			return "", 0, fmt.Errorf("copy %s: %w", p, err)
		}
		copied = true
	}
	var cost time.Duration
	if copied {
		cost = e.Now().Sub(start)
	}
	dst := roundDir(into, 0)
	if err := os.Rename(k.dir, dst); err != nil {
		return "", 0, err
	}
	return dst, cost, nil
}

// unshare replaces file p, which has other names, with a copy of its own.
func unshare(p string) error {
	tmp := p + ".unshared"
	if err := copyFile(p, tmp); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, p)
}

// dropKept removes the kept image, saying why in the log; the next
// pre-copy starts from nothing, and its report says why.
func (e *Engine) dropKept(why string) {
	if e.kept == nil {
		return
	}
	if err := os.RemoveAll(e.kept.dir); err != nil {
		e.Log.Warnf("precopy: remove kept image: %v", err)
	}
	// Fails, as it should, while rounds are there.
	os.Remove(e.Dir)
	e.kept, e.noParent = nil, why
	e.Log.Infof("precopy: kept image dropped: %s", why)
}

// Release removes the kept image: the task is gone (Delete).
func (e *Engine) Release() {
	e.dropKept("the task was deleted")
}

// startFromKept makes the kept image, if any, the image r's first round
// dumps against. From here on the image belongs to r: it is consumed by
// round 1's flatten, or discarded with r.
func (e *Engine) startFromKept(r *Rounds) {
	k := e.kept
	if k == nil {
		r.noParent = e.noParent
		if r.noParent == "" {
			r.noParent = "no checkpoint of this task was kept before"
		}
		return
	}
	e.kept = nil
	e.noParent = fmt.Sprintf("the rounds that took checkpoint %d's image over were discarded", k.parent.Number)
	img, cost, err := e.adopt(k, r.dir)
	if err != nil {
		r.noParent = fmt.Sprintf("checkpoint %d's kept image could not be used: %v", k.parent.Number, err)
		e.Log.Warnf("precopy: %s", r.noParent)
		return
	}
	p := k.parent
	r.image, r.parent, r.unshare = img, &p, cost
}
