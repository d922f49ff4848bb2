package harness

import (
	"fmt"
	"os"
	"strings"

	"github.com/google/nftables"
)

// CRIUNetworkLocks lists the network locks CRIU made in the network
// namespace of process pid: its nftables tables (`inet CRIU-<run id>`),
// and its iptables chains as iptables-nft makes them (a chain CRIU in a
// filter table). CRIU adds one while it dumps, dropping every packet but
// its own, and removes it before it exits; a CRIU killed in between
// leaves it, and the namespace cut off.
func CRIUNetworkLocks(pid int) ([]string, error) {
	ns, err := os.Open(fmt.Sprintf("/proc/%d/ns/net", pid))
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	conn, err := nftables.New(nftables.WithNetNSFd(int(ns.Fd())))
	if err != nil {
		return nil, fmt.Errorf("nftables in the network namespace of %d: %w", pid, err)
	}
	defer conn.CloseLasting()
	tables, err := conn.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("nftables tables of the network namespace of %d: %w", pid, err)
	}
	var locks []string
	for _, t := range tables {
		if strings.HasPrefix(t.Name, "CRIU-") {
			locks = append(locks, "table inet "+t.Name)
		}
	}
	chains, err := conn.ListChains()
	if err != nil {
		return nil, fmt.Errorf("nftables chains of the network namespace of %d: %w", pid, err)
	}
	for _, c := range chains {
		if c.Name == "CRIU" {
			locks = append(locks, fmt.Sprintf("chain %s %s", c.Table.Name, c.Name))
		}
	}
	return locks, nil
}
