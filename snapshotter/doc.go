// Package snapshotter is precopyd's snapshotter whose data lives in memory:
// containerd's own overlay snapshotter (plugins/snapshots/overlay), reused
// as it is, rooted on a tmpfs that precopyd mounts itself with a fixed
// size. The tmpfs size is the snapshotter's byte limit: containers' writable
// layers, which `--rw` checkpoints diff, and unpacked image layers share
// it, and none of it touches a disk. When it is full, Prepare refuses new
// writable snapshots with errdefs.ErrResourceExhausted, and any ENOSPC the
// overlay snapshotter meets is reported the same way.
//
// The snapshots' metadata (a bolt file, a few KiB a snapshot) is kept
// beside the tmpfs, not on it, so that a full tmpfs cannot keep Remove, the
// call that frees it, from committing. Snapshots live as long as the tmpfs:
// a precopyd that starts finds the metadata of its predecessor's, logs them
// as lost and starts empty.
//
// Pin keeps point-in-time copies of containers' writable layers and serves
// them to Mounts, which early thaw of a writable rootfs needs (pin.go, with
// package pin's mechanism; package pinservice serves it to the shim).
package snapshotter
