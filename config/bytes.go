package config

import (
	"fmt"
	"strconv"
	"strings"
)

// Bytes is a size in bytes, written as a whole number with an optional
// binary suffix, as Kubernetes writes memory: Ki, Mi, Gi (1024, 1024²,
// 1024³). 256Mi is 268435456.
type Bytes int64

// byteUnits are the suffixes Bytes takes, largest first.
var byteUnits = []struct {
	suffix string
	size   int64
}{{"Gi", 1 << 30}, {"Mi", 1 << 20}, {"Ki", 1 << 10}}

// Decode parses s; envconfig calls it for a variable of type Bytes.
func (b *Bytes) Decode(s string) error {
	num, unit := s, int64(1)
	for _, u := range byteUnits {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			num, unit = n, u.size
			break
		}
	}
	// Digits only: no sign, no spaces, no 0x.
	if num == "" || strings.Trim(num, "0123456789") != "" {
		return fmt.Errorf("bytes %q: not a whole number with an optional Ki, Mi or Gi", s)
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n > (1<<62)/unit {
		return fmt.Errorf("bytes %q: too large", s)
	}
	*b = Bytes(n * unit)
	return nil
}

// String writes b with the largest suffix that divides it.
func (b Bytes) String() string {
	for _, u := range byteUnits {
		if b != 0 && int64(b)%u.size == 0 {
			return strconv.FormatInt(int64(b)/u.size, 10) + u.suffix
		}
	}
	return strconv.FormatInt(int64(b), 10)
}
