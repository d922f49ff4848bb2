// Package imagechain turns an incremental CRIU image directory (one written
// with --prev-images-dir, holding a relative "parent" symlink to the
// previous pre-dump) into a self-contained, flat image set.
//
// How CRIU lays out memory in an image dir (criu/pagemap.c, page-xfer.c):
//
//   - pagemap-<id>.img (one per task, id = its pid) and pagemap-shmem-<shmid>.img
//     (one per anonymous shared mapping) start with a pagemap_head naming the
//     pages file, pages-<pages_id>.img, followed by pagemap_entry records
//     (vaddr, nr_pages, flags), sorted by vaddr.
//   - PE_PRESENT: the pages are in this dir's pages file. The pages file has
//     no index: present entries' pages follow each other in pagemap order.
//   - PE_PARENT: the pages were not modified since the previous dump (soft
//     dirty bit clear); the restore reads them from the pagemap with the same
//     file name in "parent", recursively (read_parent_page). A missing parent
//     pagemap means no parent for that task, and a PE_PARENT entry then fails
//     the restore ("No parent for snapshot pagemap").
//   - PE_LAZY: the pages may be restored lazily (userfaultfd). A regular dump
//     marks private anonymous pages PE_LAZY|PE_PRESENT; only a --lazy-pages
//     dump leaves them PE_LAZY alone, out of the images, served later by the
//     page server. Flatten keeps the flag and refuses the latter.
//   - Zero pages and pages never touched are not dumped at all: no flag marks
//     them (a PE_ZERO existed only in development before 3.5, dropped by
//     48675a3c7 "Drop support for zero pagemap entries"); they are absent
//     from the pagemap, and the restore leaves that memory as fresh (zero)
//     anonymous memory. Flattening therefore only has to resolve what the
//     newest pagemap lists: a page present in an ancestor but zero or
//     unmapped now is not listed, and stays zero.
//   - Images from before CRIU 3.5 carry in_parent instead of flags, and
//     CRIU 4.2+ moved nr_pages to a uint64 field 5 (with field 2 zero); both
//     are read here (see entry.go).
//
// Why flatten: containerd's CRI plugin re-creates every tar entry of a
// checkpoint as a regular file in one directory, so a "parent" symlink or
// subdirectory breaks it, and checkpointctl and stock runc restore expect one
// self-contained set. It also lets CRIU read pages in the restorer's PIE code
// (page_read.pieok is only set without a parent).
//
// Image dirs are untrusted input: a checkpoint image travels between
// machines and is restored by root, and a flatten writes into image dirs
// (FlattenConsuming even into the parent's pages file). So no symlink is
// followed (files are opened relative to their dir with O_NOFOLLOW, parent
// links resolved one directory at a time), pages files must be regular
// files with one link, a parent link must be relative and lead into the
// chain's bound (Within), page counts are checked against the pages files
// with arithmetic that cannot overflow, and all of it before anything is
// written. A refusal is ErrUnsafeImage or ErrCorruptImage and names the
// file (imagedir.go).
package imagechain
