package main

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/precopy/precopy/integration/workloads/netload/netproto"
)

// generator keeps connections to the servers open and busy.
type generator struct {
	mu    sync.Mutex
	conns []netproto.ConnStatus
	udp   netproto.UDPStatus
	unix  netproto.ConnStatus
}

// interval paces each connection: busy, but not a CPU hog on shared
// machines.
const interval = 5 * time.Millisecond

func startGenerator(n int) *generator {
	g := &generator{conns: make([]netproto.ConnStatus, n)}
	for i := range g.conns {
		g.conns[i].ID = i
		go g.runTCP(i)
	}
	go g.runUDP()
	go g.runUnix()
	return g
}

func (g *generator) snapshot() ([]netproto.ConnStatus, netproto.UDPStatus, netproto.ConnStatus) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]netproto.ConnStatus(nil), g.conns...), g.udp, g.unix
}

// update changes one connection's status under the lock.
func (g *generator) update(st *netproto.ConnStatus, f func(*netproto.ConnStatus)) {
	g.mu.Lock()
	f(st)
	g.mu.Unlock()
}

// runTCP keeps connection i busy with SET and GET of its own key, and
// dials again when the connection ends.
func (g *generator) runTCP(i int) {
	st := &g.conns[i]
	key := fmt.Sprintf("gen-%d", i)
	var n uint64
	g.keepConnected(st, "tcp", netproto.TCPAddr, func(c net.Conn, r *bufio.Reader) error {
		n++
		want := fmt.Sprintf("%x", n)
		err := roundTrip(c, r, "SET "+key+" "+want, "OK")
		if err == nil {
			err = roundTrip(c, r, "GET "+key, "VAL "+want)
			if err != nil && strings.HasPrefix(err.Error(), "answer") {
				g.update(st, func(s *netproto.ConnStatus) { s.Mismatches++ })
			}
		}
		return err
	})
}

// keepConnected keeps a connection to addr on network, counted in st:
// it dials, calls op every interval until op fails, and dials again.
func (g *generator) keepConnected(st *netproto.ConnStatus, network, addr string, op func(net.Conn, *bufio.Reader) error) {
	for {
		c, err := net.DialTimeout(network, addr, time.Second)
		if err != nil {
			g.update(st, func(s *netproto.ConnStatus) { s.LastError = err.Error() })
			time.Sleep(50 * time.Millisecond)
			continue
		}
		g.update(st, func(s *netproto.ConnStatus) { s.Dials++ })
		r := bufio.NewReader(c)
		for err == nil {
			if err = op(c, r); err == nil {
				g.update(st, func(s *netproto.ConnStatus) { s.Ops++ })
				time.Sleep(interval)
			}
		}
		c.Close()
		g.update(st, func(s *netproto.ConnStatus) { s.LastError = err.Error() })
		time.Sleep(50 * time.Millisecond)
	}
}

func roundTrip(c net.Conn, r *bufio.Reader, req, want string) error {
	if _, err := c.Write([]byte(req + "\n")); err != nil {
		return err
	}
	got, err := r.ReadString('\n')
	if err != nil {
		return err
	}
	if got = strings.TrimSuffix(got, "\n"); got != want {
		return fmt.Errorf("answer to %q: %q, want %q", req, got, want)
	}
	return nil
}

// runUDP sends an echo request every interval on one UDP socket and counts
// the answers; datagrams lost while the container is frozen or restored
// are just not answered.
func (g *generator) runUDP() {
	c, err := net.Dial("udp", netproto.UDPAddr)
	if err != nil {
		panic(err)
	}
	buf := make([]byte, 64)
	for seq := 0; ; seq++ {
		g.mu.Lock()
		g.udp.Sent++
		g.mu.Unlock()
		if _, err := fmt.Fprintf(c, "ping %d", seq); err == nil {
			c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			if n, err := c.Read(buf); err == nil && string(buf[:n]) == fmt.Sprintf("ping %d", seq) {
				g.mu.Lock()
				g.udp.Replies++
				g.mu.Unlock()
			}
		}
		time.Sleep(10 * interval)
	}
}

// runUnix keeps one unix stream connection echoing.
func (g *generator) runUnix() {
	seq := 0
	g.keepConnected(&g.unix, "unix", netproto.UnixPath, func(c net.Conn, r *bufio.Reader) error {
		seq++
		msg := fmt.Sprintf("echo %d", seq)
		return roundTrip(c, r, msg, msg)
	})
}
