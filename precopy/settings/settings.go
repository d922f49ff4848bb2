// Package settings holds a container's precopy settings: the shim's
// config file (defaults) with the container's io.precopy.* OCI annotations
// over them. It is free of containerd, so the shim, precopyd and the tests
// share one reading of every setting, and one byte-size parser.
package settings

import (
	"strconv"
	"strings"
	"time"

	"github.com/precopy/precopy/precopy/policy"
)

// Mode says when a container's checkpoints pre-copy.
type Mode string

// EarlyThaw says when the shim may thaw a container right after the final
// dump of a checkpoint, before the daemon has stored the image and diffed
// the container's writable layer.
type EarlyThaw string

// TCP says what a container's checkpoints and restores do with its TCP
// connections (sockets with a peer), in a network namespace of its own.
type TCP string

const (
	// The modes: always (where the kernel can), never (one-shot, as stock
	// runc-v2), or, as the config file's default only, annotated: just
	// the containers whose io.precopy.mode says always.
	ModeAlways    Mode = "always"
	ModeNever     Mode = "never"
	ModeAnnotated Mode = "annotated"

	// EarlyThawAuto thaws early only when the writable layer the daemon
	// diffs cannot disagree with the memory image: a read-only rootfs, or
	// a writable one pinned for the diff.
	EarlyThawAuto EarlyThaw = "auto"
	// EarlyThawNever keeps the container frozen until the client resumes
	// it, as stock runc-v2 does.
	EarlyThawNever EarlyThaw = "never"
	// EarlyThawForce thaws early whatever the rootfs: the container's
	// owner accepts that files it writes between the final dump and the
	// daemon's diff of its writable layer may land in the checkpoint
	// (newer than its memory image).
	EarlyThawForce EarlyThaw = "force"

	// TCPRestore dumps TCP connections (CRIU's tcp-established) and
	// restores them where their local addresses exist in the restored
	// network namespace, else restores them all closed (CRIU's
	// tcp-close): the server comes back listening and its clients see a
	// reset and reconnect.
	TCPRestore TCP = "restore"
	// TCPClose dumps them and always restores them closed.
	TCPClose TCP = "close"
	// TCPRefuse tells CRIU nothing of them: a container with a connection
	// cannot be checkpointed, as with stock runc-v2.
	TCPRefuse TCP = "refuse"
)

// The values each setting may take.
var (
	modes      = []Mode{ModeAlways, ModeNever, ModeAnnotated}
	earlyThaws = []EarlyThaw{EarlyThawAuto, EarlyThawNever, EarlyThawForce}
	tcps       = []TCP{TCPRestore, TCPClose, TCPRefuse}
)

// alternatives lists values for a message: "a", "b" or "c".
func alternatives[T ~string](values []T) string {
	q := make([]string, len(values))
	for i, v := range values {
		q[i] = strconv.Quote(string(v))
	}
	return strings.Join(q[:len(q)-1], ", ") + " or " + q[len(q)-1]
}

// DefaultPrecopydAddress is where the shim asks precopyd to pin a
// container's writable layer (precopyd's default --address).
const DefaultPrecopydAddress = "/run/precopyd/precopyd.sock"

// DefaultPinLimit is pin.DefaultMaxCopyTime (derived there from this
// machine's measured copy rates and what an early thaw saves), not
// imported: this package stays free of the snapshotter's dependencies.
// TestDefaultPinLimit keeps the two equal.
const DefaultPinLimit = 100 * time.Millisecond

// Settings are a container's precopy settings.
type Settings struct {
	Mode      Mode
	EarlyThaw EarlyThaw
	// TCP is what the container's checkpoints and restores do with its
	// TCP connections; the shim acts on it.
	TCP TCP
	// Policy is when pre-copy stops.
	Policy policy.Config
	// PinLimit is the longest copy of the writable layer a pin may add to
	// the frozen window, estimated from the layer's size before copying
	// (snapshotter/pin's measured rates); a larger layer is not pinned
	// and the container stays frozen until the client's Resume. 0: never
	// pin.
	PinLimit time.Duration
	// PrecopydAddress is precopyd's socket, where the shim asks for a
	// pinned view of a writable rootfs for an early thaw ("" = never). Set
	// by the config file only.
	PrecopydAddress string
	// RoundsDir is where each container's rounds and kept image go, in
	// <RoundsDir>/<namespace>/<id>; "" = the container's bundle (the state
	// dir, a tmpfs on most nodes). On ext4 or XFS a flatten takes the
	// previous pages file over even where pages were added or removed
	// below others (a range shift), where tmpfs must copy; and the final
	// flatten takes the rounds over only if containerd's checkpoint temp
	// dir is on the same filesystem. Set by the config file only.
	RoundsDir string
	// Incremental keeps each leave-running checkpoint's memory image (in
	// the container's bundle, on the state dir's tmpfs), of at most
	// IncrementalBudget bytes, so that the task's next checkpoint
	// pre-copies only the pages dirtied since.
	Incremental       bool
	IncrementalBudget uint64
}

// DefaultIncrementalBudget bounds a kept image as the memory budget
// bounds the rounds: the node's memory it takes is about the container's.
const DefaultIncrementalBudget = 4 << 30

// Default pre-copies every checkpoint with the policy's defaults:
// standard clients cannot ask for it, so it must be on unless turned off.
func Default() Settings {
	return Settings{Mode: ModeAlways, EarlyThaw: EarlyThawAuto, TCP: TCPRestore, Policy: policy.DefaultConfig(), PinLimit: DefaultPinLimit, PrecopydAddress: DefaultPrecopydAddress,
		IncrementalBudget: DefaultIncrementalBudget}
}

// With returns s with a container's annotations applied. Annotations
// outside io.precopy. are ignored; a bad or unknown io.precopy.* one is an
// error naming it. The result's Mode is always or never: a container not
// annotated always under the default annotated does not pre-copy.
func (s Settings) With(annotations map[string]string) (Settings, error) {
	out, err := apply(s, annotations)
	if err != nil {
		return s, err
	}
	if out.Mode == ModeAnnotated {
		out.Mode = ModeNever
	}
	return out, nil
}
