package policy

import "time"

// Synthetic histories: a container of synthResident pages whose rounds run
// back to back, each copying at synthBandwidth pages/s plus synthPerRound,
// taking synthOverhead more wall time (CRIU's start, freezing, the
// parasite), and frozen for a quarter of the copy plus 30 ms.
const (
	synthResident  = 262144 // 1 GiB
	synthBandwidth = 100000
	synthPerRound  = 10 * time.Millisecond
	synthOverhead  = 200 * time.Millisecond
)

var synthStart = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// synth builds rounds writing the given pages (the first is normally
// synthResident) and returns them with the elapsed time at the last one's
// end.
func synth(written ...uint64) ([]Round, time.Duration) {
	rounds := make([]Round, len(written))
	var at time.Duration
	for i, w := range written {
		copyTime := synthPerRound + time.Duration(float64(w)/synthBandwidth*float64(time.Second))
		skipped := uint64(0)
		if i > 0 && w < synthResident {
			skipped = synthResident - w
		}
		rounds[i] = Round{
			Index:              i + 1,
			PagesWritten:       w,
			PagesSkippedParent: skipped,
			PagesScanned:       4 * synthResident,
			MemDump:            copyTime / 4,
			MemWrite:           copyTime - copyTime/4,
			Frozen:             copyTime/4 + 30*time.Millisecond,
			Start:              synthStart.Add(at),
			Wall:               copyTime + synthOverhead,
			ImageBytes:         int64(w) * PageSize,
		}
		at += rounds[i].Wall
	}
	return rounds, at
}
