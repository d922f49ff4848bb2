package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/precopy/precopy/integration/workloads/netload/netproto"
)

// ballast is the memory -mib asks for.
var ballast []byte

// server is the key-value store and its status.
type server struct {
	mu       sync.Mutex
	store    map[string]string
	status   netproto.Status
	accepted atomic.Uint64
	gen      *generator
}

func runServer(args []string) error {
	fs := flag.NewFlagSet("netload", flag.ContinueOnError)
	conns := fs.Int("conns", 4, "TCP connections the load generator keeps busy")
	loUp := fs.Bool("lo-up", false, "bring the loopback interface up first (needs CAP_NET_ADMIN), as a CNI loopback plugin does for pods")
	mib := fs.Int("mib", 0, "MiB of memory to hold besides the store, written once (pre-copy skips containers below its minimum size)")
	mptcp := fs.Bool("mptcp", false, "also listen with MPTCP on "+netproto.MPTCPAddr+": a socket CRIU cannot dump")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	ballast = make([]byte, *mib<<20)
	for i := 0; i < len(ballast); i += 4096 {
		ballast[i] = byte(i >> 12)
	}
	if *loUp {
		if err := setLoopbackUp(); err != nil {
			return fmt.Errorf("bring lo up: %w", err)
		}
	}
	s := &server{
		store: make(map[string]string, netproto.SeedKeys),
		status: netproto.Status{
			PID:       os.Getpid(),
			StartedAt: time.Now().UTC(),
			Seed:      rand.Uint64(),
			Loopback:  loopbackState(),
		},
	}
	for i := range netproto.SeedKeys {
		s.store[netproto.SeedKey(i)] = netproto.SeedValue(s.status.Seed, i)
	}
	tcp, err := net.Listen("tcp", netproto.TCPAddr)
	if err != nil {
		return err
	}
	udp, err := net.ListenPacket("udp", netproto.UDPAddr)
	if err != nil {
		return err
	}
	os.Remove(netproto.UnixPath)
	unix, err := net.Listen("unix", netproto.UnixPath)
	if err != nil {
		return err
	}
	if *mptcp {
		if err := listenMPTCP(); err != nil {
			return err
		}
	}
	go s.serveTCP(tcp)
	go serveUDP(udp)
	go serveUnix(unix)
	s.gen = startGenerator(*conns)
	fmt.Fprintf(os.Stderr, "netload: serving on %s (tcp), %s (udp), %s; lo %s; %d connections busy\n",
		netproto.TCPAddr, netproto.UDPAddr, netproto.UnixPath, s.status.Loopback, *conns)
	select {}
}

func (s *server) serveTCP(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			time.Sleep(10 * time.Millisecond)
			continue
		}
		s.accepted.Add(1)
		go s.serveConn(c)
	}
}

// serveConn answers one connection's commands, one line each:
// SET key value → OK; GET key → VAL value | NIL; STATUS → JSON.
func (s *server) serveConn(c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	w := bufio.NewWriter(c)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		f := strings.Fields(line)
		var reply string
		switch {
		case len(f) == 3 && f[0] == "SET":
			s.mu.Lock()
			s.store[f[1]] = f[2]
			s.mu.Unlock()
			reply = "OK"
		case len(f) == 2 && f[0] == "GET":
			s.mu.Lock()
			v, ok := s.store[f[1]]
			s.mu.Unlock()
			reply = "NIL"
			if ok {
				reply = "VAL " + v
			}
		case len(f) == 1 && f[0] == "STATUS":
			st := s.status
			st.Accepted = s.accepted.Load()
			st.Conns, st.UDP, st.Unix = s.gen.snapshot()
			b, _ := json.Marshal(st)
			reply = string(b)
		default:
			reply = "ERR bad command"
		}
		if _, err := w.WriteString(reply + "\n"); err != nil {
			return
		}
		if err := w.Flush(); err != nil {
			return
		}
	}
}

func serveUDP(pc net.PacketConn) {
	buf := make([]byte, 2048)
	for {
		n, addr, err := pc.ReadFrom(buf)
		if err != nil {
			time.Sleep(10 * time.Millisecond)
			continue
		}
		pc.WriteTo(buf[:n], addr)
	}
}

// serveUnix echoes each line back on every connection.
func serveUnix(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			time.Sleep(10 * time.Millisecond)
			continue
		}
		go func() {
			defer c.Close()
			r := bufio.NewReader(c)
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					return
				}
				if _, err := c.Write([]byte(line)); err != nil {
					return
				}
			}
		}()
	}
}

// listenMPTCP keeps a listener on netproto.MPTCPAddr that is MPTCP, or
// fails: on a kernel without MPTCP, Go would quietly make it TCP.
func listenMPTCP() error {
	var lc net.ListenConfig
	lc.SetMultipathTCP(true)
	l, err := lc.Listen(context.Background(), "tcp", netproto.MPTCPAddr)
	if err != nil {
		return fmt.Errorf("MPTCP listener: %w", err)
	}
	if proto, err := socketProtocol(l.(*net.TCPListener)); err != nil || proto != unix.IPPROTO_MPTCP {
		l.Close()
		return fmt.Errorf("MPTCP listener: this kernel made it protocol %d (%v), not MPTCP", proto, err)
	}
	go func() {
		for {
			if c, err := l.Accept(); err == nil {
				c.Close()
			}
		}
	}()
	return nil
}
