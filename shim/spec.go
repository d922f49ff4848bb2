//go:build linux

package shim

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/precopy/precopy/precopy/settings"
)

// specFacts are what the shim needs to know of a container's OCI spec
// besides its settings.
type specFacts struct {
	// readonlyRootfs: root.readonly, which makes an early thaw safe (no
	// rw-layer change can follow the dump).
	readonlyRootfs bool
	// ownNetns: the container has a network namespace other than the
	// host's (a new one, or one it joins, such as its pod's), which CRIU
	// locks during the dump (see criuConfig); netnsPath is the one it
	// joins, "" for one runc makes.
	ownNetns  bool
	netnsPath string
	// criuConfig is the CRIU config file the container names itself
	// (org.criu.config), "" if none (see network.go).
	criuConfig string
}

// readSpec reads the container's settings (defaults with its annotations
// over them) and specFacts from the bundle's OCI spec.
func readSpec(bundle string, defaults settings.Settings) (settings.Settings, specFacts, error) {
	b, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		return settings.Settings{}, specFacts{}, err
	}
	var spec struct {
		Annotations map[string]string `json:"annotations"`
		Root        *struct {
			Readonly bool `json:"readonly"`
		} `json:"root"`
		Linux *struct {
			Namespaces []struct {
				Type string `json:"type"`
				Path string `json:"path"`
			} `json:"namespaces"`
		} `json:"linux"`
	}
	if err := json.Unmarshal(b, &spec); err != nil {
		return settings.Settings{}, specFacts{}, fmt.Errorf("read OCI spec: %w", err)
	}
	var facts specFacts
	facts.readonlyRootfs = spec.Root != nil && spec.Root.Readonly
	facts.criuConfig = spec.Annotations[criuAnnotation]
	if spec.Linux != nil {
		for _, ns := range spec.Linux.Namespaces {
			if ns.Type == "network" {
				facts.ownNetns, facts.netnsPath = true, ns.Path
			}
		}
	}
	cs, err := defaults.With(spec.Annotations)
	return cs, facts, err
}
