package main

import (
	"math"
	"time"
)

// pacer turns the time since the previous iteration into a whole number of
// pages to rewrite, carrying the fraction, so the average rate is exact even
// when one tick's worth is not a whole page.
//
// Elapsed time is capped at maxElapsed (two ticks: the tick itself plus one
// tick of catching up). A loop that fell further behind, because the machine
// is slow or because the process was frozen for a checkpoint, drops the
// excess: the rate after a pause is at most twice nominal, and a restore is
// not followed by a burst of writes that would distort what the test
// measures. Over a long run the rate is therefore R or a little below.
type pacer struct {
	pagesPerSecond float64
	maxElapsed     time.Duration
	carry          float64
}

func newPacer(mibps float64, tick time.Duration) pacer {
	const pagesPerMiB = (1 << 20) / 4096
	return pacer{pagesPerSecond: mibps * pagesPerMiB, maxElapsed: 2 * tick}
}

func (p *pacer) pages(elapsed time.Duration) uint64 {
	// A negative elapsed is a monotonic clock that went backwards, as after a
	// restore on another machine: treat it as no time.
	if p.pagesPerSecond <= 0 || elapsed <= 0 {
		return 0
	}
	due := p.carry + p.pagesPerSecond*min(elapsed, p.maxElapsed).Seconds()
	whole := math.Floor(due)
	p.carry = due - whole
	return uint64(whole)
}
