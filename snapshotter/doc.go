// Package snapshotter will hold precopyd's snapshotter, whose data lives in
// memory, and the pinned point-in-time views of a container's writable
// layer that early thaw needs. Empty until precopyd lands (issues 5, 9).
package snapshotter
