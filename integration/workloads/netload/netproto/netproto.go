// Package netproto is what netload (the network workload of the
// integration tests) and the tests share: its addresses, its status and
// query result, and the content of the keys it serves.
package netproto

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"time"
)

const (
	// TCPAddr is the key-value server's address.
	TCPAddr = "127.0.0.1:7070"
	// UDPAddr is the UDP echo server's address.
	UDPAddr = "127.0.0.1:7071"
	// MPTCPAddr is where netload -mptcp listens with MPTCP.
	MPTCPAddr = "127.0.0.1:7072"
	// UnixPath is the unix stream echo server's socket, in the
	// container's /tmp.
	UnixPath = "/tmp/netload.sock"
	// SeedKeys is how many keys the server holds from its start, with
	// content derived from its seed.
	SeedKeys = 512
	// ValueSize is the size of a seed key's value.
	ValueSize = 256
)

// Status is what the server and its load generator report, to a STATUS
// command (one JSON line).
type Status struct {
	PID int `json:"pid"`
	// StartedAt tells one process image from another: a restored server
	// reports the start time of the one checkpointed.
	StartedAt time.Time `json:"started_at"`
	Seed      uint64    `json:"seed"`
	// Accepted counts TCP connections the server accepted.
	Accepted uint64 `json:"accepted"`
	// Loopback is lo's state as the server saw it at its start.
	Loopback string `json:"loopback"`
	// Conns are the load generator's TCP connections.
	Conns []ConnStatus `json:"conns"`
	// UDP is the load generator's UDP echo traffic.
	UDP UDPStatus `json:"udp"`
	// Unix is the load generator's unix socket connection.
	Unix ConnStatus `json:"unix"`
}

// ConnStatus is one client connection the load generator keeps open and
// busy: a SET then a GET of its own key, over and over.
type ConnStatus struct {
	ID int `json:"id"`
	// Ops counts completed round trips.
	Ops uint64 `json:"ops"`
	// Dials counts connections made: 1 while the first one lives.
	Dials uint64 `json:"dials"`
	// Mismatches counts GETs that did not return what was SET.
	Mismatches uint64 `json:"mismatches"`
	// LastError is the error that ended the previous connection.
	LastError string `json:"last_error,omitempty"`
}

// UDPStatus counts echo datagrams sent and answered.
type UDPStatus struct {
	Sent    uint64 `json:"sent"`
	Replies uint64 `json:"replies"`
}

// Query is what `netload query` prints: the server's status and what the
// query itself checked through each socket.
type Query struct {
	Status Status `json:"status"`
	// SeedKeysVerified counts seed keys read back with the right value.
	SeedKeysVerified int `json:"seed_keys_verified"`
	// UDPEcho and UnixEcho: the query's own echo came back.
	UDPEcho  bool `json:"udp_echo"`
	UnixEcho bool `json:"unix_echo"`
}

// Dials is the total of the load generator's connections made, TCP and
// unix: it grows only when a connection ended.
func (s Status) Dials() uint64 {
	n := s.Unix.Dials
	for _, c := range s.Conns {
		n += c.Dials
	}
	return n
}

// Ops is the total of the load generator's round trips, TCP and unix.
func (s Status) Ops() uint64 {
	n := s.Unix.Ops
	for _, c := range s.Conns {
		n += c.Ops
	}
	return n
}

// SeedKey is the name of seed key i.
func SeedKey(i int) string { return fmt.Sprintf("seed-%d", i) }

// SeedValue is the content of seed key i for seed, hex-encoded as the
// protocol carries it.
func SeedValue(seed uint64, i int) string {
	b := make([]byte, ValueSize)
	s := seed ^ uint64(i)*0x9e3779b97f4a7c15
	for off := 0; off < len(b); off += 8 {
		s ^= s << 13
		s ^= s >> 7
		s ^= s << 17
		binary.LittleEndian.PutUint64(b[off:], s)
	}
	return hex.EncodeToString(b)
}
