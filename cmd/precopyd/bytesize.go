package main

import (
	"fmt"

	units "github.com/docker/go-units"

	"github.com/precopy/precopy/precopy/settings"
)

// byteSize is a flag.Value for a byte count, read by precopy's one
// byte-size parser (settings.ParseBytes): 1048576, 512MiB, 2GiB, 1.5Gi,
// or 2GB (powers of 1000).
type byteSize int64

func (b *byteSize) Set(s string) error {
	n, err := settings.ParseBytes(s)
	if err != nil {
		return fmt.Errorf("byte size %q: %w", s, err)
	}
	*b = byteSize(n)
	return nil
}

func (b *byteSize) String() string {
	if *b == 0 {
		return "0"
	}
	return units.BytesSize(float64(*b))
}
