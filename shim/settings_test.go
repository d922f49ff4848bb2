//go:build linux

package shim

import (
	"testing"

	"github.com/precopy/precopy/settings"
)

func TestWithFixedCost(t *testing.T) {
	s := settings.Default()
	def := s.Policy.FinalDumpFixedCost
	if got := withFixedCost(s, 0).Policy.FinalDumpFixedCost; got != def {
		t.Errorf("nothing measured: %v, want the default %v", got, def)
	}
	if got := withFixedCost(s, def/2).Policy.FinalDumpFixedCost; got != def {
		t.Errorf("measured below the default: %v, want %v", got, def)
	}
	if got := withFixedCost(s, 3*def).Policy.FinalDumpFixedCost; got != 3*def {
		t.Errorf("measured above the default: %v, want %v", got, 3*def)
	}
}
