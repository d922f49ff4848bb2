package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"

	"github.com/precopy/precopy/plugin/contentservice"
	"github.com/precopy/precopy/snapshotter"
	"github.com/precopy/precopy/snapshotter/pinservice"
)

// config is what the flags set.
type config struct {
	address       string        // unix socket path
	stateDir      string        // the content inventory and the snapshotter's root
	contentLimit  int64         // bytes; 0 = unlimited
	snapshotLimit int64         // bytes; 0 = no snapshotter
	persistDir    string        // blobs written behind to disk; empty = memory only
	debugAddress  string        // host:port for metrics as JSON; empty = off
	pinTTL        time.Duration // longest a writable layer stays pinned
}

// stopTimeout bounds a graceful stop: an unfinished write stream from
// containerd would otherwise hold shutdown forever.
const stopTimeout = 10 * time.Second

// snapshotterDir, in the state dir, is the snapshotter's root.
const snapshotterDir = "snapshotter"

// daemon is precopyd set up and listening, not yet serving.
type daemon struct {
	cfg        config
	content    *contentStore
	contentAPI *contentservice.Service
	snapshots  *snapshotter.Snapshotter // nil if off
	grpc       *grpc.Server
	listener   net.Listener
	debug      *http.Server // nil if off
	debugL     net.Listener
}

// newDaemon claims the socket, sets up the content store (recovering what
// the persist dir holds) and the snapshotter (mounting its tmpfs), and
// listens; serve then serves. On error it has undone all of it.
func newDaemon(ctx context.Context, cfg config) (_ *daemon, retErr error) {
	d := &daemon{cfg: cfg}
	var err error
	// First, so that a second precopyd on the same socket stops here,
	// before touching the first one's state.
	if d.listener, err = listenUnix(cfg.address); err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			d.listener.Close()
			d.closeStores(ctx)
		}
	}()
	if err := privateDir(cfg.stateDir); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	if d.content, err = openContent(ctx, cfg); err != nil {
		return nil, err
	}
	if cfg.snapshotLimit > 0 {
		if d.snapshots, err = snapshotter.New(ctx, filepath.Join(cfg.stateDir, snapshotterDir), cfg.snapshotLimit); err != nil {
			return nil, err
		}
	}
	d.grpc = grpc.NewServer(contentservice.ServerOptions()...)
	d.contentAPI = contentservice.Register(d.grpc, d.content.store)
	if d.snapshots != nil {
		snapshotsapi.RegisterSnapshotsServer(d.grpc, snapshotservice.FromSnapshotter(d.snapshots))
		pinservice.Register(d.grpc, d.snapshots, cfg.pinTTL)
	}
	if cfg.debugAddress != "" {
		if d.debugL, err = net.Listen("tcp", cfg.debugAddress); err != nil {
			return nil, fmt.Errorf("debug address: %w", err)
		}
		d.debug = &http.Server{Handler: metricsHandler(d), ReadHeaderTimeout: 10 * time.Second}
	}
	return d, nil
}

// serve serves until ctx is done, then stops, unmounts the snapshotter's
// tmpfs, writes what the persist dir is owed, and removes the socket.
func (d *daemon) serve(ctx context.Context) error {
	defer os.Remove(d.cfg.address) // normally gone already with the listener
	served := make(chan error, 1)
	go func() { served <- d.grpc.Serve(d.listener) }()
	fields := log.Fields{"address": d.cfg.address, "content_limit": d.cfg.contentLimit, "state_dir": d.cfg.stateDir}
	apis := "content"
	if d.snapshots != nil {
		fields["snapshot_limit"] = d.cfg.snapshotLimit
		apis = "content and snapshots"
	}
	if d.cfg.persistDir != "" {
		fields["persist_dir"] = d.cfg.persistDir
	}
	if d.debug != nil {
		fields["debug_address"] = d.debugL.Addr().String()
		go func() {
			if err := d.debug.Serve(d.debugL); !errors.Is(err, http.ErrServerClosed) {
				log.G(ctx).WithError(err).Error("debug server failed")
			}
		}()
		defer d.debug.Close()
	}
	log.G(ctx).WithFields(fields).Infof("precopyd serving containerd's %s API", apis)

	var err error
	select {
	case err = <-served:
		err = fmt.Errorf("serve %s: %w", d.cfg.address, err)
	case <-ctx.Done():
		log.G(ctx).Info("precopyd stopping")
		stopped := make(chan struct{})
		go func() { d.grpc.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(stopTimeout):
			log.G(ctx).Warnf("calls still running after %s; cutting them off", stopTimeout)
			d.grpc.Stop()
		}
		err = <-served
	}
	return errors.Join(err, d.closeStores(ctx))
}

// closeStores closes what newDaemon opened, whatever of it there is.
func (d *daemon) closeStores(ctx context.Context) error {
	var errs []error
	if d.snapshots != nil {
		errs = append(errs, d.snapshots.Close())
	}
	if d.content != nil {
		errs = append(errs, d.content.close(ctx))
	}
	return errors.Join(errs...)
}

// listenUnix listens on a unix socket only root can use: it creates the
// socket's directory 0700 if missing, replaces a stale socket left by a
// dead daemon, and creates the socket 0600.
func listenUnix(path string) (net.Listener, error) {
	dir := filepath.Dir(path)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, err
		}
		// Whatever the umask. An existing directory is left as it is:
		// it may be shared, such as /run or /tmp.
		if err := os.Chmod(dir, 0o700); err != nil {
			return nil, err
		}
	}
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}
	// bind(2) creates the socket with 0777 less the umask, so it is
	// created 0600 under a umask that clears the rest: it is never
	// reachable with a wider mode, as it would be between a bind under
	// the usual umask and a chmod. The umask is the process's; precopyd
	// listens before it starts anything else that creates files.
	old := unix.Umask(0o177)
	l, err := net.Listen("unix", path)
	unix.Umask(old)
	return l, err
}

// privateDir makes sure dir exists, belongs to this process's user and is
// neither readable nor writable by anyone else, creating it 0700 if it is
// missing. precopyd keeps there what containerd trusts it with (the
// record of its content, the snapshotter's layers and metadata): a dir
// others can read or write would let them read or change that.
func privateDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	owner := int(fi.Sys().(*syscall.Stat_t).Uid)
	if perm := fi.Mode().Perm(); perm&0o066 != 0 || owner != os.Geteuid() {
		return fmt.Errorf("%s is %v, owned by uid %d: others could read or change what precopyd keeps there; make it owned by uid %d and private (chmod 700 %s)",
			dir, perm, owner, os.Geteuid(), dir)
	}
	return nil
}

// removeStaleSocket removes a socket no one serves on. It refuses to remove
// anything else, or a socket still in use.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%s exists and is not a socket; not removing it", path)
	}
	if conn, err := net.DialTimeout("unix", path, time.Second); err == nil {
		conn.Close()
		return fmt.Errorf("%s is in use: is another precopyd running?", path)
	}
	return os.Remove(path)
}
