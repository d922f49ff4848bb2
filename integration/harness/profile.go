package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Where a content write's time goes, across the processes that make it:
// containerd and precopyd both serve Go's profiles (containerd on its debug
// socket, precopyd on its debug address) and their CPU time can be read.

// Pid is containerd's process id.
func (d *Daemon) Pid() int { return d.cmd.Process.Pid }

// Pid is precopyd's process id, 0 while it is stopped.
func (p *Precopyd) Pid() int {
	if p.cmd == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// DebugGet fetches path (e.g. /debug/pprof/profile?seconds=5) from
// containerd's debug socket.
func (d *Daemon) DebugGet(ctx context.Context, path string) ([]byte, error) {
	sock := filepath.Join(d.Dir, "debug.sock") // the config's [debug] address
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	return debugGet(ctx, c, "http://containerd"+path)
}

// DebugGet fetches path (e.g. /debug/pprof/profile?seconds=5) from
// precopyd's debug address.
func (p *Precopyd) DebugGet(ctx context.Context, path string) ([]byte, error) {
	return debugGet(ctx, http.DefaultClient, "http://"+p.debug+path)
}

func debugGet(ctx context.Context, c *http.Client, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s: %s", url, resp.Status, b)
	}
	return b, nil
}

// userHZ is the unit of /proc/<pid>/stat's CPU times: USER_HZ, 100 on
// every Linux architecture Go supports.
const userHZ = 100

// CPUTime is the CPU time, user and system, all threads, that process pid
// has used so far (10 ms resolution).
func CPUTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name, in parentheses, may hold spaces: fields count
	// from its closing one. utime and stime are fields 14 and 15.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, errors.New("/proc/pid/stat: no command name")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	var ticks int64
	for _, s := range f[11:13] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / userHZ, nil
}
