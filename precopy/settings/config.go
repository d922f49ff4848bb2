package settings

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"

	"github.com/pelletier/go-toml/v2"
)

// ConfigPath is the shim's config file: defaults for every container's
// settings. The environment variable PRECOPY_CONFIG names another one
// (tests use it). A missing file means the built-in defaults.
const ConfigPath = "/etc/precopy/config.toml"

// configKeyPrecopyd is the config file's key for precopyd's socket, and
// configKeyRoundsDir the one for where the rounds are kept; the other
// keys are the io.precopy.* annotation keys without the prefix. These two
// name host paths: a container's annotations must not choose them.
const (
	configKeyPrecopyd  = "precopyd-address"
	configKeyRoundsDir = "rounds-dir"
)

// Path is the config file this process reads: $PRECOPY_CONFIG, or
// ConfigPath.
func Path() string {
	if p := os.Getenv("PRECOPY_CONFIG"); p != "" {
		return p
	}
	return ConfigPath
}

// Load reads the defaults from the config file at path, a flat TOML table
// whose keys are those of the io.precopy.* annotations without the prefix,
// plus precopyd-address:
//
//	mode = "always"
//	target-downtime = "300ms"
//	max-rounds = 5
//	precopyd-address = "/run/precopyd/precopyd.sock"
//	rounds-dir = "/var/lib/precopy/rounds"
//
// Values parse as the annotations do, and mode may also be annotated; an
// unknown key or a bad value is an error naming it. A missing file gives
// Default.
func Load(path string) (Settings, error) {
	s := Default()
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return s, fmt.Errorf("precopy config: %w", err)
	}
	var raw map[string]any
	if err := toml.Unmarshal(b, &raw); err != nil {
		return s, fmt.Errorf("precopy config %s: %w", path, err)
	}
	annotations := map[string]string{}
	for _, k := range slices.Sorted(maps.Keys(raw)) {
		switch v := raw[k].(type) {
		case string:
			switch k {
			case configKeyPrecopyd:
				s.PrecopydAddress = v
				continue
			case configKeyRoundsDir:
				if v != "" && (!filepath.IsAbs(v) || filepath.Clean(v) != v) {
					return s, fmt.Errorf("precopy config %s: %s %q: must be an absolute, clean path", path, k, v)
				}
				s.RoundsDir = v
				continue
			}
			annotations[AnnotationPrefix+k] = v
		case int64, float64, bool:
			annotations[AnnotationPrefix+k] = fmt.Sprint(v)
		default:
			return s, fmt.Errorf("precopy config %s: %s: a %T is not a setting's value", path, k, v)
		}
	}
	// The file's mode stays as written (annotated included): it is the
	// default a container's own io.precopy.mode overrides (With).
	s, err = apply(s, annotations)
	if err != nil {
		return s, fmt.Errorf("precopy config %s: %w", path, err)
	}
	return s, nil
}
