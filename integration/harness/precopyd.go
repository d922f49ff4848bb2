package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/platforms"

	"github.com/precopy/precopy/plugin/contentservice"
	"github.com/precopy/precopy/plugin/memstore"
	"github.com/precopy/precopy/plugin/persist"
	"github.com/precopy/precopy/snapshotter"
)

const (
	// PrecopydBinary is precopy's memory-backed storage daemon.
	PrecopydBinary = "precopyd"
	// PrecopydSnapshotter is the name a containerd configured with
	// PrecopydConfig knows precopyd's snapshotter by.
	PrecopydSnapshotter = "precopy"
	// LocalContentPlugin is containerd's disk-backed content store, which
	// must be disabled (Options.DisabledPlugins) for containerd's
	// metadata store to take precopyd's: it takes exactly one.
	LocalContentPlugin = "io.containerd.content.v1.content"
)

// PrecopydOptions configure a precopyd.
type PrecopydOptions struct {
	// ContentLimit and SnapshotLimit are its --content-limit and
	// --snapshot-limit in bytes; 0 is no content limit, and no
	// snapshotter.
	ContentLimit, SnapshotLimit int64
	// PersistDir is its --persist-dir; empty is memory only.
	PersistDir string
}

// Precopyd is a precopyd for a private containerd: its socket, state and
// log in one temporary directory. It can be stopped and started again
// with the same state, as a restart.
type Precopyd struct {
	Dir      string
	Socket   string
	StateDir string
	LogPath  string

	bin     string
	opts    PrecopydOptions
	cmd     *exec.Cmd
	exited  chan struct{}
	logFrom int64  // where this run's log starts
	debug   string // host:port of /metrics.json
}

// StartPrecopyd starts a precopyd and waits until it serves.
func StartPrecopyd(ctx context.Context, b Binaries, o PrecopydOptions) (_ *Precopyd, retErr error) {
	bin, err := precopydPath(b)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "precopyd-")
	if err != nil {
		return nil, fmt.Errorf("start precopyd: %w", err)
	}
	p := &Precopyd{
		Dir:      dir,
		Socket:   filepath.Join(dir, "run", "precopyd.sock"),
		StateDir: filepath.Join(dir, "state"),
		LogPath:  filepath.Join(dir, "precopyd.log"),
		bin:      bin,
		opts:     o,
	}
	defer func() {
		if retErr != nil {
			p.Close()
		}
	}()
	if err := p.Start(ctx); err != nil {
		return nil, err
	}
	return p, nil
}

var (
	buildPrecopydOnce sync.Once
	buildPrecopydErr  error
)

// precopydPath is precopyd in b's directory, built there first if it is
// not (FindBinaries builds only the shim and the workload).
func precopydPath(b Binaries) (string, error) {
	path := b.Path(PrecopydBinary)
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	if os.Getenv("PRECOPY_BIN_DIR") != "" {
		return "", fmt.Errorf("PRECOPY_BIN_DIR=%s has no %s (make build puts it there)", b.Dir, PrecopydBinary)
	}
	buildPrecopydOnce.Do(func() {
		out, err := exec.Command("go", "build", "-o", b.Dir+"/", "github.com/precopy/precopy/cmd/"+PrecopydBinary).CombinedOutput()
		if err != nil {
			buildPrecopydErr = fmt.Errorf("build precopyd: %w: %s", err, out)
		}
	})
	return path, buildPrecopydErr
}

// Start starts precopyd (again) and waits until it serves.
func (p *Precopyd) Start(ctx context.Context) error {
	if p.cmd != nil {
		return errors.New("start precopyd: already running")
	}
	logf, err := os.OpenFile(p.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("start precopyd: %w", err)
	}
	defer logf.Close()
	if fi, err := logf.Stat(); err == nil {
		p.logFrom = fi.Size()
	}
	args := []string{
		"--address", p.Socket,
		"--state-dir", p.StateDir,
		"--content-limit", strconv.FormatInt(p.opts.ContentLimit, 10),
		"--snapshot-limit", strconv.FormatInt(p.opts.SnapshotLimit, 10),
		"--debug-address", "127.0.0.1:0",
		"--log-level", "debug",
	}
	if p.opts.PersistDir != "" {
		args = append(args, "--persist-dir", p.opts.PersistDir)
	}
	cmd := exec.Command(p.bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// If the test binary dies, precopyd goes with it; Close unmounts
	// what it leaves.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start precopyd: %w", err)
	}
	p.cmd, p.exited = cmd, make(chan struct{})
	go func() { cmd.Wait(); close(p.exited) }()
	if err := p.waitServing(ctx); err != nil {
		return fmt.Errorf("start precopyd: %w; its log:\n%s", err, p.Log())
	}
	return nil
}

var debugAddressRE = regexp.MustCompile(`msg="precopyd serving[^"]*".* debug_address="?([0-9.:]+)`)

// waitServing waits for the line precopyd logs once it listens, which
// also says where its metrics are.
func (p *Precopyd) waitServing(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for {
		if m := debugAddressRE.FindStringSubmatch(p.Log()); m != nil {
			p.debug = m[1]
			return nil
		}
		select {
		case <-p.exited:
			p.cmd = nil
			return errors.New("precopyd exited")
		case <-ctx.Done():
			return fmt.Errorf("precopyd not serving: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Log is what precopyd logged since it was last started.
func (p *Precopyd) Log() string {
	b, _ := os.ReadFile(p.LogPath)
	if int64(len(b)) < p.logFrom {
		return ""
	}
	return string(b[p.logFrom:])
}

// Stop stops precopyd as its service manager would (SIGTERM) and waits
// for it to exit; its state stays for Start.
func (p *Precopyd) Stop() error {
	if p.cmd == nil {
		return nil
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	var err error
	select {
	case <-p.exited:
		if !p.cmd.ProcessState.Success() {
			err = fmt.Errorf("precopyd exited with %v; its log:\n%s", p.cmd.ProcessState, p.Log())
		}
	case <-time.After(time.Minute):
		p.cmd.Process.Kill()
		<-p.exited
		err = errors.New("precopyd did not stop within a minute of SIGTERM; killed")
	}
	p.cmd = nil
	return err
}

// Close stops precopyd, unmounts whatever it left mounted (its tmpfs, if
// it was killed) and removes its directory. The persist dir, which the
// caller chose, stays.
func (p *Precopyd) Close() error {
	err := p.Stop()
	return errors.Join(err, unmountUnder(p.Dir), os.RemoveAll(p.Dir))
}

// ContainerdConfig is the part of containerd's config that makes it use
// precopyd's content store and, if it serves one, its snapshotter (as
// PrecopydSnapshotter). Disable LocalContentPlugin too.
func (p *Precopyd) ContainerdConfig() string {
	cfg := fmt.Sprintf(`
[proxy_plugins.precopy-content]
  type = "content"
  address = %q
`, p.Socket)
	if p.opts.SnapshotLimit > 0 {
		// The transfer service (`ctr image import/pull` without
		// --local) unpacks only into snapshotters listed here; the
		// list replaces its default, overlayfs alone.
		cfg += fmt.Sprintf(`
[proxy_plugins.%[1]s]
  type = "snapshot"
  address = %[2]q

[[plugins."io.containerd.transfer.v1.local".unpack_config]]
  platform = %[3]q
  snapshotter = "overlayfs"
  differ = "walking"

[[plugins."io.containerd.transfer.v1.local".unpack_config]]
  platform = %[3]q
  snapshotter = %[1]q
  differ = "walking"
`, PrecopydSnapshotter, p.Socket, platforms.DefaultString())
	}
	return cfg
}

// PrecopydMetrics is what precopyd serves at /metrics.json.
type PrecopydMetrics struct {
	Content       memstore.Metrics            `json:"content"`
	ContentWrites contentservice.WriteMetrics `json:"content_writes"`
	Snapshots     *snapshotter.Metrics        `json:"snapshots"`
	Persist       *persist.Metrics            `json:"persist"`
}

// Metrics reads precopyd's metrics.
func (p *Precopyd) Metrics(ctx context.Context) (PrecopydMetrics, error) {
	var m PrecopydMetrics
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.debug+"/metrics.json", nil)
	if err != nil {
		return m, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return m, fmt.Errorf("precopyd metrics: %w", err)
	}
	defer resp.Body.Close()
	var body bytes.Buffer
	body.ReadFrom(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return m, fmt.Errorf("precopyd metrics: %s: %s", resp.Status, body.String())
	}
	if err := json.Unmarshal(body.Bytes(), &m); err != nil {
		return m, fmt.Errorf("precopyd metrics: %w", err)
	}
	return m, nil
}
