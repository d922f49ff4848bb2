package harness

import (
	"os"
	"strconv"
	"sync"
	"syscall"
)

// keepInheritedFiles marks, once, every file descriptor this process
// inherited beyond stdio close-on-exec. Go's exec passes a child every
// descriptor that is not, so a lock a wrapper holds (`flock LOCK make
// test` hands its lock's descriptor down) would reach CRIU's probe
// process, which CRIU then refuses to dump ("Some file locks are hold by
// dumping tasks"), and containerd and its shims, which would hold the lock
// as long as any of them lives.
var keepInheritedFiles = sync.OnceFunc(func() {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return
	}
	for _, e := range entries {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			syscall.CloseOnExec(fd)
		}
	}
})
