package main

import (
	"net"
	"strings"

	"golang.org/x/sys/unix"
)

// setLoopbackUp sets lo's IFF_UP flag; the kernel then gives it
// 127.0.0.1/8 and ::1/128.
func setLoopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

// loopbackState describes lo: "up 127.0.0.1/8 ::1/128" or "down".
func loopbackState() string {
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		return err.Error()
	}
	state := "down"
	if lo.Flags&net.FlagUp != 0 {
		state = "up"
	}
	addrs, _ := lo.Addrs()
	parts := []string{state}
	for _, a := range addrs {
		parts = append(parts, a.String())
	}
	return strings.Join(parts, " ")
}

// socketProtocol is the protocol of l's socket (SO_PROTOCOL).
func socketProtocol(l *net.TCPListener) (int, error) {
	raw, err := l.SyscallConn()
	if err != nil {
		return 0, err
	}
	var proto int
	var serr error
	if err := raw.Control(func(fd uintptr) {
		proto, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PROTOCOL)
	}); err != nil {
		return 0, err
	}
	return proto, serr
}
