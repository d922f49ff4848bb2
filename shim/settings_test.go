//go:build linux

package shim

import "testing"

func TestWithFixedCost(t *testing.T) {
	s := DefaultSettings()
	def := s.Policy.FinalDumpFixedCost
	if got := s.withFixedCost(0).Policy.FinalDumpFixedCost; got != def {
		t.Errorf("nothing measured: %v, want the default %v", got, def)
	}
	if got := s.withFixedCost(def / 2).Policy.FinalDumpFixedCost; got != def {
		t.Errorf("measured below the default: %v, want %v", got, def)
	}
	if got := s.withFixedCost(3 * def).Policy.FinalDumpFixedCost; got != 3*def {
		t.Errorf("measured above the default: %v, want %v", got, 3*def)
	}
}
