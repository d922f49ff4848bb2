package precopy

import (
	"fmt"
	"os"
)

// ResidentBytes is the memory resident in processes pids, what a first
// round copies. It sums /proc/<pid>/statm, which works alike on cgroup v1
// and v2; a process that exited meanwhile counts nothing.
func ResidentBytes(pids []int) uint64 {
	page := uint64(os.Getpagesize())
	var total uint64
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/statm", pid))
		if err != nil {
			continue
		}
		var size, resident uint64
		if _, err := fmt.Sscan(string(b), &size, &resident); err == nil {
			total += resident * page
		}
	}
	return total
}
