//go:build linux

package criuaction

import (
	"errors"
	"fmt"
	"net"
	"slices"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/precopy/precopy/precopy"
)

// netnsHandle opens a netlink handle inside the network namespace at
// path (/proc/<pid>/ns/net): netlink sockets belong to the namespace they
// are created in, so nothing else has to enter it.
func netnsHandle(path string) (*netlink.Handle, error) {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("open network namespace %s: %w", path, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("netlink in network namespace %s: %w", path, err)
	}
	return h, nil
}

// ReadLoopback reads lo's state in the network namespace at nsPath.
func ReadLoopback(nsPath string) (precopy.Loopback, error) {
	h, err := netnsHandle(nsPath)
	if err != nil {
		return precopy.Loopback{}, err
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return precopy.Loopback{}, fmt.Errorf("lo in %s: %w", nsPath, err)
	}
	l := precopy.Loopback{Up: lo.Attrs().Flags&net.FlagUp != 0}
	addrs, err := h.AddrList(lo, netlink.FAMILY_ALL)
	if err != nil {
		return precopy.Loopback{}, fmt.Errorf("lo's addresses in %s: %w", nsPath, err)
	}
	for _, a := range addrs {
		l.Addrs = append(l.Addrs, a.IPNet.String())
	}
	return l, nil
}

// ApplyLoopback brings lo in the network namespace at nsPath to l: up,
// with each of l's addresses. Setting lo up gives it 127.0.0.1/8 and ::1/128; any
// other address l has is added. It never takes lo down or removes an
// address (a namespace that already has them, such as a pod's, keeps
// them).
func ApplyLoopback(l precopy.Loopback, nsPath string) error {
	if !l.Up {
		return nil
	}
	h, err := netnsHandle(nsPath)
	if err != nil {
		return err
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("lo in %s: %w", nsPath, err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("set lo up in %s: %w", nsPath, err)
	}
	have, err := h.AddrList(lo, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("lo's addresses in %s: %w", nsPath, err)
	}
	var errs []error
	for _, a := range l.Addrs {
		if slices.ContainsFunc(have, func(h netlink.Addr) bool { return h.IPNet.String() == a }) {
			continue
		}
		addr, err := netlink.ParseAddr(a)
		if err == nil {
			// As `ip addr add` does: no broadcast address, which
			// netlink would make up for IPv4, and host scope for a
			// loopback address, which the kernel insists on.
			addr.Broadcast = net.IPv4zero
			if addr.IP.IsLoopback() {
				addr.Scope = unix.RT_SCOPE_HOST
			}
			err = h.AddrAdd(lo, addr)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("add %s to lo in %s: %w", a, nsPath, err))
		}
	}
	return errors.Join(errs...)
}

// addresses lists every address of every link in the network namespace
// at nsPath.
func addresses(nsPath string) ([]net.IP, error) {
	h, err := netnsHandle(nsPath)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	addrs, err := h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("addresses in %s: %w", nsPath, err)
	}
	var ips []net.IP
	for _, a := range addrs {
		ips = append(ips, a.IP)
	}
	return ips, nil
}
