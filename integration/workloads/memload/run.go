package main

import (
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/precopy/precopy/integration/workload"
)

// runWorkload is the run mode: allocate and fill the memory, then loop until
// SIGTERM or SIGINT.
func runWorkload(args []string) error {
	// Catch the signals before anything else. A query that arrives while the
	// memory is being filled is then answered once the loop starts instead of
	// killing the process (outside a container SIGUSR1's default is to
	// terminate; as PID 1 it would merely be dropped).
	requests := make(chan os.Signal, 4)
	signal.Notify(requests, syscall.SIGUSR1, syscall.SIGUSR2)
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	// Exit from here rather than the loop, so that stopping is prompt even in
	// the middle of filling or verifying a large memory.
	go func() {
		<-stop
		os.Exit(0)
	}()

	startedAt := time.Now()
	cfg, err := parseConfig(args)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "memload: pid=%d %s\n", os.Getpid(), cfg)

	buf, err := allocate(cfg.mib << 20)
	if err != nil {
		return err
	}
	mem, err := workload.NewMemory(buf, cfg.seed, cfg.hot)
	if err != nil {
		return err
	}
	mem.Fill()
	if err := writeRootfsData(rootfsDataPath, cfg.rootfsMiB, cfg.seed); err != nil {
		return err
	}
	return newLoop(cfg, mem, startedAt).run(requests)
}

// loop is the workload's state between iterations. Everything that a
// restored process needs to verify itself (the memory's seed and cursor) is
// in here, i.e. in the process's own memory.
type loop struct {
	cfg    config
	mem    *workload.Memory
	pacer  pacer
	gaps   gapMeter
	status workload.Status // the fields that are not recomputed on each write

	lastWrite time.Time
}

func newLoop(cfg config, mem *workload.Memory, startedAt time.Time) *loop {
	return &loop{
		cfg:   cfg,
		mem:   mem,
		pacer: newPacer(cfg.dirtyMiBps, cfg.tick),
		status: workload.Status{
			PID:          os.Getpid(),
			MiB:          cfg.mib,
			DirtyMiBps:   cfg.dirtyMiBps,
			Hot:          cfg.hot,
			Seed:         cfg.seed,
			Pages:        mem.Pages(),
			HotPages:     mem.HotPages(),
			FirstBadPage: -1,
			StartedAt:    startedAt.Round(0),
		},
	}
}

func (l *loop) run(requests <-chan os.Signal) error {
	ticker := time.NewTicker(l.cfg.tick)
	defer ticker.Stop()
	l.gaps.begin(time.Now())
	// The first status file tells `memload query` that the memory is ready.
	if err := l.writeStatus(); err != nil {
		return err
	}
	for {
		var query, reset bool
		select {
		case <-ticker.C:
		case sig := <-requests:
			query, reset = sig == syscall.SIGUSR1, sig == syscall.SIGUSR2
		}
		// Requests that came meanwhile are answered by this iteration too:
		// a client only waits for a sequence number to pass its own.
		for pending := true; pending; {
			select {
			case sig := <-requests:
				query, reset = query || sig == syscall.SIGUSR1, reset || sig == syscall.SIGUSR2
			default:
				pending = false
			}
		}

		// A request is handled after an iteration, never instead of one, so
		// the gap up to it is recorded even if it arrives before the first
		// tick after a restore.
		now := time.Now()
		l.iterate(now)
		if reset {
			l.gaps.reset()
			l.status.ResetSeq++
		}
		if query {
			l.query()
		}
		if query || reset || now.Sub(l.lastWrite) >= l.cfg.statusEvery {
			if err := l.writeStatus(); err != nil {
				return err
			}
		}
	}
}

// iterate records the gap since the previous iteration and rewrites the
// pages the rate asks for in that time.
func (l *loop) iterate(now time.Time) {
	elapsed := l.gaps.observe(now)
	l.mem.Rewrite(l.pacer.pages(elapsed))
	l.status.Counter++
}

// query verifies the whole memory against what seed and cursor predict. It
// runs in the loop, so the memory does not change underneath it, and its
// duration is kept out of the gaps.
func (l *loop) query() {
	start := time.Now()
	bad := l.mem.Verify()
	sum := l.mem.Checksum()
	took := time.Since(start)
	l.gaps.exclude(took)

	s := &l.status
	s.QuerySeq++
	s.QueryCursor = l.mem.Cursor()
	s.Verified = len(bad) == 0
	s.BadPages = uint64(len(bad))
	s.FirstBadPage = -1
	if len(bad) > 0 {
		s.FirstBadPage = int64(bad[0])
	}
	s.Checksum = fmt.Sprintf("%08x", sum)
	s.QueryMS = milliseconds(took)
}

func (l *loop) writeStatus() error {
	s := &l.status
	l.checkStatusFile()
	s.Cursor = l.mem.Cursor()
	s.LastGapMS = milliseconds(l.gaps.lastGap)
	s.MaxGapMS = milliseconds(l.gaps.maxGap)
	s.MaxWallGapMS = milliseconds(l.gaps.maxWallGap)
	s.StatusSeq++
	l.lastWrite = time.Now()
	s.WrittenAt = l.lastWrite.Round(0)
	return workload.WriteStatus(l.cfg.statusPath, *s)
}

// checkStatusFile counts a status file that is not the last one this
// process wrote, which its memory remembers. A restore that put back the
// memory of one moment and a file system of another shows here, at the
// restored process's first write. A process frozen in the middle of a
// write finishes it after the restore, before it checks again.
func (l *loop) checkStatusFile() {
	s := &l.status
	if s.StatusSeq == 0 {
		return // nothing written yet
	}
	why := ""
	b, err := os.ReadFile(l.cfg.statusPath)
	if err == nil {
		var onDisk workload.Status
		if onDisk, err = workload.ParseStatus(b); err == nil && onDisk.StatusSeq != s.StatusSeq {
			why = fmt.Sprintf("the file holds status %d, this process last wrote %d", onDisk.StatusSeq, s.StatusSeq)
		}
	}
	if err != nil {
		why = fmt.Sprintf("the file is unreadable (%v), this process last wrote status %d", err, s.StatusSeq)
	}
	if why == "" {
		return
	}
	s.FileMismatches++
	if s.FirstFileMismatch == "" {
		s.FirstFileMismatch = why
	}
}

func milliseconds(d time.Duration) float64 {
	return float64(d) / float64(time.Millisecond)
}

// writeRootfsData writes mib MiB of pseudo-random bytes (from seed) to
// path; nothing for 0.
func writeRootfsData(path string, mib int, seed uint64) error {
	if mib == 0 {
		return nil
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("-rootfs-mib: %w", err)
	}
	rng := rand.New(rand.NewPCG(seed, 0x726f6f7466730a))
	buf := make([]byte, 1<<20)
	for range mib {
		for i := 0; i < len(buf); i += 8 {
			binary.LittleEndian.PutUint64(buf[i:], rng.Uint64())
		}
		if _, err := f.Write(buf); err != nil {
			f.Close()
			return fmt.Errorf("-rootfs-mib: %w", err)
		}
	}
	return f.Close()
}
