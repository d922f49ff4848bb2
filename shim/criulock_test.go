//go:build linux

package shim

import (
	"os"
	"os/exec"
	"slices"
	"strconv"
	"syscall"
	"testing"

	"github.com/containerd/log"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// TestRemoveNetfilterLocks builds, in a network namespace of its own, the
// locks a killed CRIU leaves (its nftables table, and its iptables chain
// as iptables-nft makes it, jumped to from INPUT and OUTPUT) beside a rule
// of the container's own, and checks that only CRIU's are removed.
func TestRemoveNetfilterLocks(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (a network namespace and nftables)")
	}
	sleep := exec.Command("sleep", "infinity")
	sleep.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	if err := sleep.Start(); err != nil {
		t.Skipf("cannot make a network namespace here: %v", err)
	}
	t.Cleanup(func() { sleep.Process.Kill(); sleep.Wait() })
	ns, err := os.Open("/proc/" + strconv.Itoa(sleep.Process.Pid) + "/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	conn, err := nftables.New(nftables.WithNetNSFd(int(ns.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	criuTable := conn.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: "CRIU-0123"})
	conn.AddChain(&nftables.Chain{Name: "input", Table: criuTable, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter})
	filter := conn.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: "filter"})
	input := conn.AddChain(&nftables.Chain{Name: "INPUT", Table: filter, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter})
	output := conn.AddChain(&nftables.Chain{Name: "OUTPUT", Table: filter, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter})
	criu := conn.AddChain(&nftables.Chain{Name: "CRIU", Table: filter})
	conn.AddRule(&nftables.Rule{Table: filter, Chain: criu, Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}}})
	for _, c := range []*nftables.Chain{input, output} {
		conn.AddRule(&nftables.Rule{Table: filter, Chain: c, Exprs: []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictJump, Chain: "CRIU"}}})
	}
	conn.AddRule(&nftables.Rule{Table: filter, Chain: input, Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}}) // the container's own
	if err := conn.Flush(); err != nil {
		t.Skipf("nftables in a new network namespace: %v", err)
	}

	removed, err := removeNetfilterLocks(sleep.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"table inet CRIU-0123", "chain filter CRIU"}; !slices.Equal(removed, want) {
		t.Errorf("removed %q, want %q", removed, want)
	}
	if tables, _ := conn.ListTablesOfFamily(nftables.TableFamilyINet); len(tables) != 0 {
		t.Errorf("inet tables left: %v", tables)
	}
	chains, err := conn.ListChains()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range chains {
		if c.Name == "CRIU" {
			t.Error("CRIU's chain left")
		}
		if c.Name == "INPUT" || c.Name == "OUTPUT" {
			rules, err := conn.GetRules(c.Table, c)
			if err != nil {
				t.Fatal(err)
			}
			want := map[string]int{"INPUT": 1, "OUTPUT": 0}[c.Name]
			if len(rules) != want || slices.ContainsFunc(rules, func(r *nftables.Rule) bool { return jumpsTo(r, "CRIU") }) {
				t.Errorf("%s holds %d rules, want %d (the container's own)", c.Name, len(rules), want)
			}
		}
	}
	// Nothing left to remove: nothing done, no error.
	if removed, err := removeNetfilterLocks(sleep.Process.Pid); err != nil || len(removed) != 0 {
		t.Errorf("second pass: removed %q, %v", removed, err)
	}
	removeCRIUNetworkLocks(log.L.WithField("test", t.Name()), 1<<30) // a gone process: logged, no panic
}
