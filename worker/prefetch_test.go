package worker

import (
	"fmt"
	"math"
	"slices"
	"testing"
	"time"
)

func TestPrefetchTarget(t *testing.T) {
	for _, tt := range []struct {
		name             string
		concurrency, max int
		rate             float64 // completions per second
		rtt              time.Duration
		want             int
	}{
		// 4 handlers of 500 ms: slower than the round trip by far.
		{name: "slow handlers: concurrency", concurrency: 4, max: 1000, rate: 8, rtt: time.Millisecond, want: 4},
		// 4 handlers of 50 ms: 2 x 80/s x 6 ms = 0.96, a slot more.
		{name: "a round trip near a call's time: one more", concurrency: 4, max: 1000, rate: 80, rtt: time.Millisecond, want: 5},
		{name: "idle: concurrency", concurrency: 4, max: 1000, rate: 0, rtt: time.Millisecond, want: 4},
		// 2 x 29999/s x (1 ms + 5 ms of ack delay) = 359.99.
		{name: "fast handlers: hundreds", concurrency: 4, max: 1000, rate: 29999, rtt: time.Millisecond, want: 364},
		// 2 x 999/s x 15 ms = 29.97.
		{name: "a longer round trip needs more", concurrency: 16, max: 1000, rate: 999, rtt: 10 * time.Millisecond, want: 46},
		{name: "bounded by max", concurrency: 4, max: 1000, rate: 1e6, rtt: time.Millisecond, want: 1000},
		{name: "no overflow", concurrency: 4, max: 1000, rate: math.MaxFloat64, rtt: time.Hour, want: 1000},
		{name: "max below concurrency: concurrency wins", concurrency: 8, max: 4, rate: 1e6, rtt: time.Millisecond, want: 8},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := newPrefetchController(tt.concurrency, tt.max, DefaultMaxInflightBytes)
			if got := c.target(tt.rate, tt.rtt); got != tt.want {
				t.Errorf("target(%v/s, %v) with concurrency %d, max %d = %d, want %d", tt.rate, tt.rtt, tt.concurrency, tt.max, got, tt.want)
			}
		})
	}
}

func TestPrefetchControllerStartsAtConcurrency(t *testing.T) {
	if got := newPrefetchController(4, 1000, DefaultMaxInflightBytes).window; got != 4 {
		t.Errorf("first window for concurrency 4 = %d, want 4", got)
	}
	if got := newPrefetchController(4, 4, DefaultMaxInflightBytes).window; got != 4 {
		t.Errorf("first window for concurrency 4, max 4 = %d, want 4", got)
	}
}

func TestPrefetchControllerSwitches(t *testing.T) {
	const q = sampleEvery // 25 ms
	var (
		// 100 completions in 25 ms: 4000/s; with the default round
		// trip, 1 ms, the target is 4 + round(2 x 4000 x 6 ms) = 52.
		fast = sample{elapsed: q, completed: 100}
		// 6000/s: target 76.
		faster = sample{elapsed: q, completed: 150}
		// 8/s: target 4.
		slow = sample{elapsed: 250 * time.Millisecond, completed: 2, rtts: 2, rttSum: 2 * time.Millisecond}
		idle = sample{elapsed: 250 * time.Millisecond}
	)
	repeat := func(n int, s sample) []sample { return slices.Repeat([]sample{s}, n) }
	for _, tt := range []struct {
		name  string
		start int           // the window in force at first; 0: the controller's own
		max   int           // 0: 1000
		link  time.Duration // how long basic.qos took; 0: not measured
		give  []sample
		want  []string // "i:window": the switch due after sample i
	}{
		{name: "grows after 50 ms at twice the window or more", give: repeat(8, fast), want: []string{"1:52"}},
		{name: "a burst shorter than 50 ms does not move it", give: append(repeat(1, fast), repeat(20, idle)...)},
		{name: "an interval within the hysteresis restarts the hold",
			give: slices.Concat(repeat(1, fast), repeat(1, idle), repeat(3, fast)), want: []string{"3:52"}},
		{name: "grows to the smallest target of the hold", give: []sample{faster, fast, faster}, want: []string{"1:52"}},
		{name: "shrinks only after five seconds at half or less", start: 100, give: repeat(25, slow), want: []string{"19:4"}},
		{name: "shrinks to the largest target of the hold", start: 100,
			give: slices.Concat(repeat(19, slow), []sample{{elapsed: 250 * time.Millisecond, completed: 400}}), want: []string{"19:23"}},
		{name: "idle shrinks to concurrency", start: 100, give: repeat(20, idle), want: []string{"19:4"}},
		// 3840/s: target 50.
		{name: "a target within 2x either way keeps the window", start: 40, give: repeat(200, sample{elapsed: q, completed: 96})},
		{name: "grows to max and no further", max: 20, give: repeat(12, fast), want: []string{"1:20"}},
		{name: "stays at concurrency when idle", start: 4, give: repeat(40, idle)},
		// A quorum queue's turn-around: 4 ms. 4 + round(2 x 4000 x 9 ms) = 76.
		{name: "a longer round trip asks for more", give: repeat(3, sample{elapsed: q, completed: 100, rtts: 100, rttSum: 400 * time.Millisecond}),
			want: []string{"1:76"}},
		{name: "no time, no sample", give: repeat(10, sample{completed: 200})},
		// A window that limits the rate makes the target understate the
		// need: a window of 40 full at 4000/s (target 52, 1.3x) holds;
		// at 6000/s (target 76, 1.9x) too; at 8000/s (target 100, 2.5x)
		// it grows 8x, to 320, not to 100.
		{name: "a target far above grows the window 8x", start: 40, give: repeat(3, sample{elapsed: q, completed: 200}), want: []string{"1:320"}},
		{name: "8x no further than max", start: 40, max: 120, give: repeat(3, sample{elapsed: q, completed: 200}), want: []string{"1:120"}},
		{name: "a target above 8x is the step", start: 5, give: repeat(3, faster), want: []string{"1:76"}},
		// Over a 100 ms link a window of 4 arrives in bursts a round trip
		// apart: a burst, then three idle samples. Judged over two round
		// trips, 40/s: 4 + round(2 x 40/s x 105 ms) = 12, 3x the window.
		{name: "bursts a round trip apart grow the window over a slow link", link: 100 * time.Millisecond,
			give: slices.Repeat([]sample{{elapsed: q, completed: 4}, {elapsed: q}, {elapsed: q}, {elapsed: q}}, 3), want: []string{"7:32"}},
		{name: "a link faster than the round trip changes nothing", link: 300 * time.Microsecond, give: repeat(8, fast), want: []string{"1:52"}},
		// 8/s over 100 ms: 4 + round(2 x 8/s x 105 ms) = 6, under 2x.
		{name: "slow handlers over a slow link stay at concurrency", link: 100 * time.Millisecond, give: repeat(40, slow)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			max := tt.max
			if max == 0 {
				max = 1000
			}
			c := newPrefetchController(4, max, DefaultMaxInflightBytes)
			c.link = tt.link
			if got := switches(c, tt.start, tt.give); !slices.Equal(got, tt.want) {
				t.Errorf("switches = %q, want %q", got, tt.want)
			}
		})
	}
}

// switches feeds samples to c, starting from the window start (0: c's
// own), and returns the switches it asked for as "i:window": the switch
// due after sample i.
func switches(c *prefetchController, start int, samples []sample) []string {
	if start != 0 {
		c.switched(start)
	}
	var got []string
	for i, s := range samples {
		if w, ok := c.observe(s); ok {
			got = append(got, fmt.Sprintf("%d:%d", i, w))
			c.switched(w)
		}
	}
	return got
}

func TestPrefetchRoundTrip(t *testing.T) {
	const q = 100 * time.Millisecond
	ms := time.Millisecond
	for _, tt := range []struct {
		name string
		give []sample
		want time.Duration
	}{
		{name: "none measured: the default", give: []sample{{elapsed: q, completed: 10}}, want: defaultRTT},
		{name: "the mean of an interval", give: []sample{{elapsed: q, rtts: 4, rttSum: 10 * ms}}, want: 2500 * time.Microsecond},
		{name: "an interval without any keeps it", give: []sample{{elapsed: q, rtts: 4, rttSum: 8 * ms}, {elapsed: q}}, want: 2 * ms},
		// A slot refilled only when a message was published, capped at
		// a second by the session, counts as one of 64.
		{name: "an odd one among many", give: []sample{{elapsed: q, rtts: 64, rttSum: 64 * ms}, {elapsed: q, rtts: 1, rttSum: time.Second}},
			want: (63*ms + time.Second) / 64},
		{name: "64 new ones replace the old", give: []sample{{elapsed: q, rtts: 64, rttSum: 64 * ms}, {elapsed: q, rtts: 100, rttSum: 400 * ms}},
			want: 4 * ms},
		{name: "few old ones weigh as few", give: []sample{{elapsed: q, rtts: 1, rttSum: 10 * ms}, {elapsed: q, rtts: 3, rttSum: 6 * ms}},
			want: 4 * ms},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := newPrefetchController(4, 1000, DefaultMaxInflightBytes)
			for _, s := range tt.give {
				c.observe(s)
			}
			if c.rtt != tt.want {
				t.Errorf("round trip after %+v = %v, want %v", tt.give, c.rtt, tt.want)
			}
		})
	}
}

func TestPrefetchBytes(t *testing.T) {
	const (
		q      = sampleEvery
		mi     = 1 << 20
		budget = 64 * mi
	)
	var (
		fast = sample{elapsed: q, completed: 100} // target 52, as above
		idle = sample{elapsed: q}
	)
	big := func(n int) sample { return sample{elapsed: q, completed: 1, largest: n} }
	repeat := func(n int, s sample) []sample { return slices.Repeat([]sample{s}, n) }
	for _, tt := range []struct {
		name  string
		start int // the window in force at first; 0: the controller's own, 4
		give  []sample
		want  []string // "i:window": the switch due after sample i
	}{
		{name: "large bodies shrink the window at once", give: []sample{big(32 * mi)}, want: []string{"0:2"}},
		{name: "a body above the budget: one at a time", start: 100, give: []sample{big(100 * mi)}, want: []string{"0:1"}},
		{name: "the ceiling wins over concurrency", give: []sample{big(64 * mi)}, want: []string{"0:1"}},
		{name: "small bodies do not limit it", give: slices.Concat([]sample{big(1024)}, repeat(3, fast)), want: []string{"2:52"}},
		{name: "a fast rate grows only to the ceiling", start: 4, give: slices.Concat([]sample{big(8 * mi)}, repeat(3, fast)), want: []string{"2:8"}},
		// 32 MiB seen: ceiling 2. The size halves every 10 s: after 10 s
		// (400 samples) the ceiling is 4, the target of idle handlers,
		// and after 20 s it is 8, where a fast rate then takes the window.
		{name: "the ceiling lifts as large bodies are forgotten",
			give: slices.Concat([]sample{big(32 * mi)}, repeat(800, idle), repeat(5, fast)), want: []string{"0:2", "402:4", "802:8"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := newPrefetchController(4, 1000, budget)
			if got := switches(c, tt.start, tt.give); !slices.Equal(got, tt.want) {
				t.Errorf("switches = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestPrefetchTooLarge(t *testing.T) {
	const mi = 1 << 20
	c := newPrefetchController(4, 1000, 64*mi)
	if w, ok := c.tooLarge(40 * mi); !ok || w != 1 {
		t.Errorf("tooLarge(40 MiB) at window 5, budget 64 MiB = %d, %v; want 1, true", w, ok)
	}
	c.switched(1)
	if w, ok := c.tooLarge(100 * mi); ok || w != 1 {
		t.Errorf("tooLarge(100 MiB) at window 1 = %d, %v; want 1, false: one message always goes through", w, ok)
	}
	if c.why != "bytes" {
		t.Errorf("why = %q, want bytes", c.why)
	}
}
