// Command pause is the pod sandbox's process in the CRI tests: the
// Kubernetes pause image cannot be pulled here (no registry), and the CRI
// plugin needs a sandbox image to run a pod. Like Kubernetes' pause, it
// sleeps until told to stop and exits 0 on SIGTERM or SIGINT, so that
// StopPodSandbox ends it without waiting for a kill. It reaps children,
// as a pid namespace's init must.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for s := range sigs {
		if s == syscall.SIGCHLD {
			reap()
			continue
		}
		os.Exit(0)
	}
}

// reap collects every exited child without blocking.
func reap() {
	for {
		pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
	}
}
