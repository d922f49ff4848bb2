package precopy

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/checkpoint-restore/go-criu/v7/crit"

	"github.com/precopy/precopy/precopy/policy"
)

// ReadDumpStats reads the statistics CRIU writes into its work dir
// (stats-dump; not the image dir) after a dump or pre-dump. It goes through
// go-criu's crit package: linking go-criu's stats package as well panics at
// start-up (both register stats.proto).
func ReadDumpStats(workDir string) (policy.Round, error) {
	// A stats file cut short (CRIU killed mid-write) must be an error, not a
	// decoder panic: a CRIU image starts with two 4-byte magics and a size.
	if fi, err := os.Stat(filepath.Join(workDir, crit.StatsDump)); err != nil {
		return policy.Round{}, fmt.Errorf("read stats-dump: %w", err)
	} else if fi.Size() < 12 {
		return policy.Round{}, fmt.Errorf("stats-dump in %s is truncated (%d bytes)", workDir, fi.Size())
	}
	st, err := crit.GetDumpStats(workDir)
	if err != nil {
		return policy.Round{}, fmt.Errorf("read stats-dump in %s: %w", workDir, err)
	}
	if st == nil {
		return policy.Round{}, fmt.Errorf("stats-dump in %s holds no dump statistics", workDir)
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
