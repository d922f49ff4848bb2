package precopy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/precopy/precopy/precopy/policy"
)

// ReportFile is the report's name in the checkpoint's image dir: it
// travels inside the image, so whoever restores or inspects it sees how it
// was made.
const ReportFile = "precopy-report.json"

// Report says how a checkpoint was made.
type Report struct {
	// Mode is how pre-copy was configured for the container.
	Mode string `json:"mode"`
	// CRIUOptions are the CRIU options precopy set beyond runc's, as
	// config-file lines.
	CRIUOptions []string `json:"criu_options,omitempty"`
	// PreCopied is false for a one-shot checkpoint; Skipped says why.
	PreCopied bool   `json:"pre_copied"`
	Skipped   string `json:"skipped,omitempty"`
	// Trigger is the call that ran pre-copy.
	Trigger Trigger `json:"trigger,omitempty"`
	// Rounds and why they stopped, including the predicted final freeze;
	// PreCopy is the time from the first round's start to the stop, with
	// the rounds' flattens but those that waited for the final dump (their
	// Round.FlattenAfterDump).
	Rounds  []policy.Round   `json:"rounds,omitempty"`
	Stop    *policy.Decision `json:"stop,omitempty"`
	PreCopy time.Duration    `json:"pre_copy_ns,omitempty"`
	// Final is the final dump: CRIU's statistics (Freeze is the measured
	// final freeze), when the runtime call started and its wall time, and
	// the size of the checkpoint's image.
	Final *policy.Round `json:"final,omitempty"`
	// FinalFlatten is what flattening the final dump with the rounds'
	// image cost; the container is still frozen then, unless it thawed
	// early.
	FinalFlatten time.Duration `json:"final_flatten_ns,omitempty"`
	// FellBack says why a pre-copy checkpoint was redone one-shot.
	FellBack string `json:"fell_back,omitempty"`
	// Thaw is when the container ran again: right after the final dump, or
	// at the client's Resume, and why.
	Thaw *Thaw `json:"thaw,omitempty"`
	// Network is the container's network namespace as the checkpoint
	// found it before the dump, and what CRIU was told of it; nil in the
	// host's. The caller fills it; a restore reads it back (Loopback).
	Network *Network `json:"network,omitempty"`
	// Incremental is how the checkpoint used the previous one's memory
	// image, and whether its own was kept for the next; nil unless
	// io.precopy.incremental is on.
	Incremental *Incremental `json:"incremental,omitempty"`
}

// Network is a checkpoint's account of the container's network namespace.
type Network struct {
	// TCP is what CRIU was told of TCP connections: "established" (dumped
	// with their state), "refused" (CRIU fails a dump with one), or
	// "operator's config" (the container names its own CRIU config).
	TCP string `json:"tcp"`
	// Loopback is lo before the dump, which CRIU does not keep (runc
	// tells it to skip the namespace's contents): a restore by precopy's
	// shim puts it back. Nil when it could not be read.
	Loopback *Loopback `json:"loopback,omitempty"`
	// Sockets are the container's sockets, counted before the dump; nil
	// when they could not be.
	Sockets *Sockets `json:"sockets,omitempty"`
}

// Loopback is the state of a network namespace's lo.
type Loopback struct {
	Up bool `json:"up"`
	// Addrs are lo's addresses in CIDR form, e.g. "127.0.0.1/8".
	Addrs []string `json:"addrs,omitempty"`
}

// String is lo as `ip addr` would sum it up: "up 127.0.0.1/8 ::1/128".
func (l Loopback) String() string {
	if !l.Up {
		return "down"
	}
	return strings.Join(append([]string{"up"}, l.Addrs...), " ")
}

// Sockets counts a container's sockets by kind.
type Sockets struct {
	TCPListen int `json:"tcp_listen"`
	// TCPConnections are TCP sockets with a peer (established, or in
	// another state that has one), which CRIU dumps only when told
	// tcp-established.
	TCPConnections int `json:"tcp_connections"`
	UDP            int `json:"udp"`
	Unix           int `json:"unix"`
}

// Incremental says how a checkpoint used the memory image of the one
// before it (io.precopy.incremental): pre-copy's first dump wrote only the
// pages dirtied since that image, and took the others from it.
type Incremental struct {
	// Number is the checkpoint's number among the checkpoints of the
	// container's task (1: its first).
	Number int `json:"number"`
	// Parent is the earlier checkpoint's image the first dump ran
	// against; nil when there was none, and NoParent says why.
	Parent   *Parent `json:"parent,omitempty"`
	NoParent string  `json:"no_parent,omitempty"`
	// PagesFromParent are the pages the first dump found unchanged since
	// the parent and did not write; BytesSaved is their size.
	PagesFromParent uint64 `json:"pages_from_parent,omitempty"`
	BytesSaved      int64  `json:"bytes_saved,omitempty"`
	// Unshare is what copying the parent's files cost, when they had
	// other names too (a caller's image dir that outlived the checkpoint)
	// and could not be consumed in place.
	Unshare time.Duration `json:"unshare_ns,omitempty"`
	// Kept: this checkpoint's memory image is kept for the next
	// checkpoint (KeptBytes of it, at a cost of Keep, inside the frozen
	// window unless the container thawed early); NotKept says why not.
	Kept      bool          `json:"kept"`
	KeptBytes int64         `json:"kept_bytes,omitempty"`
	Keep      time.Duration `json:"keep_ns,omitempty"`
	NotKept   string        `json:"not_kept,omitempty"`
}

// Parent is the earlier checkpoint an incremental one pre-copied against.
type Parent struct {
	// Number is its number among the task's checkpoints.
	Number int `json:"number"`
	// DumpedAt is when its final dump started: the image holds the
	// container's memory as of then. Bytes is the size of the memory
	// files kept of it.
	DumpedAt time.Time `json:"dumped_at"`
	Bytes    int64     `json:"bytes"`
}

// Thaw is the end of a checkpoint's frozen window.
type Thaw struct {
	// Early is true when the shim thawed the container right after the
	// final dump, before the daemon stored the image; Reason says why it
	// did or did not.
	Early  bool   `json:"early"`
	Reason string `json:"reason"`
	// FrozenAt is when the Pause before the checkpoint had frozen the
	// container, ThawedAt when the early thaw ran it again (without an
	// early thaw the client's Resume ends the window, after this report).
	FrozenAt time.Time `json:"frozen_at,omitzero"`
	ThawedAt time.Time `json:"thawed_at,omitzero"`
	// AfterThaw is what the shim did once the container ran again.
	AfterThaw []string `json:"after_thaw,omitempty"`
	// Pinned is true when a point-in-time view of the writable rootfs
	// was pinned for the client's rw-layer diff: by PinWhere, PinBytes in
	// PinFiles files (0 when the pin does not say), and PinCost is what
	// making it cost, inside the frozen window.
	Pinned   bool          `json:"pinned,omitempty"`
	PinWhere string        `json:"pin_where,omitempty"`
	PinBytes int64         `json:"pin_bytes,omitempty"`
	PinFiles int           `json:"pin_files,omitempty"`
	PinCost  time.Duration `json:"pin_ns,omitempty"`
}

// Write writes the report into image dir dir, replacing (never writing
// through) whatever is there under its name.
func (r *Report) Write(dir string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := writeInDir(dir, ReportFile, bytes.NewReader(append(b, '\n'))); err != nil {
		return fmt.Errorf("write %s: %w", ReportFile, err)
	}
	return nil
}

// maxReportBytes bounds a report read back: a few rounds' figures and
// reasons take a few KiB.
const maxReportBytes = 1 << 20

// ReadReport reads the report from image dir dir, not following a
// symlink.
func ReadReport(dir string) (*Report, error) {
	b, err := readRegular(filepath.Join(dir, ReportFile), maxReportBytes)
	if err != nil {
		return nil, err
	}
	var r Report
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("parse %s: %w", ReportFile, err)
	}
	return &r, nil
}
