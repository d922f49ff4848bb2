package imagechain

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"
)

// CheckFlat checks, without changing anything, that dir is a
// self-contained image set that is safe to hand to CRIU's restore, which
// runs as root and follows whatever names it opens: no parent link, no
// symlink, FIFO or device, every regular file with one link (a second
// name could be any file on the host, whose bytes CRIU would read as the
// task's memory, and containerd would tar into a checkpoint), and every
// pagemap decoding, free of PE_PARENT entries and of overlaps, within a
// pages file long enough. Subdirectories are left alone (CRIU reads none).
// The error is ErrUnsafeImage, ErrCorruptImage or (PE_PARENT entries)
// ErrMissingParentPages, naming the file.
//
// A checkpoint restored from elsewhere (containerd extracts its archive,
// symlinks and hard links included) should pass it before `runc restore`;
// a dir Flatten made does.
func CheckFlat(dir string) error {
	if err := checkFlatDir(dir, uint64(os.Getpagesize())); err != nil {
		return fmt.Errorf("check image %s: %w", dir, err)
	}
	return nil
}

func checkFlatDir(dir string, pageSize uint64) error {
	d, err := openImageDir(dir)
	if err != nil {
		return err
	}
	defer d.close()
	names, err := d.names()
	if err != nil {
		return err
	}
	for _, name := range names {
		st, err := d.lstat(name)
		if err != nil {
			return err
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			continue
		case unix.S_IFLNK:
			if name == parentLinkName {
				return fmt.Errorf("%s: %w: a parent link (not flat: CRIU would read pages wherever it leads)", d.join(name), ErrUnsafeImage)
			}
		}
		if err := checkRegular(d.join(name), st, fileCheck{oneLink: true}); err != nil {
			return err
		}
	}
	for _, name := range names {
		if !isPagemapName(name) {
			continue
		}
		img, err := d.readPagemap(name)
		if err != nil {
			return err
		}
		index, err := newPageIndex(img, pageSize)
		if err != nil {
			return fmt.Errorf("%s: %w", d.join(name), err)
		}
		if img.hasParentEntries() {
			return fmt.Errorf("%s: %w: PE_PARENT entries in an image without parent", d.join(name), ErrMissingParentPages)
		}
		err = d.checkFile(pagesName(img.pagesID), fileCheck{oneLink: true, minSize: index.presentBytes, need: "its pagemap " + d.join(name)})
		if err != nil && !(errors.Is(err, fs.ErrNotExist) && index.presentBytes == 0) {
			return err
		}
	}
	return nil
}
