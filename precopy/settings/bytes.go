package settings

import (
	"errors"
	"fmt"
	"math"
	"math/big"
	"strings"
)

// byteUnits are the units ParseBytes knows, lower-cased. One meaning for
// each, as IEC 80000-13 and Kubernetes quantities have it: KiB, MiB, GiB,
// TiB (and Ki, Mi, ...) are powers of 1024; KB, MB, GB, TB (and K, M, ...)
// powers of 1000. (docker's --memory reads MB as MiB; we do not.)
var byteUnits = map[string]uint64{
	"": 1, "b": 1,
	"k": 1e3, "kb": 1e3, "ki": 1 << 10, "kib": 1 << 10,
	"m": 1e6, "mb": 1e6, "mi": 1 << 20, "mib": 1 << 20,
	"g": 1e9, "gb": 1e9, "gi": 1 << 30, "gib": 1 << 30,
	"t": 1e12, "tb": 1e12, "ti": 1 << 40, "tib": 1 << 40,
}

// UnitList names the units for error messages and flag help.
const UnitList = "B, KiB, MiB, GiB, TiB (powers of 1024) or KB, MB, GB, TB (powers of 1000)"

// ParseBytes reads a byte size: "536870912", "512MiB", "512Mi", "0.5GiB",
// "2GB", "1.5 G" (see byteUnits for what each unit means). Units are
// case-insensitive; fractions round down to a whole byte. It is the only
// byte-size parser of precopy: annotations, the config file and
// precopyd's flags all read sizes with it.
func ParseBytes(s string) (uint64, error) {
	s = strings.TrimSpace(s)
	if strings.HasPrefix(s, "-") {
		return 0, errors.New("negative")
	}
	i := strings.IndexFunc(s, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	if i < 0 {
		i = len(s)
	}
	num, unit := s[:i], strings.TrimSpace(s[i:])
	mult, ok := byteUnits[strings.ToLower(unit)]
	if !ok {
		return 0, fmt.Errorf("unknown unit %q, want %s", unit, UnitList)
	}
	r, ok := new(big.Rat).SetString(num)
	if num == "" || strings.Count(num, ".") > 1 || !ok {
		return 0, fmt.Errorf("no number before the unit")
	}
	r.Mul(r, new(big.Rat).SetInt(new(big.Int).SetUint64(mult)))
	n := new(big.Int).Quo(r.Num(), r.Denom()) // not negative, so this rounds down
	if !n.IsUint64() || n.Uint64() > math.MaxInt64 {
		return 0, errors.New("too large")
	}
	return n.Uint64(), nil
}
