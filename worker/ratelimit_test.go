package worker_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/warren-mq/warren/broker"
	"github.com/warren-mq/warren/internal/brokertest"
	"github.com/warren-mq/warren/worker"
)

// starts records when each handler call began.
type starts struct {
	mu sync.Mutex
	at []time.Time
}

func (s *starts) add() {
	s.mu.Lock()
	s.at = append(s.at, time.Now())
	s.mu.Unlock()
}

func (s *starts) sorted() []time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := slices.Clone(s.at)
	slices.SortFunc(out, func(a, b time.Time) int { return a.Compare(b) })
	return out
}

// busiestSecond returns the most calls that began within one second of
// each other: in any window [t, t+1s).
func busiestSecond(at []time.Time) int {
	most := 0
	for i := range at {
		n := 0
		for j := i; j < len(at) && at[j].Sub(at[i]) < time.Second; j++ {
			n++
		}
		most = max(most, n)
	}
	return most
}

// TestRateLimitSpacesHandlerStarts: with WARREN_RATE_LIMIT at 20 a
// second, 40 handler calls take at least 39/20 s (burst 1: the first
// starts at once), no second holds more than limit+burst starts, though
// 8 handlers could run them at once, and the time waited is measured. A
// retry takes a token like a first attempt: 20 messages that each fail
// once cost 40 calls too.
func TestRateLimitSpacesHandlerStarts(t *testing.T) {
	const (
		limit = 20.0
		burst = 1
		calls = 40
		// jitter is how late a recorded start may be.
		jitter = 100 * time.Millisecond
	)
	for _, tt := range []struct {
		name     string
		messages int
		failOnce bool
	}{
		{"first attempts", calls, false},
		{"retries take tokens too", calls / 2, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			q := brokertest.Queue(t)
			var st starts
			rec := newRecorder(func(_ context.Context, _ *worker.Message, attempt int) error {
				st.add()
				if tt.failOnce && attempt == 1 {
					return errors.New("transient")
				}
				return nil
			})
			// No retry delays: a retry goes to the tail of the queue at once.
			h := start(t, worker.Config{Topology: topology(q), Handler: rec, Concurrency: 8, RateLimit: limit})
			h.waitReady(t)
			bodies := brokertest.Bodies("m", tt.messages)
			brokertest.Publish(t, q, bodies...)
			brokertest.WaitFor(t, 20*time.Second, "every message acked", func() bool {
				return h.metric(t, "warren_messages_total", "outcome", "ack") == float64(len(bodies))
			})
			at := st.sorted()
			if len(at) != calls {
				t.Fatalf("handler called %d times, want %d", len(at), calls)
			}
			span := at[len(at)-1].Sub(at[0])
			busiest := busiestSecond(at)
			t.Logf("%d calls over %s, at most %d in one second, %.2fs waited for tokens",
				len(at), span.Round(time.Millisecond), busiest, h.metric(t, "warren_rate_limit_wait_seconds_total"))
			// A start is recorded when its goroutine runs, which on a busy
			// machine (CI: two cores, the race detector) can be late by tens
			// of milliseconds: 100 ms of slack on the span and one start
			// more in a second. Without the limit, 8 handlers would make
			// all 40 calls within milliseconds.
			if want := time.Duration(float64(calls-burst)/limit*float64(time.Second)) - jitter; span < want {
				t.Errorf("%d calls took %s from first to last, want at least %s at %v a second", calls, span.Round(time.Millisecond), want, limit)
			}
			if busiest > int(limit)+burst+1 {
				t.Errorf("%d calls began within one second, want at most %d (limit %v + burst %d, + 1 for a late start)", busiest, int(limit)+burst+1, limit, burst)
			}
			if w := h.metric(t, "warren_rate_limit_wait_seconds_total"); w < 1 {
				t.Errorf("warren_rate_limit_wait_seconds_total = %v, want at least 1: 8 handlers waited for about 2 s", w)
			}
		})
	}
}

// TestRateLimitDrainIsNotHeldUp: a SIGTERM while a backlog waits for
// tokens (2 a second, 30 prefetched) ends the drain at once: the
// deliveries that wait for a token go back untried, nothing is lost, and
// no handler starts after the drain began.
func TestRateLimitDrainIsNotHeldUp(t *testing.T) {
	q := brokertest.Queue(t)
	var handled atomic.Int32
	rec := newRecorder(func(context.Context, *worker.Message, int) error {
		handled.Add(1)
		return nil
	})
	h := start(t, worker.Config{Topology: topology(q), Handler: rec, Prefetch: 30, Concurrency: 4,
		RateLimit: 2, ShutdownTimeout: 30 * time.Second})
	h.waitReady(t)
	const n = 50
	brokertest.Publish(t, q, brokertest.Bodies("m", n)...)
	brokertest.WaitFor(t, 10*time.Second, "2 messages handled, 30 held", func() bool {
		_, unacked, _ := brokertest.Counts(t, q)
		return handled.Load() >= 2 && unacked == 30
	})
	begin := time.Now()
	if err := h.stop(t); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	d := time.Since(begin)
	t.Logf("Run returned %s after cancel with %d handled", d.Round(time.Millisecond), handled.Load())
	// The backlog held would take 14 s at 2 a second.
	if d > 2*time.Second {
		t.Errorf("Run returned %s after cancel, want within 2 s: waiting for a token must not hold the drain", d.Round(time.Millisecond))
	}
	acked := int(h.metric(t, "warren_messages_total", "outcome", "ack"))
	if calls := rec.calls(); calls != acked {
		t.Errorf("handler called %d times, %d acked: want every call that began finished and acked", calls, acked)
	}
	if ready := brokertest.Ready(t, q); acked+ready != n {
		t.Errorf("%d acked + %d back in the queue = %d, want the %d published", acked, ready, acked+ready, n)
	}
}

// TestRateLimitLeavesWorkForOtherReplicas: a limited replica's adaptive
// prefetch follows its completion rate, so it does not hoard the
// backlog: two replicas at 10 a second on one queue share 60 messages
// about evenly and take about half the time one would.
func TestRateLimitLeavesWorkForOtherReplicas(t *testing.T) {
	q := brokertest.Queue(t)
	const (
		limit = 10.0
		n     = 60
	)
	recs := []*recorder{newRecorder(nil), newRecorder(nil)}
	var hs []*harness
	for _, rec := range recs {
		h := start(t, worker.Config{Topology: topology(q), Handler: rec, Concurrency: 4, RateLimit: limit})
		h.waitReady(t)
		hs = append(hs, h)
	}
	begin := time.Now()
	brokertest.Publish(t, q, brokertest.Bodies("m", n)...)
	brokertest.WaitFor(t, 20*time.Second, "every message handled", func() bool {
		return recs[0].distinct()+recs[1].distinct() == n
	})
	d := time.Since(begin)
	t.Logf("%d messages in %s: %d and %d; prefetch %v and %v", n, d.Round(time.Millisecond), recs[0].calls(), recs[1].calls(),
		hs[0].metric(t, "warren_prefetch"), hs[1].metric(t, "warren_prefetch"))
	for i, rec := range recs {
		if c := rec.calls(); c < n/4 {
			t.Errorf("replica %d handled %d of %d messages, want at least %d: the other hoarded them", i, c, n, n/4)
		}
	}
	// One replica alone would take 6 s.
	if d > 4500*time.Millisecond {
		t.Errorf("two replicas at %v a second took %s for %d messages, want under 4.5 s", limit, d.Round(time.Millisecond), n)
	}
}

// TestRateLimitCircuitProbes: with a rate limit, the circuit breaker
// still opens when the downstream goes down, probes, and closes when it
// is back; then every message is handled.
func TestRateLimitCircuitProbes(t *testing.T) {
	q := brokertest.Queue(t)
	rec, down := downstream()
	h := start(t, worker.Config{Topology: broker.Topology{Queue: q, Declare: true, RetryDelays: []time.Duration{time.Second}},
		Handler: rec, Concurrency: 2, Circuit: circuitConfig, RateLimit: 5})
	h.waitReady(t)
	bodies := brokertest.Bodies("m", 20)
	brokertest.Publish(t, q, bodies...)
	brokertest.WaitFor(t, 10*time.Second, "the circuit open", func() bool { return h.metric(t, "warren_circuit_open") == 1 })
	brokertest.WaitFor(t, 10*time.Second, "two probes", func() bool {
		return h.logs.FilterMessageSnippet("circuit half-open").Len() >= 2
	})
	down.Store(false)
	brokertest.WaitFor(t, 10*time.Second, "the circuit closed", func() bool { return h.metric(t, "warren_circuit_open") == 0 })
	brokertest.WaitFor(t, 20*time.Second, "every message acked", func() bool {
		return h.metric(t, "warren_messages_total", "outcome", "ack") == float64(len(bodies))
	})
	if m := rec.missing(bodies); len(m) != 0 {
		t.Errorf("messages never handled: %v", m)
	}
	if n := h.metric(t, "warren_messages_total", "outcome", "dead"); n != 0 {
		t.Errorf("%v messages dead, want 0", n)
	}
}
