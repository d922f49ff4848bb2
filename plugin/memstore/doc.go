// Package memstore is a containerd content store (content.Store) that keeps
// every blob and every unfinished ingest in memory, so checkpoint images never
// touch a disk. precopyd serves it to containerd as a "content" proxy plugin.
//
// It is written by hand because nothing reusable exists: containerd's own
// content stores are the directory-backed local store, the metadata wrapper
// and the gRPC proxy, and its test helper (core/images/imagetest) runs the
// local store on a temporary directory. Memory-backed stores in other
// libraries (oras-go's content/memory, for one) lack containerd's ingest
// semantics: refs locked to one writer, resumable writes, commit checks,
// labels and filters. This store follows those semantics as the local store
// (plugins/content/local) defines them and is checked against containerd's
// conformance suite (core/content/testsuite), directly and through the
// content gRPC API.
//
// On top of that it enforces a byte limit: committed blobs and bytes held by
// ingests both count, and a write that would exceed the limit fails with
// errdefs.ErrResourceExhausted without touching anything already stored.
//
// It keeps nothing beyond its process. Observers hear of every change to
// committed content, in order, to keep a copy (plugin/persist) or a record
// (plugin/inventory); Load takes content back after a restart, verifying
// it; MarkLost makes asking for content a restart lost say so.
package memstore
