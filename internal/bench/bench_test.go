package bench

import (
	"context"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/warren-mq/warren/internal/brokertest"
	"github.com/warren-mq/warren/internal/warrentest"
)

func TestMedian(t *testing.T) {
	tests := []struct {
		in   []float64
		want float64
	}{
		{nil, 0},
		{[]float64{3}, 3},
		{[]float64{5, 1, 3}, 3},
		{[]float64{4, 1, 3, 2}, 2.5},
	}
	for _, tt := range tests {
		in := slices.Clone(tt.in)
		if got := median(in); got != tt.want {
			t.Errorf("median(%v) = %v, want %v", tt.in, got, tt.want)
		}
		if !slices.Equal(in, tt.in) {
			t.Errorf("median reordered its input: %v", in)
		}
	}
}

// TestRunPrintsEveryRow runs the whole benchmark, made small, against the
// test broker with the binary built as `make build` builds it: every row
// of the table is there with a rate, and every ratio is a number.
func TestRunPrintsEveryRow(t *testing.T) {
	if testing.Short() {
		t.Skip("runs warren a dozen times")
	}
	bin, err := warrentest.Build(t.TempDir(), "../../cmd/warren", []string{"CGO_ENABLED=0"}, "-trimpath")
	if err != nil {
		t.Fatal(err)
	}
	// The link part's link runs as warren-bench runs it: "warren-bench
	// link", a process of its own.
	self, err := warrentest.Build(t.TempDir(), "../../cmd/warren-bench", nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var out strings.Builder
	o := Options{Messages: 1000, Tutorial: 200, Handler: 500, ExecN: 20, FairN: 24, QueueTypes: []string{"classic"}, Rounds: 1}
	if err := Run(ctx, Env{URL: brokertest.URL(), Binary: bin, LinkCommand: []string{self, "link"}}, o, &out); err != nil {
		t.Fatalf("Run: %v\n%s", err, out.String())
	}
	table := out.String()
	for _, row := range []string{
		"noop drain, at defaults (adaptive prefetch, default concurrency), vs plain",
		"noop drain, at defaults (adaptive prefetch, default concurrency), vs the tutorial",
		"noop drain, prefetch 200, concurrency 4, vs plain",
		"noop drain, prefetch 200, concurrency 16, vs plain",
		"noop drain, prefetch 1000, concurrency 32, vs plain",
		"noop drain, prefetch 200, concurrency 16, vs the tutorial",
		"http handler (local server, 204 at once), concurrency 16, vs a bare Go client loop",
		"http handler, concurrency 16, vs a plain consumer posting each message",
		"exec handler (cat >/dev/null) at defaults, vs amqp-consume running cat",
		"cat started by a bare Go loop (no broker), 4 at a time, vs one at a time: what commands side by side gain here",
		"fair share at adaptive prefetch: 3 replicas x concurrency 4, 24 messages of 500ms: all done in",
		"fair share: a replica more started once they are queued: its first message after",
		"the plain consumer itself, vs the tutorial, the same run",
		"noop drain, at defaults (adaptive prefetch, default concurrency), vs the tutorial (prefetch 1, ack each), over a link of",
		"the plain consumer (prefetch 200, ack every 50), vs the tutorial, the same link",
		"warren publish -count, confirmed",
		"warren (http handler, prefetch 200, concurrency 16)",
		"plain consumer (prefetch 200, ack each)",
	} {
		if !strings.Contains(table, row) {
			t.Errorf("no row %q in:\n%s", row, table)
		}
	}
	if PikaPython() != "" {
		for _, row := range []string{
			"noop drain, at defaults (adaptive prefetch, default concurrency), vs the pika tutorial's worker.py",
			"the same loop in Go (the tutorial row's reference), vs the pika tutorial's worker.py",
		} {
			if !strings.Contains(table, row) {
				t.Errorf("no row %q in:\n%s", row, table)
			}
		}
	}
	ratios := regexp.MustCompile(`\s(\d+\.\d+)x`).FindAllStringSubmatch(table, -1)
	if len(ratios) < 6 {
		t.Fatalf("%d ratios in:\n%s", len(ratios), table)
	}
	for _, m := range ratios {
		if r, err := strconv.ParseFloat(m[1], 64); err != nil || r <= 0 {
			t.Errorf("ratio %q is not a positive number", m[0])
		}
	}
	if !strings.Contains(table, "MiB") {
		t.Errorf("no peak RSS in:\n%s", table)
	}
}

// TestBareExec runs a command n times from a bare loop and stops at
// the first that fails, saying why.
func TestBareExec(t *testing.T) {
	tests := []struct {
		name    string
		argv    []string
		wantErr string
	}{
		{"cat", []string{"cat"}, ""},
		{"a failing command", []string{"false"}, "exit status 1"},
		{"no such program", []string{"/nonexistent/warren-bench"}, "no such file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := BareExec(8, 100, 2, tt.argv...)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("BareExec: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("BareExec: %v, want an error saying %q", err, tt.wantErr)
			case tt.wantErr == "" && (r.Rate <= 0 || r.Duration <= 0):
				t.Errorf("BareExec = %+v, want a rate and a duration", r)
			}
		})
	}
}

// TestCPUScaling: all the CPUs at once do about what one does alone or
// more, and no more than one each. The bounds are wide: other tests on
// the machine load one phase of the measure and not the other.
func TestCPUScaling(t *testing.T) {
	got := CPUScaling(100 * time.Millisecond)
	t.Logf("CPU-bound loops on all the CPUs at once: %.2fx one alone", got)
	if n := float64(runtime.GOMAXPROCS(0)); got < 0.25 || got > 2*n {
		t.Errorf("CPUScaling = %.2f, want between 0.25 and %.0f (%v CPUs)", got, 2*n, n)
	}
}

func TestNextPoll(t *testing.T) {
	tests := []struct {
		name       string
		done, left int
		elapsed    time.Duration
		want       time.Duration
	}{
		{"nothing done yet", 0, 2000, 50 * time.Millisecond, pollEvery},
		{"nothing left", 2000, 0, time.Second, pollEvery},
		{"far from the end: at most maxPollEvery", 100, 1900, 100 * time.Millisecond, maxPollEvery},
		{"a quarter of the rest", 1000, 1000, 200 * time.Millisecond, 50 * time.Millisecond},
		{"near the end: pollEvery", 1990, 10, time.Second, pollEvery},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := nextPoll(tt.done, tt.left, tt.elapsed); got != tt.want {
				t.Errorf("nextPoll(%d, %d, %v) = %v, want %v", tt.done, tt.left, tt.elapsed, got, tt.want)
			}
		})
	}
}
