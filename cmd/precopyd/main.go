// Command precopyd keeps precopy's checkpoint images, and with
// --snapshot-limit containers' writable layers, in memory. It serves an
// in-memory content store (plugin/memstore) over containerd's content gRPC
// API, and a snapshotter on a tmpfs it mounts (snapshotter/) over
// containerd's snapshots API, on one unix socket, for containerd to use as
// proxy plugins in place of its disk-backed ones:
//
//	disabled_plugins = ["io.containerd.content.v1.content"]
//	[proxy_plugins.precopy-content]
//	  type = "content"
//	  address = "/run/precopyd/precopyd.sock"
//	[proxy_plugins.precopy]
//	  type = "snapshot"
//	  address = "/run/precopyd/precopyd.sock"
//
// Only root can connect: the socket is created 0600, its directory 0700 if
// precopyd makes it; a state dir others can read or write is refused. Content
// is held in memory only unless --persist-dir names a directory to write
// it behind to; either way a restart logs what was lost.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/containerd/log"
)

func main() {
	var (
		cfg           config
		limit         byteSize
		snapshotLimit byteSize
		level         string
	)
	flag.StringVar(&cfg.address, "address", "/run/precopyd/precopyd.sock", "unix socket to serve containerd's content (and snapshots) API on")
	flag.StringVar(&cfg.stateDir, "state-dir", "/run/precopyd", "directory for the record of what the content store holds and the snapshotter's tmpfs and metadata; keep it on a tmpfs; created 0700 if missing, refused if another user owns it or group or others can read or write it")
	flag.Var(&limit, "content-limit", "most bytes the store holds, blobs and unfinished writes together, e.g. 512MiB or 2GiB (MiB, GiB: powers of 1024; MB, GB: powers of 1000; 0 = unlimited)")
	flag.Var(&snapshotLimit, "snapshot-limit", "serve a snapshotter on a tmpfs of this size, e.g. 1GiB (0 = no snapshotter)")
	flag.StringVar(&cfg.persistDir, "persist-dir", "", "directory to write blobs to behind the store and recover them from at start (empty = memory only: a restart loses them)")
	flag.StringVar(&cfg.debugAddress, "debug-address", "", "host:port to serve metrics (content store, content writes, snapshotter, persist dir) on as JSON at /metrics.json, and Go's profiles at /debug/pprof/ (empty = off; no authentication)")
	flag.DurationVar(&cfg.pinTTL, "pin-ttl", 2*time.Minute, "longest a container's writable layer stays pinned for an early thaw when precopy's shim does not release it")
	flag.StringVar(&level, "log-level", "info", "log level: trace, debug, info, warn, error")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "precopyd: unexpected arguments %q\n", flag.Args())
		os.Exit(2)
	}
	if err := log.SetLevel(level); err != nil {
		fmt.Fprintf(os.Stderr, "precopyd: --log-level: %v\n", err)
		os.Exit(2)
	}
	cfg.contentLimit = int64(limit)
	cfg.snapshotLimit = int64(snapshotLimit)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg); err != nil {
		log.G(ctx).WithError(err).Error("precopyd failed")
		os.Exit(1)
	}
}

// run starts the daemon and serves until ctx is done.
func run(ctx context.Context, cfg config) error {
	d, err := newDaemon(ctx, cfg)
	if err != nil {
		return err
	}
	return d.serve(ctx)
}
