package imagechain

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// shmload is a workload the CRIU test runs by re-executing the test binary
// (TestMain): memload only has private memory, and this one puts its pages
// in an anonymous MAP_SHARED mapping, which CRIU dumps into
// pagemap-shmem-<shmid>.img. Like memload it can check its memory after a
// restore on its own: each page holds its generation and content derived
// from (page, generation), and the expected generations live in private
// memory, dumped at the same instant.
const (
	shmloadStatusEnv = "IMAGECHAIN_SHMLOAD_STATUS" // status file; set: run shmload
	shmloadMiBEnv    = "IMAGECHAIN_SHMLOAD_MIB"
)

// shmloadStatus is the status file, rewritten at start and after each
// SIGUSR1 check.
type shmloadStatus struct {
	PID      int    `json:"pid"`
	Pages    int    `json:"pages"`
	Rewrites uint64 `json:"rewrites"`
	Checks   int    `json:"checks"`
	BadPages int    `json:"bad_pages"`
}

type shmload struct {
	mu       sync.Mutex
	mem      []byte   // shared
	gens     []uint64 // private: generation each page should have
	inflight int      // page being rewritten, or -1
	rewrites uint64
}

func fillShmPage(p []byte, page int, gen uint64) {
	binary.LittleEndian.PutUint64(p, gen)
	x := uint64(page)<<32 ^ gen
	for off := 8; off+8 <= len(p); off += 8 {
		x = x*6364136223846793005 + 1442695040888963407
		binary.LittleEndian.PutUint64(p[off:], x)
	}
}

func (s *shmload) page(i int) []byte { return s.mem[i*int(pageSize) : (i+1)*int(pageSize)] }

// check counts pages whose generation or content is wrong. The page being
// rewritten at the freeze may already have the next generation.
func (s *shmload) check() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	want := make([]byte, pageSize)
	bad := 0
	for i, g := range s.gens {
		p := s.page(i)
		got := binary.LittleEndian.Uint64(p)
		if got != g && !(i == s.inflight && got == g+1) {
			bad++
			continue
		}
		fillShmPage(want, i, got)
		if string(want) != string(p) {
			bad++
		}
	}
	return bad
}

func runShmload() error {
	status := os.Getenv(shmloadStatusEnv)
	mib, err := strconv.Atoi(os.Getenv(shmloadMiBEnv))
	if err != nil {
		return err
	}
	mem, err := syscall.Mmap(-1, 0, mib<<20, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED|syscall.MAP_ANONYMOUS)
	if err != nil {
		return err
	}
	s := &shmload{mem: mem, gens: make([]uint64, len(mem)/int(pageSize)), inflight: -1}
	for i := range s.gens {
		s.gens[i] = 1
		fillShmPage(s.page(i), i, 1)
	}
	write := func(st shmloadStatus) error {
		b, _ := json.Marshal(st)
		tmp := status + ".tmp"
		if err := os.WriteFile(tmp, b, 0o644); err != nil {
			return err
		}
		return os.Rename(tmp, status)
	}
	st := shmloadStatus{PID: os.Getpid(), Pages: len(s.gens)}
	if err := write(st); err != nil {
		return err
	}
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	go func() {
		for range usr1 {
			st.BadPages = s.check()
			st.Checks++
			s.mu.Lock()
			st.Rewrites = s.rewrites
			s.mu.Unlock()
			if err := write(st); err != nil {
				fmt.Fprintln(os.Stderr, err)
			}
		}
	}()
	// Rewrite 32 pages every 5 ms among the first quarter, so that most
	// pages stay clean between dumps and end up PE_PARENT.
	hot := max(1, len(s.gens)/4)
	for range time.Tick(5 * time.Millisecond) {
		s.mu.Lock()
		for range 32 {
			i := rand.IntN(hot)
			s.inflight = i
			fillShmPage(s.page(i), i, s.gens[i]+1)
			s.gens[i]++
			s.inflight = -1
			s.rewrites++
		}
		s.mu.Unlock()
	}
	return nil
}
