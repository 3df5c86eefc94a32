package config

import (
	"bytes"
	"errors"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestBoundWants pins what the error text of each bounded variable asks
// for, as it read before the bounds were a table.
func TestBoundWants(t *testing.T) {
	tests := []struct {
		give string
		want string
	}{
		{"WARREN_PREFETCH", "an integer from 1 to 65535"},
		{"WARREN_MAX_PREFETCH", "an integer from 1 to 65535"},
		{"WARREN_MAX_INFLIGHT_BYTES", "a size from 1Mi to 1024Gi: bytes, or a whole number with the suffix Ki, Mi or Gi, such as 256Mi"},
		{"WARREN_CONCURRENCY", "an integer from 1 to WARREN_PREFETCH, or to WARREN_MAX_PREFETCH when WARREN_PREFETCH is unset"},
		{"WARREN_RETRY_DELAYS", "durations from 1ms to 24h, comma-separated, such as 1s,10s,1m"},
		{"WARREN_MAX_RETRY_AFTER", "a duration from 1s to 168h, such as 1h"},
		{"WARREN_MAX_ATTEMPTS", "an integer from 1 to 1000"},
		{"WARREN_DELIVERY_LIMIT", "0 (none), or an integer from 1 to 1000 with WARREN_QUEUE_TYPE=quorum"},
		{"WARREN_HTTP_DEAD_STATUSES", "HTTP statuses from 400 to 599, comma-separated"},
		{"WARREN_EXEC_DEAD_EXIT_CODES", "exit codes from 1 to 255, comma-separated"},
		{"WARREN_HEARTBEAT", "a duration from 1s to 10m, such as 10s"},
		{"WARREN_CIRCUIT_FAILURES", "an integer from 1 to 10000"},
		{"WARREN_CIRCUIT_WINDOW", "a duration from 1s to 24h, such as 30s"},
		{"WARREN_CIRCUIT_MAX_PROBE_INTERVAL", "a duration from 10ms to 1h, such as 1m"},
		{"WARREN_RATE_LIMIT", "0 (no limit), or messages per second up to 100000, fractions allowed, such as 20 or 0.5"},
		{"WARREN_REPLY_MAX_BYTES", "a size from 1Ki to 128Mi: bytes, or a whole number with the suffix Ki, Mi or Gi, such as 1Mi"},
	}
	for _, tt := range tests {
		if got := wants[tt.give]; got != tt.want {
			t.Errorf("wants[%s] = %q, want %q", tt.give, got, tt.want)
		}
	}
	if n := len(Bounds()); n != len(tests) {
		t.Errorf("Bounds() has %d settings, want the %d above", n, len(tests))
	}
}

// boundEnv is what a bounded variable needs beside it to be valid at
// either end of its range.
var boundEnv = map[string][]string{
	"WARREN_CONCURRENCY":    {"WARREN_PREFETCH", "65535"},
	"WARREN_DELIVERY_LIMIT": {"WARREN_QUEUE_TYPE", "quorum"},
}

// TestBoundsValidate: Load takes each end of a bounded variable's range,
// and refuses a value one step beyond either, naming the variable and
// asking for what the bound says.
func TestBoundsValidate(t *testing.T) {
	for _, b := range Bounds() {
		for _, tt := range []struct {
			give   int64
			wantOK bool
		}{
			{b.Min, true},
			{b.Max, true},
			{b.Min - 1, false},
			{b.Max + 1, false},
		} {
			value := b.Format(tt.give)
			if b.Unit == Duration {
				value = time.Duration(tt.give).String() // 999.999µs, below 1ms
			}
			env := map[string]string{"WARREN_QUEUE": "q", b.Var: value}
			if kv := boundEnv[b.Var]; kv != nil {
				env[kv[0]] = kv[1]
			}
			setEnv(t, env)
			_, err := Load()
			var e *Error
			switch {
			case tt.wantOK && err != nil:
				t.Errorf("Load() with %s=%s = %v, want nil: the value is in range", b.Var, value, err)
			// WARREN_CONCURRENCY's error says the prefetch it must not pass.
			case !tt.wantOK && (!errors.As(err, &e) || e.Var != b.Var || (e.Want != b.Want() && !strings.HasPrefix(e.Want, "an integer from 1 to WARREN_PREFETCH ("))):
				t.Errorf("Load() with %s=%s = %v, want an error naming it and asking for %q", b.Var, value, err, b.Want())
			}
		}
	}
}

func TestBoundFormat(t *testing.T) {
	for _, tt := range []struct {
		unit Unit
		give int64
		want string
	}{
		{Count, 65535, "65535"},
		{Count, -1, "-1"},
		{Size, 1 << 20, "1Mi"},
		{Size, 1 << 40, "1024Gi"},
		{Size, 1<<20 - 1, "1048575"},
		{Duration, int64(time.Millisecond), "1ms"},
		{Duration, int64(24 * time.Hour), "24h"},
		{Duration, int64(10 * time.Minute), "10m"},
		{Duration, int64(90 * time.Minute), "1h30m"},
		{Duration, int64(90 * time.Second), "1m30s"},
		{Duration, int64(time.Hour + time.Second), "1h0m1s"},
		{Rate, 100000, "100000"},
	} {
		if got := (Bound{Unit: tt.unit}).Format(tt.give); got != tt.want {
			t.Errorf("Bound{Unit: %d}.Format(%d) = %q, want %q", tt.unit, tt.give, got, tt.want)
		}
	}
}

// TestUsageShowsBounds: warren help shows each bounded variable's default
// and range.
func TestUsageShowsBounds(t *testing.T) {
	var out bytes.Buffer
	if err := Usage(&out); err != nil {
		t.Fatalf("Usage() = %v, want nil", err)
	}
	lines := map[string]string{}
	for _, line := range strings.Split(out.String(), "\n") {
		name, _, _ := strings.Cut(line, " ")
		lines[name] = line
	}
	for _, b := range Bounds() {
		line := lines[b.Var]
		if !strings.Contains(line, " "+b.Range()) {
			t.Errorf("Usage() shows %q, want the range %s", line, b.Range())
		}
		if fields := strings.Fields(line); b.Default != "" && (len(fields) < 2 || fields[1] != b.Default) {
			t.Errorf("Usage() shows %q, want the default %s", line, b.Default)
		}
	}
}

// TestReadmeVariables checks the table of variables of the README against
// the configuration: a row for every variable warren reads and none for
// another, each default as the default tag has it, and the range of each
// bounded variable in words ("1 to 65535").
func TestReadmeVariables(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, _ := strings.Cut(string(b), "\n## Configuration\n")
	section, _, _ = strings.Cut(section, "\n## ")
	type row struct{ def, meaning string }
	rows := map[string]row{}
	name := regexp.MustCompile("`(WARREN_[A-Z0-9_]+)`")
	for _, line := range strings.Split(section, "\n") {
		cells := strings.Split(line, "|") // "", variables, default, meaning, ""
		if !strings.HasPrefix(line, "| `WARREN_") || len(cells) != 5 {
			continue
		}
		for _, m := range name.FindAllStringSubmatch(cells[1], -1) {
			rows[m[1]] = row{def: strings.TrimSpace(cells[2]), meaning: strings.TrimSpace(cells[3])}
		}
	}
	defs := defaults()
	ranges := map[string]string{}
	for _, bd := range Bounds() {
		ranges[bd.Var] = bd.Range()
	}
	for _, k := range keys() {
		r, ok := rows[k]
		if !ok {
			t.Errorf("README.md's table of variables has no row for %s", k)
			continue
		}
		delete(rows, k)
		if d := defs[k]; d != "" && !strings.Contains(r.def, "`"+d+"`") {
			t.Errorf("README.md gives %s the default %q, want `%s`", k, r.def, d)
		}
		// "1 to 65535", "(1 to 255)", but not "11 to 65535".
		if rg := ranges[k]; rg != "" && !strings.Contains(" "+r.meaning, " "+rg) && !strings.Contains(r.meaning, "("+rg) {
			t.Errorf("README.md's row for %s does not say its range, %s", k, rg)
		}
	}
	for k := range rows {
		t.Errorf("README.md's table of variables has a row for %s, which warren does not read", k)
	}
}

// TestBoundDefaultsInRange: every default of a bounded variable is in its
// range.
func TestBoundDefaultsInRange(t *testing.T) {
	for _, b := range Bounds() {
		if b.Default == "" {
			continue
		}
		for _, v := range strings.Split(b.Default, ",") {
			n, err := parseBoundValue(b.Unit, v)
			if err != nil || n < b.Min || n > b.Max {
				t.Errorf("%s defaults to %s, want each value from %s (%v)", b.Var, b.Default, b.Range(), err)
			}
		}
	}
}

func parseBoundValue(u Unit, s string) (int64, error) {
	switch u {
	case Size:
		var b Bytes
		err := b.Decode(s)
		return int64(b), err
	case Duration:
		d, err := time.ParseDuration(s)
		return int64(d), err
	}
	return strconv.ParseInt(s, 10, 64)
}
