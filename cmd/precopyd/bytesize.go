package main

import (
	"fmt"

	units "github.com/docker/go-units"
)

// byteSize is a flag.Value for a byte count with an optional binary suffix:
// 1048576, 512MiB, 2GiB, 1.5g. Decimal-looking suffixes (MB, GB) are read
// as binary too, as docker's --memory does.
type byteSize int64

func (b *byteSize) Set(s string) error {
	n, err := units.RAMInBytes(s)
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
