package harness

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// OpenGate holds the opens of chosen files on one mount until the test
// lets them go: a fanotify permission event (FAN_OPEN_PERM) keeps the
// opener inside open(2) until it is answered. A test so stops a process
// at a known point of its work (CRIU opening a dump's pages file, say) and
// acts on it there, with no timing: the process waits for the test, not
// the test for it.
type OpenGate struct {
	f     *os.File
	match func(path string) bool
	held  chan HeldOpen
	done  chan struct{}
	once  sync.Once
	err   error
}

// HeldOpen is an open the gate holds: Pid opens Path and waits inside
// open(2) until Release.
type HeldOpen struct {
	Pid  int
	Path string
	g    *OpenGate
	fd   int32
}

// NewOpenGate watches the mount mount is on (a tmpfs of the test's own:
// every open on it goes through the gate) and holds the opens of the
// paths match says yes to; every other open is let through at once.
// match is called for each open, in order, from one goroutine.
func NewOpenGate(mount string, match func(path string) bool) (*OpenGate, error) {
	fd, err := unix.FanotifyInit(unix.FAN_CLASS_CONTENT|unix.FAN_CLOEXEC|unix.FAN_NONBLOCK, unix.O_RDONLY|unix.O_LARGEFILE|unix.O_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("fanotify: %w", err)
	}
	if err := unix.FanotifyMark(fd, unix.FAN_MARK_ADD|unix.FAN_MARK_MOUNT, unix.FAN_OPEN_PERM, unix.AT_FDCWD, mount); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("fanotify: watch opens on the mount of %s (needs CONFIG_FANOTIFY_ACCESS_PERMISSIONS): %w", mount, err)
	}
	g := &OpenGate{f: os.NewFile(uintptr(fd), "fanotify"), match: match, held: make(chan HeldOpen, 16), done: make(chan struct{})}
	go g.serve()
	return g, nil
}

// Held is where the gate hands over the opens it holds.
func (g *OpenGate) Held() <-chan HeldOpen { return g.held }

// Done is closed when the gate stops (Close, or an error: Err).
func (g *OpenGate) Done() <-chan struct{} { return g.done }

// Err is why the gate stopped, if not Close.
func (g *OpenGate) Err() error {
	<-g.done
	return g.err
}

// Release lets the held open go on.
func (h HeldOpen) Release() { h.g.respond(h.fd) }

func (g *OpenGate) respond(fd int32) {
	var b bytes.Buffer
	binary.Write(&b, binary.NativeEndian, unix.FanotifyResponse{Fd: fd, Response: unix.FAN_ALLOW})
	g.f.Write(b.Bytes())
	unix.Close(int(fd))
}

func (g *OpenGate) serve() {
	defer close(g.done)
	buf := make([]byte, 64<<10)
	meta := int(unsafe.Sizeof(unix.FanotifyEventMetadata{}))
	for {
		n, err := g.f.Read(buf)
		if err != nil {
			if !errors.Is(err, os.ErrClosed) {
				g.err = err
			}
			return
		}
		for off := 0; off+meta <= n; {
			var ev unix.FanotifyEventMetadata
			binary.Read(bytes.NewReader(buf[off:off+meta]), binary.NativeEndian, &ev)
			if ev.Event_len < uint32(meta) {
				g.err = fmt.Errorf("fanotify: bad event length %d", ev.Event_len)
				return
			}
			off += int(ev.Event_len)
			if ev.Fd < 0 {
				continue // queue overflow: nothing to answer
			}
			path, _ := os.Readlink("/proc/self/fd/" + strconv.Itoa(int(ev.Fd)))
			if ev.Mask&unix.FAN_OPEN_PERM != 0 && g.match(path) {
				g.held <- HeldOpen{Pid: int(ev.Pid), Path: path, g: g, fd: ev.Fd}
				continue
			}
			g.respond(ev.Fd)
		}
	}
}

// Close stops the gate; the kernel lets every open it still holds go on.
func (g *OpenGate) Close() {
	g.once.Do(func() { g.f.Close() })
	<-g.done
}
