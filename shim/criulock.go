//go:build linux

package shim

import (
	"fmt"
	"os"
	"strings"

	"github.com/containerd/log"
	"github.com/google/nftables"
)

// criuLockPrefix names the nftables tables of CRIU's network lock: `inet
// CRIU-<run id>` (criu/netfilter.c), which drop every packet of the
// namespace but CRIU's own while it dumps. precopy has CRIU lock with
// nftables (criuconfig.go).
const criuLockPrefix = "CRIU-"

// removeCRIUNetworkLocks deletes the network locks CRIU left in the
// network namespace of process pid. CRIU removes its lock before it
// exits; a CRIU killed during a dump leaves it, and the container cut off
// from its network (loopback included) while it runs on. Called after a
// dump failed, when no CRIU of the container runs (runc waited for it), so
// any such table is a dead CRIU's. Best effort: it logs what it cannot do.
// CRIU's iptables lock (a CRIU chain, where nftables is not used) is not
// looked for.
func removeCRIUNetworkLocks(l *log.Entry, pid int) {
	removed, err := removeNFTablesLocks(pid)
	if len(removed) > 0 {
		l.WithField("tables", removed).Warn("precopy: removed the network lock a failed CRIU dump left")
	}
	if err != nil {
		l.WithError(err).Error("precopy: after a failed CRIU dump the container's network may be locked, and removing CRIU's lock failed")
	}
}

func removeNFTablesLocks(pid int) ([]string, error) {
	ns, err := os.Open(fmt.Sprintf("/proc/%d/ns/net", pid))
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	// In the container's namespace through a netlink socket made there:
	// no exec (and no reaper race), no setns of this process.
	conn, err := nftables.New(nftables.WithNetNSFd(int(ns.Fd())))
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	defer conn.CloseLasting()
	tables, err := conn.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("nftables: list tables: %w", err)
	}
	var removed []string
	for _, t := range tables {
		if strings.HasPrefix(t.Name, criuLockPrefix) {
			conn.DelTable(t)
			removed = append(removed, t.Name)
		}
	}
	if len(removed) == 0 {
		return nil, nil
	}
	if err := conn.Flush(); err != nil {
		return nil, fmt.Errorf("nftables: delete %v: %w", removed, err)
	}
	return removed, nil
}
