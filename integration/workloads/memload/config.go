package main

import (
	"errors"
	"flag"
	"fmt"
	"time"
)

// defaultStatusPath is at the root of the container's filesystem, where both
// memload and the `memload query` exec'd beside it find it without flags.
const defaultStatusPath = "/status.json"

// config is the run mode's flags.
type config struct {
	mib         int
	dirtyMiBps  float64
	hot         float64
	seed        uint64
	tick        time.Duration
	statusPath  string
	statusEvery time.Duration
	// rootfsMiB is the size of a file of pseudo-random bytes written
	// into the rootfs at start (rootfsDataPath), before the memory is
	// ready: a writable layer of that size, which gzip cannot shrink,
	// for what a client's rw-layer diff and a pin of it cost.
	rootfsMiB int
}

// rootfsDataPath is where -rootfs-mib writes its file.
const rootfsDataPath = "/rootfs-data"

func parseConfig(args []string) (config, error) {
	var c config
	fs := flag.NewFlagSet("memload", flag.ContinueOnError)
	fs.IntVar(&c.mib, "mib", 64, "memory to hold, MiB")
	fs.Float64Var(&c.dirtyMiBps, "dirty-mibps", 0, "MiB per second to rewrite (0: idle)")
	fs.Float64Var(&c.hot, "hot", 0.1, "fraction of the memory that is rewritten, in (0, 1]")
	fs.Uint64Var(&c.seed, "seed", 1, "seed of the memory content")
	fs.DurationVar(&c.tick, "tick", 10*time.Millisecond, "loop period")
	fs.StringVar(&c.statusPath, "status", defaultStatusPath, "status file")
	fs.DurationVar(&c.statusEvery, "status-every", 200*time.Millisecond, "how often the status file is rewritten")
	fs.IntVar(&c.rootfsMiB, "rootfs-mib", 0, "MiB of pseudo-random bytes to write to "+rootfsDataPath+" at start (0: none)")
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("unexpected argument %q (subcommands: query, reset-gap)", fs.Arg(0))
	}
	return c, c.validate()
}

func (c config) validate() error {
	switch {
	case c.mib <= 0:
		return fmt.Errorf("-mib %d: must be positive", c.mib)
	case c.dirtyMiBps < 0:
		return fmt.Errorf("-dirty-mibps %v: must not be negative", c.dirtyMiBps)
	case !(c.hot > 0 && c.hot <= 1):
		return fmt.Errorf("-hot %v: must be in (0, 1]", c.hot)
	case c.tick <= 0:
		return fmt.Errorf("-tick %v: must be positive", c.tick)
	case c.statusEvery <= 0:
		return fmt.Errorf("-status-every %v: must be positive", c.statusEvery)
	case c.rootfsMiB < 0:
		return fmt.Errorf("-rootfs-mib %d: must not be negative", c.rootfsMiB)
	case c.statusPath == "":
		return errors.New("-status: must not be empty")
	}
	return nil
}

func (c config) String() string {
	return fmt.Sprintf("mib=%d dirty_mibps=%g hot=%g seed=%d tick=%s status=%s status_every=%s rootfs_mib=%d",
		c.mib, c.dirtyMiBps, c.hot, c.seed, c.tick, c.statusPath, c.statusEvery, c.rootfsMiB)
}
