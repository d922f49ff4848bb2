package harness

import (
	"fmt"
	"os"
	"strings"

	"github.com/google/nftables"
)

// CRIUNetworkLocks lists the nftables tables CRIU's network lock made in
// the network namespace of process pid (`inet CRIU-<run id>`): CRIU adds
// one while it dumps, dropping every packet but its own, and removes it
// before it exits; a CRIU killed in between leaves it, and the namespace
// cut off.
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
			locks = append(locks, t.Name)
		}
	}
	return locks, nil
}
