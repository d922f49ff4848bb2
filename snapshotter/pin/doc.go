// Package pin makes point-in-time copies of containers' writable layers
// (overlay upper dirs) and shows them to containerd's rw-layer diff while
// the container runs on. That is what lets precopy thaw a container with a
// writable rootfs right after its final dump: the client's diff, which
// comes after the thaw, must see the layer as it was at the dump.
//
// One mechanism, two places to put the view:
//
//   - Served (precopyd's snapshotter): the copy is kept in a dir of the
//     snapshotter's, which serves it from Mounts of the pinned snapshot.
//   - BindMount (the shim, on containerd's own overlayfs snapshotter): the
//     copy is made beside the upper dir, on its filesystem, and bind-mounted
//     read-only over the upper dir's path in containerd's mount namespace
//     (the shim's too). containerd's walking differ mounts the snapshot with
//     WithReadonlyTempMount, which turns upperdir= into a lowerdir path: it
//     reads the upper dir by path and sees the copy. The container is not
//     affected: overlayfs took a private clone of its upper dir's mount when
//     the rootfs was mounted, so it goes on writing to the real dir.
//     Each pin is recorded in a file before anything is made, so that a
//     later process can release what a killed one left (ReleaseRecorded).
//
// Set keeps the pins of one process: each is registered before its copy
// starts, so that an Unpin arriving during the copy finds it and cancels
// it, and is removed if the copy fails or its caller gives up. Before
// copying, a pin measures the layer (Measure) and refuses one over its
// Limit (ErrTooLarge): the container stays frozen while it is copied.
package pin
