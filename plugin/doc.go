// Package plugin holds what precopyd (cmd/precopyd) serves to containerd as
// proxy plugins, each in its own subpackage:
//
//   - memstore: a content store kept in memory, with a byte limit, so that
//     checkpoint images never touch a disk;
//   - contentservice: containerd's content gRPC API over any content
//     store, set up as containerd expects of a "content" proxy plugin.
package plugin
