package harness

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/containerd/api/services/tasks/v1"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
)

// Options configure a private containerd.
type Options struct {
	// ShimDirs go before the inherited PATH of containerd, in this order:
	// containerd resolves a runtime name such as io.containerd.runc.v2 to
	// a binary (containerd-shim-runc-v2) on its PATH.
	ShimDirs []string
	// Namespace for the tests' containers; also names their cgroups and
	// runc state, so it must be unique on the machine.
	Namespace string
	// ExtraConfig is appended to containerd's config.toml.
	ExtraConfig string
	// Env is added to containerd's environment, which its shims, runc and
	// CRIU inherit (see CRIUEnv).
	Env []string
	// DisabledPlugins are disabled besides those every test daemon
	// disables, e.g. the local content store for precopyd's.
	DisabledPlugins []string
	// CRI, when set, turns containerd's CRI plugin on (cri.go); without
	// it the CRI plugins stay off.
	CRI *CRIOptions
	// StateTmpfs and TempTmpfs, when not 0, are the sizes in bytes of a
	// tmpfs of its own mounted as containerd's state dir (bundles, and
	// precopy's rounds in them) and as its temp dir (where a checkpoint's
	// image is written before it is stored): a filesystem that fills up
	// at a size the test chooses.
	StateTmpfs, TempTmpfs int64
}

// Daemon is a private containerd: its root, state, sockets, config and log
// all live in one temporary directory, so it neither sees nor disturbs any
// other containerd on the machine.
type Daemon struct {
	Dir       string
	Address   string
	Namespace string
	LogPath   string

	cmd    *exec.Cmd
	exited chan struct{}
	client *containerd.Client
	cri    *CRIOptions
	// config and env are what containerd was started with, for Restart.
	config string
	env    []string
}

// disabledPlugins are plugins a private test daemon must not load: CRI
// needs its own set-up, and NRI listens on a machine-wide socket.
var disabledPlugins = []string{
	"io.containerd.grpc.v1.cri",
	"io.containerd.cri.v1.runtime",
	"io.containerd.cri.v1.images",
	"io.containerd.nri.v1.nri",
}

// StartDaemon starts a private containerd and waits until it serves.
func StartDaemon(ctx context.Context, o Options) (_ *Daemon, retErr error) {
	keepInheritedFiles()
	if o.Namespace == "" {
		return nil, errors.New("start containerd: no namespace given")
	}
	// "" (unset) is os.TempDir().
	dir, err := os.MkdirTemp(os.Getenv(ContainerdDirEnv), "precopy-ctrd-")
	if err != nil {
		return nil, fmt.Errorf("start containerd: %w", err)
	}
	d := &Daemon{
		Dir:       dir,
		Address:   filepath.Join(dir, "containerd.sock"),
		Namespace: o.Namespace,
		LogPath:   filepath.Join(dir, "containerd.log"),
		cri:       o.CRI,
	}
	defer func() {
		if retErr != nil {
			d.Close()
		}
	}()
	if err := d.writeCNIConfig(); err != nil {
		return nil, fmt.Errorf("start containerd: %w", err)
	}
	d.config = filepath.Join(dir, "config.toml")
	if err := os.WriteFile(d.config, []byte(d.configText(d.criConfig()+o.ExtraConfig, o.DisabledPlugins)), 0o600); err != nil {
		return nil, fmt.Errorf("start containerd: %w", err)
	}
	for _, m := range []struct {
		dir  string
		size int64
	}{{"state", o.StateTmpfs}, {"tmp", o.TempTmpfs}} {
		if m.size == 0 {
			continue
		}
		path := filepath.Join(dir, m.dir)
		if err := os.Mkdir(path, 0o700); err != nil {
			return nil, fmt.Errorf("start containerd: %w", err)
		}
		if err := syscall.Mount("tmpfs", path, "tmpfs", 0, fmt.Sprintf("size=%d,mode=0700", m.size)); err != nil {
			return nil, fmt.Errorf("start containerd: tmpfs for its %s dir: %w", m.dir, err)
		}
	}
	d.env = append(os.Environ(), "PATH="+strings.Join(append(o.ShimDirs, os.Getenv("PATH")), ":"))
	d.env = append(d.env, o.Env...)
	if err := d.start(ctx); err != nil {
		return nil, err
	}
	if os.Getenv(ContainerdDirEnv) != "" {
		// Said where a test's or benchmark's log shows it: the figures
		// depend on it (the VM tier's scratch disk, run.sh).
		fmt.Fprintf(os.Stderr, "harness: %s=%s: %s\n", ContainerdDirEnv, os.Getenv(ContainerdDirEnv), d.DescribeDirMounts())
	}
	return d, nil
}

// start starts containerd and waits until it serves.
func (d *Daemon) start(ctx context.Context) error {
	logf, err := os.OpenFile(d.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("start containerd: %w", err)
	}
	defer logf.Close()
	d.cmd = exec.Command("containerd", "--config", d.config, "--log-level", "debug")
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	d.cmd.Env = d.env
	// If the test binary dies, containerd goes with it; the shims it
	// started are found by their -address argument in Close.
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := d.cmd.Start(); err != nil {
		return fmt.Errorf("start containerd: %w", err)
	}
	exited := make(chan struct{})
	d.exited = exited
	cmd := d.cmd
	go func() { cmd.Wait(); close(exited) }()

	if err := d.waitServing(ctx); err != nil {
		return fmt.Errorf("start containerd: %w; its log: %s", err, d.LogTail(20))
	}
	return nil
}

// Restart stops containerd as its service manager would (SIGTERM) and
// starts it again with the same config; its shims, and the containers
// they serve, run on meanwhile, as they do on a real host. Clients made
// before (Client's) are closed: use Client again.
func (d *Daemon) Restart(ctx context.Context) error {
	if d.client != nil {
		d.client.Close()
		d.client = nil
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(time.Minute):
		d.cmd.Process.Kill()
		<-d.exited
	}
	return d.start(ctx)
}

func (d *Daemon) configText(extra string, disabled []string) string {
	var quoted []string
	for _, p := range slices.Concat(d.pluginsToDisable(), disabled) {
		quoted = append(quoted, fmt.Sprintf("%q", p))
	}
	return fmt.Sprintf(`version = 3
root = %q
state = %q
temp = %q
imports = []
disabled_plugins = [%s]

[grpc]
  address = %q

[ttrpc]
  address = %q

[debug]
  address = %q

[plugins."io.containerd.internal.v1.opt"]
  path = %q
%s
`, filepath.Join(d.Dir, "root"), d.StateDir(), d.TempDir(),
		strings.Join(quoted, ", "), d.Address, d.Address+".ttrpc", filepath.Join(d.Dir, "debug.sock"),
		filepath.Join(d.Dir, "opt"), extra)
}

func (d *Daemon) waitServing(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for {
		select {
		case <-d.exited:
			return fmt.Errorf("containerd exited: %v", d.cmd.ProcessState)
		case <-ctx.Done():
			return fmt.Errorf("containerd not serving: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
		if _, err := os.Stat(d.Address); err != nil {
			continue
		}
		c, err := containerd.New(d.Address, containerd.WithDefaultNamespace(d.Namespace))
		if err != nil {
			continue
		}
		if ok, _ := c.IsServing(ctx); ok {
			d.client = c
			return nil
		}
		c.Close()
	}
}

// Client is a client of this containerd, in the daemon's namespace.
func (d *Daemon) Client() *containerd.Client { return d.client }

// Context returns ctx in the daemon's namespace.
func (d *Daemon) Context(ctx context.Context) context.Context {
	return namespaces.WithNamespace(ctx, d.Namespace)
}

// Ctr runs ctr against this containerd in its namespace and returns its
// standard output; a failure's error holds both outputs.
func (d *Daemon) Ctr(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "ctr", append([]string{"--address", d.Address, "--namespace", d.Namespace}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("ctr %s: %w: %s%s", strings.Join(args, " "), err, out, bytes.TrimSpace(stderr.Bytes()))
	}
	return string(out), nil
}

// RootfsPath is where the shim mounts container id's root filesystem,
// in containerd's state dir.
func (d *Daemon) RootfsPath(id string) string {
	return filepath.Join(d.StateDir(), "io.containerd.runtime.v2.task", d.Namespace, id, "rootfs")
}

// LogTail returns the last n lines of containerd's log.
func (d *Daemon) LogTail(n int) string {
	b, _ := os.ReadFile(d.LogPath)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Close removes everything the daemon and its tests made: tasks and
// containers, containerd, any shim left behind, mounts, cgroups, runc state
// and the temporary directory. It carries on past failures and returns them
// all.
func (d *Daemon) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var errs []error
	if d.cri != nil {
		errs = append(errs, d.removeCRIPods(ctx))
	}
	if d.client != nil {
		if list, err := d.client.Containers(d.Context(ctx)); err != nil {
			errs = append(errs, fmt.Errorf("list containers: %w", err))
		} else {
			errs = append(errs, removeContainers(d.Context(ctx), d.client, list...))
		}
		d.client.Close()
	}
	if d.cmd != nil && d.cmd.Process != nil {
		d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.exited:
		case <-time.After(10 * time.Second):
			d.cmd.Process.Kill()
			<-d.exited
		}
	}
	errs = append(errs,
		// Shims carry the socket, runc and CRIU the state and image
		// directories, in their command lines.
		killProcessesMentioning(d.Dir),
		unmountUnder(d.Dir),
		removeNamespaceCgroups(d.Namespace),
		os.RemoveAll(filepath.Join("/run/containerd/runc", d.Namespace)),
		os.RemoveAll(d.Dir),
	)
	return errors.Join(errs...)
}

// removeContainers kills and deletes containers with their tasks. A
// paused task is thawed first, so the kill lands.
func removeContainers(ctx context.Context, c *containerd.Client, list ...containerd.Container) error {
	var errs []error
	for _, ctr := range list {
		if task, err := ctr.Task(ctx, nil); err == nil {
			if st, err := task.Status(ctx); err == nil && st.Status == containerd.Paused {
				task.Resume(ctx)
			}
			fifos := taskFIFOs(ctx, c, ctr.ID())
			if _, err := task.Delete(ctx, containerd.WithProcessKill); err != nil {
				errs = append(errs, fmt.Errorf("delete task %s: %w", ctr.ID(), err))
			} else {
				errs = append(errs, removeFIFOs(fifos))
			}
		}
		if err := ctr.Delete(ctx, containerd.WithSnapshotCleanup); err != nil {
			errs = append(errs, fmt.Errorf("delete container %s: %w", ctr.ID(), err))
		}
	}
	return errors.Join(errs...)
}

// taskFIFOs are the stdio FIFOs of container id's task. A task loaded
// without its IO (as removal loads it) does not remove them on delete, and
// the clients (ctr, containerd's Go client) make them under the machine-wide
// /run/containerd/fifo.
func taskFIFOs(ctx context.Context, c *containerd.Client, id string) []string {
	resp, err := c.TaskService().Get(ctx, &tasks.GetRequest{ContainerID: id})
	if err != nil || resp.Process == nil {
		return nil
	}
	var fifos []string
	for _, p := range []string{resp.Process.Stdin, resp.Process.Stdout, resp.Process.Stderr} {
		if p != "" && !strings.Contains(p, "://") { // not a log URI
			fifos = append(fifos, p)
		}
	}
	return fifos
}

// removeFIFOs removes fifos and their directory once it is empty: each
// FIFO set has a directory of its own.
func removeFIFOs(fifos []string) error {
	var errs []error
	dirs := map[string]bool{}
	for _, f := range fifos {
		if err := os.Remove(f); err != nil && !os.IsNotExist(err) {
			errs = append(errs, err)
		}
		dirs[filepath.Dir(f)] = true
	}
	for dir := range dirs {
		if err := os.Remove(dir); err != nil && !os.IsNotExist(err) && !errors.Is(err, syscall.ENOTEMPTY) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// RemoveContainer kills and deletes container id, its task, snapshot and
// stdio FIFOs, if it is still there.
func (d *Daemon) RemoveContainer(ctx context.Context, id string) error {
	ctr, err := d.client.LoadContainer(ctx, id)
	if errdefs.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("load container %s: %w", id, err)
	}
	return removeContainers(ctx, d.client, ctr)
}

// killProcessesMentioning kills every process whose command line mentions
// s.
func killProcessesMentioning(s string) error {
	pids, err := filepath.Glob("/proc/[0-9]*/cmdline")
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range pids {
		b, err := os.ReadFile(p)
		if err != nil || !bytes.Contains(b, []byte(s)) {
			continue
		}
		var pid int
		fmt.Sscanf(p, "/proc/%d/cmdline", &pid)
		if pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, fmt.Errorf("kill %d: %w", pid, err))
		}
	}
	return errors.Join(errs...)
}

// unmountUnder detaches every mount below dir, deepest first.
func unmountUnder(dir string) error {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	defer f.Close()
	var points []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) > 4 && (fields[4] == dir || strings.HasPrefix(fields[4], dir+"/")) {
			points = append(points, fields[4])
		}
	}
	var errs []error
	for i := len(points) - 1; i >= 0; i-- {
		if err := syscall.Unmount(points[i], syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", points[i], err))
		}
	}
	return errors.Join(errs...)
}

// removeNamespaceCgroups removes the cgroups containerd's default spec put
// the namespace's containers in, /<namespace>/<id> in every hierarchy, v1
// or v2, after thawing and killing whatever a failed test left in them.
func removeNamespaceCgroups(ns string) error {
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", ns))
	more, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup/*", ns))
	var errs []error
	for _, dir := range append(dirs, more...) {
		var sub []string
		filepath.WalkDir(dir, func(p string, e os.DirEntry, err error) error {
			if err == nil && e.IsDir() {
				sub = append(sub, p)
			}
			return nil
		})
		for _, cg := range sub {
			emptyCgroup(cg)
		}
		for i := len(sub) - 1; i >= 0; i-- {
			if err := rmdirRetry(sub[i]); err != nil {
				errs = append(errs, fmt.Errorf("remove cgroup %s: %w", sub[i], err))
			}
		}
	}
	return errors.Join(errs...)
}

// emptyCgroup thaws cgroup dir (a frozen process cannot die) and kills its
// processes.
func emptyCgroup(dir string) {
	os.WriteFile(filepath.Join(dir, "freezer.state"), []byte("THAWED"), 0)
	os.WriteFile(filepath.Join(dir, "cgroup.freeze"), []byte("0"), 0)
	b, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	for _, f := range strings.Fields(string(b)) {
		var pid int
		if _, err := fmt.Sscan(f, &pid); err == nil && pid != os.Getpid() {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// rmdirRetry removes a cgroup, giving killed processes a moment to go.
func rmdirRetry(dir string) error {
	for i := 0; ; i++ {
		err := syscall.Rmdir(dir)
		if err == nil || errors.Is(err, syscall.ENOENT) {
			return nil
		}
		if !errors.Is(err, syscall.EBUSY) || i == 50 {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}
