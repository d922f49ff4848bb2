package main

import "time"

// gapMeter measures the time between the starts of consecutive iterations:
// the pause the process perceived. It measures with the monotonic clock
// (immune to clock steps on one machine) and, separately, with the wall
// clock, which is the only one comparable across machines: CLOCK_MONOTONIC
// counts from boot, so a process restored elsewhere sees it jump.
type gapMeter struct {
	// last is the start of the previous iteration, with its monotonic
	// reading; lastWall the same instant with the wall clock only.
	last, lastWall time.Time

	lastGap, maxGap, maxWallGap time.Duration
}

// begin starts the clock without recording a gap.
func (g *gapMeter) begin(now time.Time) {
	g.last, g.lastWall = now, now.Round(0) // Round(0) strips the monotonic reading
}

// observe records the gap from the previous iteration's start to now, the
// start of this one, and returns it.
func (g *gapMeter) observe(now time.Time) time.Duration {
	gap, wallGap := now.Sub(g.last), now.Round(0).Sub(g.lastWall)
	g.begin(now)
	g.lastGap = gap
	g.maxGap = max(g.maxGap, gap)
	g.maxWallGap = max(g.maxWallGap, wallGap)
	return gap
}

// exclude removes d, time spent on a query inside the current iteration,
// from the gap the next iteration will see. Shifting the reference rather
// than restarting it at the query's end keeps the rest of the gap counted.
func (g *gapMeter) exclude(d time.Duration) {
	g.last, g.lastWall = g.last.Add(d), g.lastWall.Add(d)
}

// reset forgets the longest gaps so far.
func (g *gapMeter) reset() {
	g.maxGap, g.maxWallGap = 0, 0
}
