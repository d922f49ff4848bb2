package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/precopy/precopy/integration/workloads/netload/netproto"
)

// runQuery connects to each server as a new client would, reads the
// status, verifies every seed key and echoes once over UDP and unix, and
// prints a netproto.Query. Any failure is an error: the servers must
// answer on 127.0.0.1 and their data must be intact.
func runQuery(args []string) error {
	fs := flag.NewFlagSet("netload query", flag.ContinueOnError)
	timeout := fs.Duration("timeout", 10*time.Second, "how long to keep trying to reach the server")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	deadline := time.Now().Add(*timeout)
	var c net.Conn
	var err error
	for {
		if c, err = net.DialTimeout("tcp", netproto.TCPAddr, time.Second); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("connect to %s: %w", netproto.TCPAddr, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	defer c.Close()
	c.SetDeadline(deadline.Add(*timeout))
	r := bufio.NewReader(c)
	ask := func(req string) (string, error) {
		if _, err := c.Write([]byte(req + "\n")); err != nil {
			return "", err
		}
		line, err := r.ReadString('\n')
		return strings.TrimSuffix(line, "\n"), err
	}
	var q netproto.Query
	line, err := ask("STATUS")
	if err != nil {
		return fmt.Errorf("STATUS: %w", err)
	}
	if err := json.Unmarshal([]byte(line), &q.Status); err != nil {
		return fmt.Errorf("STATUS: %w: %q", err, line)
	}
	for i := range netproto.SeedKeys {
		got, err := ask("GET " + netproto.SeedKey(i))
		if err != nil {
			return fmt.Errorf("GET %s: %w", netproto.SeedKey(i), err)
		}
		if got != "VAL "+netproto.SeedValue(q.Status.Seed, i) {
			return fmt.Errorf("GET %s: wrong value (%.40q...)", netproto.SeedKey(i), got)
		}
		q.SeedKeysVerified++
	}
	if q.UDPEcho, err = echo("udp", netproto.UDPAddr); err != nil {
		return err
	}
	if q.UnixEcho, err = echo("unix", netproto.UnixPath); err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(q)
}

// echo sends one message to an echo server and checks the answer.
func echo(network, addr string) (bool, error) {
	c, err := net.DialTimeout(network, addr, time.Second)
	if err != nil {
		return false, fmt.Errorf("%s echo: %w", network, err)
	}
	defer c.Close()
	msg := fmt.Sprintf("query %d", time.Now().UnixNano())
	for try := 0; try < 5; try++ { // UDP may lose one
		c.SetDeadline(time.Now().Add(time.Second))
		if _, err = fmt.Fprintf(c, "%s\n", msg); err != nil {
			continue
		}
		buf := make([]byte, 128)
		var n int
		if n, err = c.Read(buf); err == nil {
			if got := strings.TrimSpace(string(buf[:n])); got != msg {
				return false, fmt.Errorf("%s echo: got %q, want %q", network, got, msg)
			}
			return true, nil
		}
	}
	return false, fmt.Errorf("%s echo: %w", network, err)
}
