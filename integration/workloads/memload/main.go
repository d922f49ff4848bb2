// Command memload is the container process of the checkpoint/restore tests.
// It holds memory whose expected content it can recompute from two numbers
// it keeps in that same memory (seed and cursor), rewrites part of it at a
// set rate, and reports through a status file. After a restore, a query
// makes it verify every page and tell the longest pause it perceived.
//
//	memload [flags]                   run the workload (see -h)
//	memload query [-status P] [-pid N] [-timeout D]
//	memload reset-gap [-status P] [-pid N] [-timeout D]
//
// The protocol's types and the content logic are in package
// github.com/precopy/precopy/integration/workload.
package main

import (
	"fmt"
	"os"
)

func main() {
	var err error
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "query":
			err = runClient(queryRequest, os.Args[2:])
		case "reset-gap":
			err = runClient(resetRequest, os.Args[2:])
		default:
			err = runWorkload(os.Args[1:])
		}
	} else {
		err = runWorkload(nil)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "memload: %v\n", err)
		os.Exit(1)
	}
}
