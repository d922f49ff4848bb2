// Package plugin will hold precopyd's proxy plugins for containerd: a
// content store kept in memory, served over containerd's content API.
// Empty until precopyd lands (issue 5).
package plugin
