// Command precopyd keeps precopy's checkpoint images in memory. It serves
// an in-memory content store (plugin/memstore) over containerd's content
// gRPC API on a unix socket, for containerd to use as a "content" proxy
// plugin in place of its disk-backed store:
//
//	disabled_plugins = ["io.containerd.content.v1.content"]
//	[proxy_plugins.precopy]
//	  type = "content"
//	  address = "/run/precopyd/precopyd.sock"
//
// Only root can connect: the socket is 0600, its directory 0700.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/containerd/log"
)

func main() {
	var (
		cfg   config
		limit byteSize
		level string
	)
	flag.StringVar(&cfg.address, "address", "/run/precopyd/precopyd.sock", "unix socket to serve containerd's content API on")
	flag.Var(&limit, "content-limit", "most bytes the store holds, blobs and unfinished writes together, e.g. 512MiB or 2GiB (binary units; 0 = unlimited)")
	flag.StringVar(&cfg.debugAddress, "debug-address", "", "host:port to serve the store's metrics on as JSON at /metrics.json (empty = off; no authentication)")
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
