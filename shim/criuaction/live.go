//go:build linux

package criuaction

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/precopy/precopy/precopy"
)

// LiveSockets counts the sockets processes pids hold open, as CRIU would
// find them at a dump, from /proc: each fd's socket inode, looked up in
// the tables of the processes' network namespace (/proc/<pid>/net/...).
// It costs a few reads of /proc, so it can be measured before a
// checkpoint, while the container runs.
func LiveSockets(pids []int) (precopy.Sockets, error) {
	var s precopy.Sockets
	if len(pids) == 0 {
		return s, nil
	}
	inodes := map[string]bool{}
	for _, pid := range pids {
		fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		if err != nil {
			continue // exited meanwhile
		}
		for _, fd := range fds {
			target, err := os.Readlink(filepath.Join(fmt.Sprintf("/proc/%d/fd", pid), fd.Name()))
			if ino, ok := strings.CutPrefix(target, "socket:["); err == nil && ok {
				inodes[strings.TrimSuffix(ino, "]")] = true
			}
		}
	}
	net := fmt.Sprintf("/proc/%d/net", pids[0])
	for _, table := range []struct {
		file string
		add  func(state string)
	}{
		{"tcp", countTCP(&s)}, {"tcp6", countTCP(&s)},
		{"udp", func(string) { s.UDP++ }}, {"udp6", func(string) { s.UDP++ }},
		{"unix", func(string) { s.Unix++ }},
	} {
		if err := scanTable(filepath.Join(net, table.file), inodes, table.add); err != nil {
			return s, err
		}
	}
	return s, nil
}

// countTCP counts a TCP row of a /proc/net table, by its state (hex),
// into s.
func countTCP(s *precopy.Sockets) func(state string) {
	return func(state string) {
		switch n, _ := strconv.ParseUint(state, 16, 8); {
		case n == 10:
			s.TCPListen++
		case connected[uint32(n)]:
			s.TCPConnections++
		}
	}
}

// scanTable calls add with the state of each row of a /proc/net table
// whose socket inode is in inodes. The tables differ in columns: the
// inode is the 10th field of tcp and udp rows (state the 4th), the 7th of
// unix rows (state the 6th).
func scanTable(path string, inodes map[string]bool, add func(state string)) error {
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil // no IPv6 in this kernel
	}
	if err != nil {
		return fmt.Errorf("count sockets: %w", err)
	}
	defer f.Close()
	inoField, stateField := 9, 3
	if filepath.Base(path) == "unix" {
		inoField, stateField = 6, 5
	}
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > inoField && inodes[fields[inoField]] {
			add(fields[stateField])
		}
	}
	return sc.Err()
}
