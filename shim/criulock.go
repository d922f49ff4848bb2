//go:build linux

package shim

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/containerd/log"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// CRIU's network lock (criu/netfilter.c, criu/net.c) drops every packet of
// the container's namespace but CRIU's own while it dumps, and is removed
// before CRIU exits; a CRIU killed during a dump leaves it, and the
// container cut off from its network (loopback included) while it runs
// on. With nftables (what precopy has CRIU use, criuconfig.go) it is a
// table `inet CRIU-<run id>`; with CRIU's iptables method through
// iptables-nft (Debian's iptables) it is a chain CRIU in the ip and ip6
// filter tables, jumped to first from INPUT and OUTPUT. Both are found
// and removed over netlink; an iptables-legacy lock is not looked for.
const (
	criuLockTablePrefix = "CRIU-"
	criuLockChain       = "CRIU"
)

// removeCRIUNetworkLocks removes the network locks CRIU left in the
// network namespace of process pid. Called after a dump failed, when no
// CRIU of the container runs (runc waited for it), so any lock is a dead
// CRIU's. Best effort: it logs what it cannot do.
func removeCRIUNetworkLocks(l *log.Entry, pid int) {
	removed, err := removeNetfilterLocks(pid)
	if len(removed) > 0 {
		l.WithField("locks", removed).Warn("precopy: removed the network lock a failed CRIU dump left")
	}
	if err != nil {
		l.WithError(err).Error("precopy: after a failed CRIU dump the container's network may be locked, and removing CRIU's lock failed")
	}
}

func removeNetfilterLocks(pid int) ([]string, error) {
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
	removed, err := queueCRIUTables(conn)
	if err != nil {
		return nil, err
	}
	chains, errs, err := queueCRIUChains(conn)
	if err != nil {
		return nil, err
	}
	removed = append(removed, chains...)
	if len(removed) == 0 {
		return nil, errors.Join(errs...)
	}
	if err := conn.Flush(); err != nil {
		return nil, fmt.Errorf("nftables: remove %v: %w", removed, err)
	}
	return removed, errors.Join(errs...)
}

// queueCRIUTables queues the deletion of CRIU's nftables lock tables
// (inet CRIU-<run id>) on conn and names them.
func queueCRIUTables(conn *nftables.Conn) ([]string, error) {
	tables, err := conn.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("nftables: list tables: %w", err)
	}
	var removed []string
	for _, t := range tables {
		if strings.HasPrefix(t.Name, criuLockTablePrefix) {
			conn.DelTable(t)
			removed = append(removed, "table inet "+t.Name)
		}
	}
	return removed, nil
}

// queueCRIUChains queues the deletion of CRIU's iptables lock chain in
// each filter table, and of the INPUT and OUTPUT rules that jump to it,
// on conn and names them; errs are the rules that could not be listed.
func queueCRIUChains(conn *nftables.Conn) (removed []string, errs []error, err error) {
	chains, err := conn.ListChains()
	if err != nil {
		return nil, nil, fmt.Errorf("nftables: list chains: %w", err)
	}
	for _, c := range chains {
		if c.Name != criuLockChain || c.Table.Name != "filter" {
			continue
		}
		for _, from := range chains {
			if from.Table.Name != c.Table.Name || from.Table.Family != c.Table.Family || (from.Name != "INPUT" && from.Name != "OUTPUT") {
				continue
			}
			rules, err := conn.GetRules(from.Table, from)
			if err != nil {
				errs = append(errs, fmt.Errorf("nftables: rules of %s: %w", from.Name, err))
				continue
			}
			for _, r := range rules {
				if jumpsTo(r, criuLockChain) {
					errs = append(errs, conn.DelRule(r))
				}
			}
		}
		conn.FlushChain(c)
		conn.DelChain(c)
		removed = append(removed, fmt.Sprintf("chain %s CRIU", c.Table.Name))
	}
	return removed, errs, nil
}

// jumpsTo says whether rule r jumps to chain.
func jumpsTo(r *nftables.Rule, chain string) bool {
	for _, e := range r.Exprs {
		if v, ok := e.(*expr.Verdict); ok && v.Kind == expr.VerdictJump && v.Chain == chain {
			return true
		}
	}
	return false
}
