// Command netload is the network workload of the checkpoint/restore tests:
// a small key-value server on TCP, with UDP and unix stream echo servers,
// and a load generator in the same process (so in the same network
// namespace) that keeps TCP connections, a UDP socket and a unix
// connection open and busy while the container is checkpointed.
//
//	netload [-conns N] [-mib N] [-lo-up] [-mptcp]   serve and generate load
//	netload query [-timeout D]                      check each socket, print a netproto.Query
//
// After a restore, a query shows whether the generator's connections
// carried on (their Dials did not grow) or were reset and made again.
//
// Go (1.24 on) listens with MPTCP where the kernel has it, and CRIU cannot
// dump MPTCP sockets ("Unsupported proto 262"): netload turns that off, as
// a Go server to be checkpointed must, except with -mptcp, which keeps one
// MPTCP listener as the socket CRIU cannot handle.
//
//go:debug multipathtcp=0
package main

import (
	"fmt"
	"os"
)

func main() {
	var err error
	switch {
	case len(os.Args) > 1 && os.Args[1] == "query":
		err = runQuery(os.Args[2:])
	default:
		err = runServer(os.Args[1:])
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "netload: %v\n", err)
		os.Exit(1)
	}
}
