package pin

import (
	"time"

	"golang.org/x/sys/unix"
)

// Copy rates measured on this project's machine (2 shared vCPUs, ext4 on
// a virtio disk, kernel 6.18) at commit 62a44ae with
//
//	flock /tmp/precopy-heavy.lock go test -run '^$' -bench BenchmarkCopy -count 6 ./snapshotter/pin/
//
// medians of 6 runs (other sessions were compiling meanwhile: load 2.5-12):
//
//	                       pin.Copy                  continuity fs.CopyDir
//	disk, one 256 MiB file 2598 MB/s (1218-3755)     757 MB/s (252-932)
//	disk, 4096 x 4 KiB     363.5 us/file (206-689)   1060 us/file (759-1825)
//	tmpfs, one 256 MiB     3107 MB/s (2745-3648)     2770 MB/s (1828-3213)
//	tmpfs, 4096 x 4 KiB    36.7 us/file (31.7-54.5)  61.1 us/file (56.1-79.0)
//
// A file's fixed cost on the disk is its create: ext4 here takes about
// 370 us to create an empty file whatever copies it (the source tree's
// own creation in the benchmark costs as much).
const (
	diskBytesPerSecond  = 2598e6
	diskPerFile         = 363500 * time.Nanosecond
	tmpfsBytesPerSecond = 3107e6
	tmpfsPerFile        = 36700 * time.Nanosecond
)

var (
	// DiskRate is for a copy on a disk filesystem (/var/lib/containerd).
	DiskRate = Rate{BytesPerSecond: diskBytesPerSecond, PerFile: diskPerFile}
	// TmpfsRate is for a copy on a tmpfs (precopyd's snapshotter).
	TmpfsRate = Rate{BytesPerSecond: tmpfsBytesPerSecond, PerFile: tmpfsPerFile}
)

// RateFor is the measured rate of the kind of filesystem dir is on.
func RateFor(dir string) Rate {
	var st unix.Statfs_t
	if unix.Statfs(dir, &st) == nil && st.Type == unix.TMPFS_MAGIC {
		return TmpfsRate
	}
	return DiskRate
}

// DefaultMaxCopyTime is how long a pin may keep a container frozen: under
// what an early thaw saves at the smallest container precopy pre-copies
// (io.precopy.min-size, 64 MiB). The daemon's content write, which the
// early thaw takes out of the pause, took 631-702 ms for a 257 MiB
// checkpoint into containerd's local store natively on this machine
// (2.5-2.7 ms/MiB: about 160 ms at 64 MiB; 5-10x that under TCG). At the
// rates above 100 ms is about 275 files or 260 MB on the disk, and 2 700
// files or 310 MB on a tmpfs.
const DefaultMaxCopyTime = 100 * time.Millisecond

// DefaultLimit refuses a layer whose copy is estimated to take more than
// DefaultMaxCopyTime, or that holds more data than copies in that time on
// the disk (the room the copy takes, whatever the estimate says).
var DefaultLimit = Limit{
	MaxCopyTime: DefaultMaxCopyTime,
	MaxBytes:    int64(diskBytesPerSecond * DefaultMaxCopyTime.Seconds()),
}
