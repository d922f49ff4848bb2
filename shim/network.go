//go:build linux

package shim

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/log"

	"github.com/precopy/precopy/precopy"
	"github.com/precopy/precopy/precopy/settings"
	"github.com/precopy/precopy/shim/criuaction"
)

// criuAnnotation names CRIU's per-container config file for runc
// (libcontainer/criu_linux.go, handleCriuConfigurationFile): CRIU reads
// it after runc's RPC options and it overrides them. runc sends
// tcp_established (false unless `runc checkpoint --tcp-established`,
// which containerd's clients never ask for, and never on restore) over
// RPC, so only this file can turn it on; CRIU_CONFIG_FILE cannot (RPC
// overrides it; checked with CRIU 4.2.1).
const criuAnnotation = "org.criu.config"

// runcDefaultCRIUConfig is the file runc hands CRIU when the container
// has no org.criu.config: precopy's file starts with its lines.
var runcDefaultCRIUConfig = "/etc/criu/runc.conf"

// criuRPCConfigName is precopy's CRIU config file for one container, in
// its bundle (containerd's state for that container, removed with it).
const criuRPCConfigName = "precopy-criu.conf"

// The report's word for what CRIU was told of TCP connections.
const (
	tcpEstablished    = "established"
	tcpRefused        = "refused"
	tcpOperatorConfig = "operator's config"
)

// network is what precopy does for one container's network namespace
// around CRIU: runc makes CRIU skip the namespace's contents (loopback
// down and without addresses after a restore) and refuse TCP connections.
type network struct {
	// nsPath is the network namespace the container joins (its pod's);
	// "" when runc makes one for it.
	nsPath string
	tcp    settings.TCP
	// config is precopy's CRIU config file of the container; "" when
	// the operator gave the container one of its own.
	config string
	// operatorLines are the lines of the config file runc would have
	// handed CRIU (/etc/criu/runc.conf), kept first in precopy's.
	operatorLines []string
	// restoring: config holds a restore's options (the container was
	// created from a checkpoint) until its Start has restored it.
	restoring bool
}

// setUpNetwork prepares CRIU's network options for a container being
// created in bundle (restored from the image in dir checkpoint, if not
// ""), before runc reads its spec: precopy's CRIU config file, named in
// the bundle's config.json. It returns nil for a container in the host's
// network namespace, which precopy leaves as runc-v2 does.
func setUpNetwork(ctx context.Context, bundle, checkpoint string, spec specFacts, tcp settings.TCP) (*network, error) {
	if !spec.ownNetns {
		return nil, nil
	}
	n := &network{nsPath: spec.netnsPath, tcp: tcp}
	if spec.criuConfig != "" {
		log.G(ctx).WithField("file", spec.criuConfig).Info("precopy: the container names its own CRIU config (org.criu.config); precopy adds no TCP option and no loopback restore")
		return n, nil
	}
	if b, err := os.ReadFile(runcDefaultCRIUConfig); err == nil {
		n.operatorLines = strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	}
	n.config = filepath.Join(bundle, criuRPCConfigName)
	lines := n.dumpLines()
	if checkpoint != "" {
		lines, n.restoring = n.restoreLines(ctx, checkpoint), true
	}
	if err := writeCRIUConfig(n.config, lines); err != nil {
		return nil, fmt.Errorf("CRIU config: %w", err)
	}
	if err := setBundleAnnotation(bundle, criuAnnotation, n.config); err != nil {
		return nil, fmt.Errorf("name the CRIU config in the spec: %w", err)
	}
	return n, nil
}

// dumpLines are the CRIU options for the container's checkpoints.
func (n *network) dumpLines() []string {
	lines := append([]string{"# precopy: CRIU options of this container (see precopy's README)"}, n.operatorLines...)
	if n.tcp != settings.TCPRefuse {
		lines = append(lines, "tcp-established")
	}
	return lines
}

// restoreLines are the CRIU options for restoring the image in dir: the
// shim as action script (loopback put back before sockets are), and
// whether TCP connections come back or closed.
func (n *network) restoreLines(ctx context.Context, dir string) []string {
	lines := append([]string{"# precopy: CRIU options of this container's restore"}, n.operatorLines...)
	lines = append(lines, "action-script "+shimBinary())
	tcp, why := n.restoreTCP(dir)
	log.G(ctx).WithFields(log.Fields{"tcp": tcp, "why": why}).Info("precopy: restoring TCP connections")
	return append(lines, tcp)
}

// shimBinary is this shim's binary, which CRIU runs as its action script
// (criuaction).
func shimBinary() string {
	exe, err := os.Executable()
	if err != nil {
		return os.Args[0]
	}
	return exe
}

// restoreTCP chooses CRIU's option for the image's TCP connections and
// says why.
func (n *network) restoreTCP(dir string) (option, why string) {
	if n.tcp == settings.TCPClose {
		return "tcp-close", "io.precopy.tcp is " + string(settings.TCPClose)
	}
	lo, err := criuaction.RecordedLoopback(dir)
	if err != nil {
		return "tcp-close", err.Error()
	}
	socks, err := criuaction.ReadSockets(dir)
	if err != nil {
		return "tcp-close", err.Error()
	}
	if socks.TCPConnections == 0 {
		// Nothing to restore either way; tcp-established also accepts
		// an image dumped without connections.
		return "tcp-established", "no TCP connections in the image"
	}
	have, err := criuaction.RestoredAddrs(lo, n.nsPath)
	if err != nil {
		return "tcp-close", err.Error()
	}
	if why := socks.Unrestorable(have); why != "" {
		return "tcp-close", why
	}
	return "tcp-established", fmt.Sprintf("%d TCP connections, their local addresses in the restored network namespace", socks.TCPConnections)
}

// restored puts the container's dump options back once its restore is
// done: the action script and restore options are for restores only (an
// exec of the shim for each of CRIU's actions would fall into dumps'
// frozen windows).
func (n *network) restored() error {
	if n == nil || !n.restoring {
		return nil
	}
	n.restoring = false
	return writeCRIUConfig(n.config, n.dumpLines())
}

// reportTCP is what the report says CRIU was told of TCP connections.
func (n *network) reportTCP() string {
	switch {
	case n.config == "":
		return tcpOperatorConfig
	case n.tcp == settings.TCPRefuse:
		return tcpRefused
	}
	return tcpEstablished
}

// readNetwork is the report's account of c's network namespace, read
// while the task still runs (a few ms natively: netlink in the namespace,
// and /proc); nil in the host's. What cannot be read costs the report its
// figure, and a restore its loopback, never the checkpoint. Callers hold
// c.mu.
func (s *Service) readNetwork(ctx context.Context, c *container) *precopy.Network {
	if c.network == nil {
		return nil
	}
	out := &precopy.Network{TCP: c.network.reportTCP()}
	l := log.G(ctx).WithField("id", c.id)
	st, err := s.TTRPCTaskService.State(ctx, &taskAPI.StateRequest{ID: c.id})
	if err == nil {
		var lo precopy.Loopback
		if lo, err = criuaction.ReadLoopback(fmt.Sprintf("/proc/%d/ns/net", st.Pid)); err == nil {
			out.Loopback = &lo
		}
	}
	if err != nil {
		l.WithError(err).Warn("precopy: cannot read the container's loopback; a restore will find it down")
	}
	pids, err := s.pids(ctx, c.id)
	if err == nil {
		var socks precopy.Sockets
		if socks, err = criuaction.LiveSockets(pids); err == nil {
			out.Sockets = &socks
		}
	}
	if err != nil {
		l.WithError(err).Warn("precopy: count the container's sockets")
	}
	return out
}

// setBundleAnnotation sets an annotation in the bundle's config.json,
// keeping every other field as it is, before runc reads it.
func setBundleAnnotation(bundle, key, value string) error {
	path := filepath.Join(bundle, "config.json")
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var spec map[string]json.RawMessage
	if err := json.Unmarshal(b, &spec); err != nil {
		return fmt.Errorf("read OCI spec: %w", err)
	}
	annotations := map[string]string{}
	if raw, ok := spec["annotations"]; ok && string(raw) != "null" {
		if err := json.Unmarshal(raw, &annotations); err != nil {
			return fmt.Errorf("read OCI spec annotations: %w", err)
		}
	}
	annotations[key] = value
	if spec["annotations"], err = json.Marshal(annotations); err != nil {
		return err
	}
	if b, err = json.Marshal(spec); err != nil {
		return err
	}
	tmp := path + ".precopy"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
