//go:build linux

package criuaction

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/checkpoint-restore/go-criu/v7/crit"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/fdinfo"
	"golang.org/x/sys/unix"

	"github.com/precopy/precopy/precopy"
)

// ImageSockets are the sockets of a checkpoint image: counted by kind, and
// the local addresses of its TCP connections (ConnLocal), which a restore
// must have to re-create them.
type ImageSockets struct {
	precopy.Sockets
	ConnLocal []net.IP
}

// connected are the TCP states with a peer (include/net/tcp_states.h), as
// CRIU's can_dump_inet_sk counts them.
var connected = map[uint32]bool{1: true, 2: true, 4: true, 5: true, 8: true, 9: true, 11: true}

// ReadSockets reads the sockets of the image in dir, from CRIU's
// files.img (go-criu's crit decodes it).
func ReadSockets(dir string) (ImageSockets, error) {
	f, err := os.Open(filepath.Join(dir, "files.img"))
	if err != nil {
		return ImageSockets{}, fmt.Errorf("read image sockets: %w", err)
	}
	defer f.Close()
	img, err := crit.New(f, nil, "", false, true).Decode(&fdinfo.FileEntry{})
	if err != nil {
		return ImageSockets{}, fmt.Errorf("read image sockets: %s: %w", f.Name(), err)
	}
	var s ImageSockets
	for _, e := range img.Entries {
		fe, ok := e.Message.(*fdinfo.FileEntry)
		if !ok {
			continue
		}
		switch fe.GetType() {
		case fdinfo.FdTypes_UNIXSK:
			s.Unix++
		case fdinfo.FdTypes_INETSK:
			sk := fe.GetIsk()
			switch {
			case sk.GetProto() == unix.IPPROTO_UDP:
				s.UDP++
			case sk.GetProto() != unix.IPPROTO_TCP:
			case connected[sk.GetState()]:
				s.TCPConnections++
				s.ConnLocal = append(s.ConnLocal, imageIP(sk.GetSrcAddr()))
			case sk.GetState() == 10: // TCP_LISTEN
				s.TCPListen++
			}
		}
	}
	return s, nil
}

// imageIP turns an address as CRIU keeps it (the kernel's __be32 words,
// read as host-order integers) into an IP.
func imageIP(words []uint32) net.IP {
	b := make([]byte, 4*len(words))
	for i, w := range words {
		binary.NativeEndian.PutUint32(b[4*i:], w)
	}
	return net.IP(b)
}

// Unrestorable says why the image's TCP connections cannot all be
// restored into a network namespace whose addresses are have, or "" when
// they can: CRIU re-creates a connection from its local address, which
// must be one of the namespace's (127.0.0.0/8 is local wherever
// 127.0.0.1 is). CRIU restores all of them or, with tcp-close, none.
func (s ImageSockets) Unrestorable(have []net.IP) string {
	for _, ip := range s.ConnLocal {
		if v4 := ip.To4(); v4 != nil {
			ip = v4
		}
		if !hasAddr(have, ip) {
			return fmt.Sprintf("a TCP connection's local address %s is not in the restored network namespace", ip)
		}
	}
	return ""
}

func hasAddr(have []net.IP, ip net.IP) bool {
	for _, h := range have {
		if h.Equal(ip) || (ip.IsLoopback() && ip.To4() != nil && h.To4() != nil && h.IsLoopback()) {
			return true
		}
	}
	return false
}

// RestoredAddrs lists the addresses a restored container's network
// namespace will have when CRIU restores its sockets: for a namespace
// runc creates (nsPath empty), lo's as the action script puts them back
// (lo, nil: none); for one the container joins (its pod's), those it has
// now, with lo on top.
func RestoredAddrs(lo *precopy.Loopback, nsPath string) ([]net.IP, error) {
	var ips []net.IP
	if nsPath != "" {
		var err error
		if ips, err = addresses(nsPath); err != nil {
			return nil, err
		}
	}
	if lo == nil || !lo.Up {
		return ips, nil
	}
	addrs := lo.Addrs
	if len(addrs) == 0 {
		// Up with no address recorded: the kernel's own.
		addrs = []string{"127.0.0.1/8", "::1/128"}
	}
	var errs []error
	for _, a := range addrs {
		ip, _, err := net.ParseCIDR(a)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		ips = append(ips, ip)
	}
	return ips, errors.Join(errs...)
}
