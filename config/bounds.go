package config

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/kelseyhightower/envconfig"
)

// Bound is the range of values a numeric setting takes, and its default:
// the one place both are written. Validate and its error text read it, so
// does warren help (Usage), and the chart's schema test and the README's
// table of variables are checked against it.
type Bound struct {
	// Var is the variable, such as WARREN_MAX_PREFETCH.
	Var string
	// Unit says what Min and Max count, and how they are written.
	Unit Unit
	// Min and Max are the smallest and the largest value allowed.
	Min, Max int64
	// List: the variable holds values separated by commas, each in range.
	List bool
	// Default is the value of the variable when it is unset, as it is
	// written; empty for none. It is the field's default tag, which
	// envconfig applies and warren help shows.
	Default string

	// want is what the error text asks for: a format of the minimum
	// (%[1]s), the maximum (%[2]s) and the default (%[3]s).
	want string
}

// Unit is what the bounds of a setting count.
type Unit int

// Units.
const (
	// Count is a plain integer: 1, 65535.
	Count Unit = iota
	// Size is bytes, written as Bytes are: 1Mi, 1024Gi.
	Size
	// Duration is nanoseconds, written as Go durations without their
	// zero parts: 1ms, 10m, 168h.
	Duration
	// Rate is events per second: the value may have a fraction (0.5),
	// its bounds are whole and written as Count's.
	Rate
)

// bounds are warren's bounded settings. A new one is a line here and a
// call of within in Validate.
var bounds = []Bound{
	{Var: "WARREN_PREFETCH", Min: 1, Max: 65535, want: "an integer from %[1]s to %[2]s"},
	{Var: "WARREN_MAX_PREFETCH", Min: 1, Max: 65535, want: "an integer from %[1]s to %[2]s"},
	// Below a few frames (128 KiB each) every message would come alone.
	{Var: "WARREN_MAX_INFLIGHT_BYTES", Unit: Size, Min: 1 << 20, Max: 1 << 40,
		want: "a size from %[1]s to %[2]s: bytes, or a whole number with the suffix Ki, Mi or Gi, such as 256Mi"},
	// At most the prefetch too, which Validate checks and says.
	{Var: "WARREN_CONCURRENCY", Min: 1, Max: 65535,
		want: "an integer from %[1]s to WARREN_PREFETCH, or to WARREN_MAX_PREFETCH when WARREN_PREFETCH is unset"},
	{Var: "WARREN_RETRY_DELAYS", Unit: Duration, List: true, Min: int64(time.Millisecond), Max: int64(24 * time.Hour),
		want: "durations from %[1]s to %[2]s, comma-separated, such as %[3]s"},
	{Var: "WARREN_MAX_RETRY_AFTER", Unit: Duration, Min: int64(time.Second), Max: int64(168 * time.Hour),
		want: "a duration from %[1]s to %[2]s, such as %[3]s"},
	{Var: "WARREN_MAX_ATTEMPTS", Min: 1, Max: 1000, want: "an integer from %[1]s to %[2]s"},
	// 0 is none; any other value needs a quorum queue, which Validate
	// checks.
	{Var: "WARREN_DELIVERY_LIMIT", Min: 0, Max: 1000,
		want: "0 (none), or an integer from 1 to %[2]s with WARREN_QUEUE_TYPE=quorum"},
	{Var: "WARREN_HTTP_DEAD_STATUSES", List: true, Min: 400, Max: 599, want: "HTTP statuses from %[1]s to %[2]s, comma-separated"},
	{Var: "WARREN_EXEC_DEAD_EXIT_CODES", List: true, Min: 1, Max: 255, want: "exit codes from %[1]s to %[2]s, comma-separated"},
	// At most RabbitMQ's default max_message_size: a larger reply the
	// broker refuses.
	{Var: "WARREN_REPLY_MAX_BYTES", Unit: Size, Min: 1 << 10, Max: 128 << 20,
		want: "a size from %[1]s to %[2]s: bytes, or a whole number with the suffix Ki, Mi or Gi, such as 1Mi"},
	{Var: "WARREN_CIRCUIT_FAILURES", Min: 1, Max: 10000, want: "an integer from %[1]s to %[2]s"},
	{Var: "WARREN_CIRCUIT_WINDOW", Unit: Duration, Min: int64(time.Second), Max: int64(24 * time.Hour),
		want: "a duration from %[1]s to %[2]s, such as %[3]s"},
	{Var: "WARREN_CIRCUIT_MAX_PROBE_INTERVAL", Unit: Duration, Min: int64(10 * time.Millisecond), Max: int64(time.Hour),
		want: "a duration from %[1]s to %[2]s, such as %[3]s"},
	// 0 is no limit; a fraction is a call every few seconds.
	{Var: "WARREN_RATE_LIMIT", Unit: Rate, Min: 0, Max: 100000,
		want: "0 (no limit), or messages per second up to %[2]s, fractions allowed, such as 20 or 0.5"},
	{Var: "WARREN_HEARTBEAT", Unit: Duration, Min: int64(time.Second), Max: int64(10 * time.Minute),
		want: "a duration from %[1]s to %[2]s, such as %[3]s"},
}

// Bounds returns warren's bounded settings, each with its default.
func Bounds() []Bound {
	defs := defaults()
	bs := make([]Bound, len(bounds))
	for i, b := range bounds {
		b.Default = defs[b.Var]
		bs[i] = b
	}
	return bs
}

// boundOf returns the range of the variable name (its Default unset).
// It panics if name has none: Validate names a variable that bounds
// lacks, which every test of Load would show.
func boundOf(name string) Bound {
	for _, b := range bounds {
		if b.Var == name {
			return b
		}
	}
	panic("config: no bound for " + name)
}

// within reports whether v is in the range of the variable name; NaN is
// in none.
func within[T ~int | ~int64 | ~float64](name string, v T) bool {
	b := boundOf(name)
	// Compared as float64: exact for the bounds (below 2^53), and a
	// fraction such as 0.5 is not truncated into range.
	return float64(b.Min) <= float64(v) && float64(v) <= float64(b.Max)
}

// Format writes v as the variable is written.
func (b Bound) Format(v int64) string {
	switch b.Unit {
	case Size:
		return Bytes(v).String()
	case Duration:
		s := time.Duration(v).String()
		// 24h0m0s is 24h; 1m30s stays.
		if strings.HasSuffix(s, "m0s") {
			s = strings.TrimSuffix(s, "0s")
		}
		if strings.HasSuffix(s, "h0m") {
			s = strings.TrimSuffix(s, "0m")
		}
		return s
	}
	return strconv.FormatInt(v, 10)
}

// Range says the range in words, as the README and warren help write it:
// "1 to 65535".
func (b Bound) Range() string {
	return b.Format(b.Min) + " to " + b.Format(b.Max)
}

// Want returns what the error text of the variable asks for.
func (b Bound) Want() string {
	return fmt.Sprintf(b.want, b.Format(b.Min), b.Format(b.Max), b.Default)
}

// defaults returns the default of every variable that has one, from the
// default tags of Config.
func defaults() map[string]string {
	var out strings.Builder
	if err := envconfig.Usagef(Prefix, &Config{}, &out, "{{range .}}{{usage_key .}}={{usage_default .}}\n{{end}}"); err != nil {
		return nil
	}
	defs := make(map[string]string)
	for _, line := range strings.Split(out.String(), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && v != "" {
			defs[k] = v
		}
	}
	return defs
}

// withBounds adds to wants what each bounded variable asks for.
func withBounds(wants map[string]string) map[string]string {
	for _, b := range Bounds() {
		wants[b.Var] = b.Want()
	}
	return wants
}
