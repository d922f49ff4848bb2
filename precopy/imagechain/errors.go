package imagechain

import "errors"

var (
	// ErrMissingParentPages: a PE_PARENT entry names pages that no ancestor
	// has, or there is no parent (link or pagemap) to take them from. CRIU's
	// restore would fail the same way ("Missing %lx in parent pagemap",
	// "No parent for snapshot pagemap").
	ErrMissingParentPages = errors.New("PE_PARENT pages not found in the parent images")

	// ErrLazyPages: an entry is PE_LAZY without PE_PRESENT, i.e. the images
	// come from a --lazy-pages dump and the pages are only on the dump side's
	// page server. They cannot be put into a flat image set.
	ErrLazyPages = errors.New("PE_LAZY pages are not in the images (--lazy-pages dump)")

	// ErrParentConsumed: FlattenConsuming failed after it had rewritten
	// part of the parent's pages that dir reads through its parent link
	// (a takeover with a tail, or one that shifted ranges of the parent's
	// pages file, see FlattenConsuming). dir is unchanged but
	// can no longer be restored: dump it again.
	ErrParentConsumed = errors.New("the parent's pages were rewritten before the failure")

	// ErrUnsafeImage: the chain has a file or link that flatten must not
	// follow, read or write: a symlink or a hard-linked image file, a file
	// that is not regular, or a parent link that is absolute or leads
	// outside the chain's bound (Within). An image dir is input from
	// elsewhere: nothing outside it is read into the image or written.
	ErrUnsafeImage = errors.New("image refused")

	// ErrCorruptImage: an image does not add up: a pagemap that does not
	// decode, entries that overlap or whose sizes overflow, a pages file
	// shorter than its pagemap says. CRIU never writes one.
	ErrCorruptImage = errors.New("corrupt image")
)
