package precopy

import (
	"encoding/binary"
	"fmt"
	"path/filepath"
	"time"

	"github.com/checkpoint-restore/go-criu/v7/crit"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/stats"
	"github.com/checkpoint-restore/go-criu/v7/magic"
	"google.golang.org/protobuf/proto"

	"github.com/precopy/precopy/precopy/policy"
)

// maxStatsBytes bounds a stats-dump: CRIU writes one entry of a few dozen
// bytes.
const maxStatsBytes = 64 << 10

// ReadDumpStats reads the statistics CRIU writes into its work dir
// (stats-dump; not the image dir) after a dump or pre-dump, not following
// a symlink and reading at most maxStatsBytes.
//
// It decodes the file itself rather than with go-criu's crit, which reads
// it by path (following links), allocates whatever size the file's entry
// header claims, and panics on a short file; linking go-criu's stats
// package instead panics at start-up (it registers stats.proto as crit's
// images do). The format is two magics, a 4-byte little-endian size and
// one StatsEntry message.
func ReadDumpStats(workDir string) (policy.Round, error) {
	path := filepath.Join(workDir, crit.StatsDump)
	b, err := readRegular(path, maxStatsBytes)
	if err != nil {
		return policy.Round{}, fmt.Errorf("read stats-dump: %w", err)
	}
	st, err := decodeDumpStats(b)
	if err != nil {
		return policy.Round{}, fmt.Errorf("stats-dump in %s: %w", workDir, err)
	}
	us := func(v uint32) time.Duration { return time.Duration(v) * time.Microsecond }
	return policy.Round{
		PagesScanned:       st.GetPagesScanned(),
		PagesWritten:       st.GetPagesWritten(),
		PagesSkippedParent: st.GetPagesSkippedParent(),
		Freezing:           us(st.GetFreezingTime()),
		Frozen:             us(st.GetFrozenTime()),
		MemDump:            us(st.GetMemdumpTime()),
		MemWrite:           us(st.GetMemwriteTime()),
	}, nil
}

// decodeDumpStats decodes a stats-dump file's bytes.
func decodeDumpStats(b []byte) (*stats.DumpStatsEntry, error) {
	// A stats file cut short (CRIU killed mid-write) is an error.
	if len(b) < 12 {
		return nil, fmt.Errorf("truncated (%d bytes)", len(b))
	}
	m := magic.LoadMagic()
	le := binary.LittleEndian
	if first, second := uint64(le.Uint32(b)), uint64(le.Uint32(b[4:])); first != m.ByName["IMG_SERVICE"] || second != m.ByName["STATS"] {
		return nil, fmt.Errorf("not a CRIU stats image (magic %#x %#x)", first, second)
	}
	size := uint64(le.Uint32(b[8:]))
	payload := b[12:]
	if size > uint64(len(payload)) {
		return nil, fmt.Errorf("truncated: its entry claims %d bytes, %d follow", size, len(payload))
	}
	var entry stats.StatsEntry
	if err := proto.Unmarshal(payload[:size], &entry); err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	if entry.GetDump() == nil {
		return nil, fmt.Errorf("holds no dump statistics")
	}
	return entry.GetDump(), nil
}
