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
	"time"

	"github.com/containerd/log"
	"google.golang.org/grpc"

	"github.com/precopy/precopy/plugin/contentservice"
	"github.com/precopy/precopy/plugin/memstore"
)

// config is what the flags set.
type config struct {
	address      string // unix socket path
	contentLimit int64  // bytes; 0 = unlimited
	debugAddress string // host:port for metrics as JSON; empty = off
}

// stopTimeout bounds a graceful stop: an unfinished write stream from
// containerd would otherwise hold shutdown forever.
const stopTimeout = 10 * time.Second

// daemon is precopyd set up and listening, not yet serving.
type daemon struct {
	cfg      config
	store    *memstore.Store
	grpc     *grpc.Server
	listener net.Listener
	debug    *http.Server // nil if off
	debugL   net.Listener
}

// newDaemon creates the store and listens on the socket (and the debug
// address); serve then serves them.
func newDaemon(ctx context.Context, cfg config) (_ *daemon, retErr error) {
	store, err := memstore.New(memstore.WithLimit(cfg.contentLimit))
	if err != nil {
		return nil, err
	}
	d := &daemon{cfg: cfg, store: store, grpc: contentservice.NewServer(store)}
	if d.listener, err = listenUnix(cfg.address); err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			d.listener.Close()
		}
	}()
	if cfg.debugAddress != "" {
		if d.debugL, err = net.Listen("tcp", cfg.debugAddress); err != nil {
			return nil, fmt.Errorf("debug address: %w", err)
		}
		d.debug = &http.Server{Handler: metricsHandler(store), ReadHeaderTimeout: 10 * time.Second}
	}
	return d, nil
}

// serve serves until ctx is done, then stops and removes the socket.
func (d *daemon) serve(ctx context.Context) error {
	defer os.Remove(d.cfg.address) // normally gone already with the listener
	served := make(chan error, 1)
	go func() { served <- d.grpc.Serve(d.listener) }()
	fields := log.Fields{"address": d.cfg.address, "content_limit": d.cfg.contentLimit}
	if d.debug != nil {
		fields["debug_address"] = d.debugL.Addr().String()
		go func() {
			if err := d.debug.Serve(d.debugL); !errors.Is(err, http.ErrServerClosed) {
				log.G(ctx).WithError(err).Error("debug server failed")
			}
		}()
		defer d.debug.Close()
	}
	log.G(ctx).WithFields(fields).Info("precopyd serving containerd's content API")

	select {
	case err := <-served:
		return fmt.Errorf("serve %s: %w", d.cfg.address, err)
	case <-ctx.Done():
	}
	log.G(ctx).Info("precopyd stopping")
	stopped := make(chan struct{})
	go func() { d.grpc.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(stopTimeout):
		log.G(ctx).Warnf("calls still running after %s; cutting them off", stopTimeout)
		d.grpc.Stop()
	}
	return <-served
}

// listenUnix listens on a unix socket only root can use: it creates the
// socket's directory 0700 if missing, replaces a stale socket left by a
// dead daemon, and makes the socket 0600.
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
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	// Until this chmod the socket has the umask's mode; under the usual
	// 022 that is 0755, which lets no one else connect either (connecting
	// needs write permission).
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
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
