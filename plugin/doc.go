// Package plugin holds what precopyd (cmd/precopyd) serves to containerd as
// proxy plugins, each in its own subpackage:
//
//   - memstore: a content store kept in memory, with a byte limit, so that
//     checkpoint images never touch a disk;
//   - contentservice: containerd's content gRPC API over any content
//     store, set up as containerd expects of a "content" proxy plugin;
//   - persist: an optional copy of the store's blobs on disk, written
//     behind and recovered at start (precopyd --persist-dir);
//   - inventory: a record of which blobs the store holds, so that a
//     restart can say what was lost.
//
// The snapshotter precopyd serves beside them is in snapshotter/.
package plugin
