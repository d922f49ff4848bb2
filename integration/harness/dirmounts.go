package harness

import (
	"fmt"
	"path/filepath"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// ContainerdDirEnv names a directory to make each private containerd's
// directory (root, state, temp, sockets) in, instead of $TMPDIR. The VM
// tier's scratch disk (integration/vm/run.sh, PRECOPY_VM_SCRATCH=ext4)
// sets it to its ext4 file system, so that the state dir (bundles and
// precopy's rounds in them) and the temp dir (where containerd has the
// checkpoint written) are on a disk file system, where every other
// writable one in the guest is tmpfs. Both stay on one mount: the final
// flatten hard-links from the one into the other.
const ContainerdDirEnv = "PRECOPY_CONTAINERD_DIR"

// StateDir is containerd's state dir (its config's state): the tasks'
// bundles, and in them precopy's rounds.
func (d *Daemon) StateDir() string { return filepath.Join(d.Dir, "state") }

// TempDir is containerd's temp dir (its config's temp), which containerd
// makes its TMPDIR: a checkpoint's image is written into a dir it makes
// there (os.MkdirTemp with XDG_RUNTIME_DIR unset).
func (d *Daemon) TempDir() string { return filepath.Join(d.Dir, "tmp") }

// DirMounts are the mounts containerd's state dir and temp dir are on.
func (d *Daemon) DirMounts() (state, temp *mountinfo.Info, err error) {
	if state, err = mountOf(d.StateDir()); err != nil {
		return nil, nil, err
	}
	if temp, err = mountOf(d.TempDir()); err != nil {
		return nil, nil, err
	}
	return state, temp, nil
}

// DescribeDirMounts says which file system containerd's state dir and
// temp dir are on, and whether it is one mount (link(2) between two
// mounts fails with EXDEV, even between bind mounts of one file system),
// for a benchmark's header or a test log.
func (d *Daemon) DescribeDirMounts() string {
	state, temp, err := d.DirMounts()
	if err != nil {
		return err.Error()
	}
	same := "one mount"
	if state.ID != temp.ID {
		same = fmt.Sprintf("two mounts (temp dir: %s on %s)", temp.FSType, temp.Mountpoint)
	}
	return fmt.Sprintf("containerd's state dir %s and temp dir %s on %s (%s mounted on %s), %s",
		d.StateDir(), d.TempDir(), state.FSType, state.Source, state.Mountpoint, same)
}

// mountOf is the mount path is on: statx's mount ID looked up in
// /proc/self/mountinfo (a statfs type would not tell two mounts of one
// file system apart).
func mountOf(path string) (*mountinfo.Info, error) {
	var st unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, path, 0, unix.STATX_MNT_ID, &st); err != nil {
		return nil, fmt.Errorf("statx %s: %w", path, err)
	}
	if st.Mask&unix.STATX_MNT_ID == 0 {
		return nil, fmt.Errorf("statx %s: the kernel gave no mount ID (before 5.8)", path)
	}
	ms, err := mountinfo.GetMounts(func(i *mountinfo.Info) (skip, stop bool) {
		return uint64(i.ID) != st.Mnt_id, uint64(i.ID) == st.Mnt_id
	})
	if err != nil {
		return nil, fmt.Errorf("mounts of %s: %w", path, err)
	}
	if len(ms) == 0 {
		return nil, fmt.Errorf("mount %d of %s not in /proc/self/mountinfo", st.Mnt_id, path)
	}
	return ms[0], nil
}
