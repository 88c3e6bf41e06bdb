// pause: the process that holds a pod sandbox's namespaces on the real node
// of the local control plane (e2e/cluster up --real-node). It sleeps until
// SIGINT or SIGTERM and, as PID 1 of the sandbox, reaps any child that is
// reparented to it. Built with CGO_ENABLED=0, so the image needs nothing but
// this binary.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range sigs {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
