package precopy

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/checkpoint-restore/go-criu/v7/crit/images/stats"
	"github.com/checkpoint-restore/go-criu/v7/magic"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// statsImage is a stats-dump file as CRIU writes it: two magics, a size,
// one StatsEntry.
func statsImage(t *testing.T, written uint64) []byte {
	t.Helper()
	payload, err := proto.Marshal(&stats.StatsEntry{Dump: &stats.DumpStatsEntry{
		FreezingTime: proto.Uint32(1000), FrozenTime: proto.Uint32(2000), MemdumpTime: proto.Uint32(300),
		MemwriteTime: proto.Uint32(400), PagesScanned: proto.Uint64(100), PagesSkippedParent: proto.Uint64(10),
		PagesWritten: proto.Uint64(written), PagesLazy: proto.Uint64(0),
	}})
	if err != nil {
		t.Fatal(err)
	}
	m := magic.LoadMagic()
	b := binary.LittleEndian.AppendUint32(nil, uint32(m.ByName["IMG_SERVICE"]))
	b = binary.LittleEndian.AppendUint32(b, uint32(m.ByName["STATS"]))
	b = binary.LittleEndian.AppendUint32(b, uint32(len(payload)))
	return append(b, payload...)
}

func TestReadDumpStats(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "stats-dump"), statsImage(t, 42), 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := ReadDumpStats(dir)
	if err != nil {
		t.Fatal(err)
	}
	if r.PagesWritten != 42 || r.PagesScanned != 100 || r.Frozen.Microseconds() != 2000 || r.MemWrite.Microseconds() != 400 {
		t.Errorf("decoded %+v", r)
	}
}

// TestReadDumpStatsHostile: a stats-dump that is a symlink (to a valid
// stats file elsewhere), too big, a FIFO, or whose entry claims more bytes
// than follow, is refused with an error that says so; none is followed,
// read whole or allocated for.
func TestReadDumpStatsHostile(t *testing.T) {
	outside := filepath.Join(t.TempDir(), "stats-dump")
	if err := os.WriteFile(outside, statsImage(t, 1), 0o600); err != nil {
		t.Fatal(err)
	}
	claimsMore := statsImage(t, 1)
	binary.LittleEndian.PutUint32(claimsMore[8:], 1<<31)
	for name, tc := range map[string]struct {
		make func(path string) error
		want string
	}{
		"symlink":     {func(p string) error { return os.Symlink(outside, p) }, "symlink"},
		"too big":     {func(p string) error { return os.WriteFile(p, make([]byte, maxStatsBytes+1), 0o600) }, "more than"},
		"fifo":        {func(p string) error { return mkfifo(p) }, "not a regular file"},
		"claims more": {func(p string) error { return os.WriteFile(p, claimsMore, 0o600) }, "claims"},
		"bad magic":   {func(p string) error { return os.WriteFile(p, make([]byte, 64), 0o600) }, "magic"},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if err := tc.make(filepath.Join(dir, "stats-dump")); err != nil {
				t.Fatal(err)
			}
			if _, err := ReadDumpStats(dir); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error saying %q", err, tc.want)
			}
		})
	}
}

// TestWritesNeverFollowSymlinks: names in the image dir that are symlinks
// (the report's, CRIU's log's) are replaced by regular files, and the
// files they pointed to stay as they were; a symlinked log in the work
// dir is not copied.
func TestWritesNeverFollowSymlinks(t *testing.T) {
	f := &fakeCRIU{finals: synthetic(1)}
	e := newFakeEngine(t, f, fixed(1))
	cp := f.checkpoint
	cp.KeepCRIULog = true
	victim := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(victim, []byte("untouched"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(cp.WorkDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, filepath.Join(cp.WorkDir, "dump.log")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cp.WorkDir, "stats-dump"), statsImage(t, 1), 0o600); err != nil {
		t.Fatal(err)
	}
	// As a restored image dumped over could hold them.
	if err := os.MkdirAll(cp.ImageDir, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{ReportFile, "stats-dump"} {
		if err := os.Symlink(victim, filepath.Join(cp.ImageDir, name)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.Checkpoint(t.Context(), e.Skip(TriggerCheckpoint, "test"), cp); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(victim); err != nil || string(b) != "untouched" {
		t.Errorf("the file a link in the image pointed to: %q, %v", b, err)
	}
	for _, name := range []string{ReportFile, "stats-dump"} {
		if fi, err := os.Lstat(filepath.Join(cp.ImageDir, name)); err != nil || !fi.Mode().IsRegular() {
			t.Errorf("%s in the image: %v, %v; want a regular file", name, fi, err)
		}
	}
	if _, err := os.Lstat(filepath.Join(cp.ImageDir, "dump.log")); !os.IsNotExist(err) {
		t.Errorf("a symlinked dump.log in the work dir was copied: %v", err)
	}
	if matches, _ := filepath.Glob(filepath.Join(cp.ImageDir, ".*")); len(matches) != 0 {
		t.Errorf("temporary files left in the image: %v", matches)
	}
}

func mkfifo(path string) error { return unix.Mkfifo(path, 0o600) }
