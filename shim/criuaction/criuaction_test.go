//go:build linux

package criuaction

import (
	"bufio"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/precopy/precopy/precopy"
)

func TestUnrestorable(t *testing.T) {
	lo := []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")}
	for _, tc := range []struct {
		name  string
		local []string
		have  []net.IP
		ok    bool
	}{
		{"no connections", nil, nil, true},
		{"loopback connections, lo up", []string{"127.0.0.1", "::1"}, lo, true},
		{"127/8 is local where 127.0.0.1 is", []string{"127.0.0.5"}, lo, true},
		{"IPv4-mapped loopback", []string{"::ffff:127.0.0.1"}, lo, true},
		{"loopback connections, lo down", []string{"127.0.0.1"}, nil, false},
		{"pod address gone", []string{"127.0.0.1", "10.88.0.5"}, lo, false},
		{"pod address there", []string{"10.88.0.5"}, append(lo, net.ParseIP("10.88.0.5")), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var s ImageSockets
			for _, a := range tc.local {
				s.ConnLocal = append(s.ConnLocal, net.ParseIP(a))
			}
			why := s.Unrestorable(tc.have)
			if (why == "") != tc.ok {
				t.Errorf("Unrestorable = %q, want restorable %v", why, tc.ok)
			}
		})
	}
}

func TestImageIP(t *testing.T) {
	// 127.0.0.1 as CRIU keeps it: the __be32 read as a little-endian
	// word on x86.
	if got := imageIP([]uint32{0x0100007f}); !got.Equal(net.ParseIP("127.0.0.1")) {
		t.Errorf("imageIP = %v, want 127.0.0.1", got)
	}
	if got := imageIP([]uint32{0, 0, 0, 0x01000000}); !got.Equal(net.ParseIP("::1")) {
		t.Errorf("imageIP = %v, want ::1", got)
	}
}

func TestRestoredAddrsFreshNetns(t *testing.T) {
	ips, err := RestoredAddrs(&precopy.Loopback{Up: true}, "")
	if err != nil || len(ips) != 2 {
		t.Fatalf("lo up with no address recorded: %v, %v; want the kernel's 127.0.0.1 and ::1", ips, err)
	}
	for _, lo := range []*precopy.Loopback{nil, {}} {
		if ips, _ := RestoredAddrs(lo, ""); len(ips) != 0 {
			t.Errorf("lo %v: %v, want none", lo, ips)
		}
	}
	if _, err := RestoredAddrs(&precopy.Loopback{Up: true, Addrs: []string{"127.0.0.1"}}, ""); err == nil {
		t.Error("an address without its prefix length read without error")
	}
}

// TestRecordedLoopback: the action script reads lo from the image's
// report, and finds none in an image without one.
func TestRecordedLoopback(t *testing.T) {
	dir := t.TempDir()
	if lo, err := RecordedLoopback(dir); lo != nil || err != nil {
		t.Fatalf("no report: %v, %v; want none", lo, err)
	}
	r := &precopy.Report{}
	if err := r.Write(dir); err != nil {
		t.Fatal(err)
	}
	if lo, err := RecordedLoopback(dir); lo != nil || err != nil {
		t.Fatalf("a report without network: %v, %v; want none", lo, err)
	}
	want := precopy.Loopback{Up: true, Addrs: []string{"127.0.0.1/8", "::1/128"}}
	r.Network = &precopy.Network{TCP: "established", Loopback: &want}
	if err := r.Write(dir); err != nil {
		t.Fatal(err)
	}
	lo, err := RecordedLoopback(dir)
	if err != nil || lo == nil || lo.String() != want.String() {
		t.Fatalf("RecordedLoopback = %v, %v; want %v", lo, err, want)
	}
	os.WriteFile(filepath.Join(dir, precopy.ReportFile), []byte("{"), 0o600)
	if _, err := RecordedLoopback(dir); err == nil {
		t.Error("a corrupt report read without error")
	}
	if err := run(actionSetupNamespaces, dir, "1"); err == nil {
		t.Error("the action script ran on a corrupt report")
	}
}

// TestActionIgnoresOtherActions: CRIU runs the script for every action;
// only setup-namespaces may do anything, and that one needs CRIU's
// environment.
func TestActionIgnoresOtherActions(t *testing.T) {
	for _, a := range []string{"pre-dump", "network-lock", "post-dump", "network-unlock", "post-restore"} {
		if err := run(a, "", ""); err != nil {
			t.Errorf("%s: %v", a, err)
		}
	}
	if err := run(actionSetupNamespaces, "", ""); err == nil {
		t.Error("setup-namespaces without CRIU's environment succeeded")
	}
}

// TestLoopbackApply puts a recorded lo into a fresh network namespace, as
// the action script does for a restored container, and reads it back.
func TestLoopbackApply(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to create a network namespace")
	}
	pid := freshNetns(t)
	path := "/proc/" + pid + "/ns/net"
	got, err := ReadLoopback(path)
	if err != nil {
		t.Fatal(err)
	}
	if got.Up {
		t.Fatalf("a fresh network namespace's lo is %s, want down", got)
	}
	want := precopy.Loopback{Up: true, Addrs: []string{"127.0.0.1/8", "127.0.0.2/8", "::1/128"}}
	// As the action script does: CRIU gives it the image dir and the
	// restored task.
	dir := t.TempDir()
	if err := (&precopy.Report{Network: &precopy.Network{Loopback: &want}}).Write(dir); err != nil {
		t.Fatal(err)
	}
	if err := run(actionSetupNamespaces, dir, pid); err != nil {
		t.Fatal(err)
	}
	// Applying twice finds the addresses there.
	if err := ApplyLoopback(want, path); err != nil {
		t.Fatalf("second apply: %v", err)
	}
	got, err = ReadLoopback(path)
	if err != nil {
		t.Fatal(err)
	}
	if got.String() != want.String() {
		t.Errorf("lo after apply: %s, want %s", got, want)
	}
	if ips, err := RestoredAddrs(nil, path); err != nil || len(ips) != 3 {
		t.Errorf("addresses in the namespace: %v, %v", ips, err)
	}
}

// freshNetns makes a network namespace, held by a process of its own until
// t ends, and returns that process's pid. Not `ip netns add`, which makes
// /run/netns a shared bind mount of itself (over a CRI plugin's pod
// namespaces there), nor one of this process's threads: a locked thread
// that unshares and ends may be the main one, which Go keeps, and
// /proc/self/net would follow it.
func freshNetns(t *testing.T) string {
	t.Helper()
	holder := exec.Command("unshare", "--net", "sh", "-c", "echo made; exec sleep infinity")
	out, err := holder.StdoutPipe()
	if err == nil {
		err = holder.Start()
	}
	if err != nil {
		t.Skipf("unshare --net: %v", err)
	}
	t.Cleanup(func() { holder.Process.Kill(); holder.Wait() })
	// The shell speaks once the namespace is made.
	if _, err := bufio.NewReader(out).ReadString('\n'); err != nil {
		t.Fatalf("unshare --net: %v", err)
	}
	return strconv.Itoa(holder.Process.Pid)
}

// TestLiveSockets counts this test's own sockets as CRIU would.
func TestLiveSockets(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	a, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	u, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	x, err := net.Listen("unix", filepath.Join(t.TempDir(), "sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	s, err := LiveSockets([]int{os.Getpid()})
	if err != nil {
		t.Fatal(err)
	}
	if s.TCPListen != 1 || s.TCPConnections != 2 || s.UDP != 1 || s.Unix != 1 {
		t.Errorf("LiveSockets = %+v, want 1 listening, 2 connected TCP, 1 UDP, 1 unix", s)
	}
}
