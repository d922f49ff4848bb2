package pin

import (
	"slices"
	"strings"
)

// UpperDir is the key of a pin: the writable dir of an active snapshot's
// mount as containerd's overlay snapshotter returns it, and as the shim
// receives it in a task's rootfs: the upperdir of an overlay mount, or
// the source of the read-write bind mount overlay uses for a snapshot
// without parents. "" for anything else (a view, another snapshotter's
// mounts).
func UpperDir(mountType, source string, options []string) string {
	switch mountType {
	case "overlay":
		for _, o := range options {
			if v, ok := strings.CutPrefix(o, "upperdir="); ok {
				return v
			}
		}
	case "bind":
		if !slices.Contains(options, "ro") {
			return source
		}
	}
	return ""
}
