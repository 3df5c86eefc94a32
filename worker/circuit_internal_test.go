package worker

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
)

func newTestCircuit(t *testing.T, cfg CircuitConfig) *circuit {
	t.Helper()
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	return newCircuit(cfg, zaptest.NewLogger(t), m)
}

// TestCircuitCounts: only failures in a row within the window open the
// circuit; an answer clears the count and closes it.
func TestCircuitCounts(t *testing.T) {
	down := Unavailable(errors.New("refused"))
	t0 := time.Unix(1000, 0)
	for _, tt := range []struct {
		name string
		give []Outcome // Retry: a down failure; Ack, Dead: an answer
		gap  time.Duration
		want bool // open at the end
	}{
		{"threshold reached", []Outcome{Retry, Retry, Retry}, time.Second, true},
		{"one short", []Outcome{Retry, Retry}, time.Second, false},
		{"a success between", []Outcome{Retry, Retry, Ack, Retry}, time.Second, false},
		{"a dead verdict between", []Outcome{Retry, Retry, Dead, Retry}, time.Second, false},
		{"spread past the window", []Outcome{Retry, Retry, Retry}, 6 * time.Second, false},
		{"an answer closes it", []Outcome{Retry, Retry, Retry, Ack}, time.Second, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := newTestCircuit(t, CircuitConfig{Failures: 3, Window: 10 * time.Second})
			now := t0
			for _, o := range tt.give {
				var err error
				if o != Ack {
					err = down
				}
				c.observe(o, err, now)
				now = now.Add(tt.gap)
			}
			if got := c.isOpen(); got != tt.want {
				t.Errorf("after %v %s apart: open = %v, want %v", tt.give, tt.gap, got, tt.want)
			}
		})
	}
}

// TestCircuitProbeIntervals: probes start 1 s apart and double up to the
// ceiling, each within a fifth of its interval; a Retry-After raises the
// wait, up to the ceiling.
func TestCircuitProbeIntervals(t *testing.T) {
	c := newTestCircuit(t, CircuitConfig{Failures: 1, MaxProbeInterval: 5 * time.Second})
	if o := c.observe(Retry, Unavailable(errors.New("503")), time.Now()); o != Requeue {
		t.Fatalf("the failure that opens the circuit: outcome %v, want requeue", o)
	}
	for i, want := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 5 * time.Second, 5 * time.Second} {
		if got := c.nextProbe(); got < want-want/5 || got > want+want/5 {
			t.Errorf("probe %d after %s, want %s ± a fifth", i+1, got, want)
		}
	}
	c.observe(Retry, RetryAfter(Unavailable(errors.New("429")), time.Hour), time.Now())
	if got := c.nextProbe(); got != 5*time.Second {
		t.Errorf("probe after a Retry-After of 1h: %s, want the ceiling 5s", got)
	}
}

// TestCircuitOpenedChan: the channel that cuts a wait for a rate-limit
// turn short is closed when the circuit opens, and a new, open one is
// handed out once it closes; an off breaker never closes one.
func TestCircuitOpenedChan(t *testing.T) {
	closed := func(ch <-chan struct{}) bool {
		select {
		case <-ch:
			return true
		default:
			return false
		}
	}
	c := newTestCircuit(t, CircuitConfig{Failures: 1})
	before := c.openedChan()
	if closed(before) {
		t.Fatal("openedChan closed while the circuit is closed")
	}
	c.observe(Retry, Unavailable(errors.New("refused")), time.Now())
	if !closed(before) || !closed(c.openedChan()) {
		t.Fatal("openedChan not closed once the circuit opened")
	}
	c.observe(Ack, nil, time.Now())
	after := c.openedChan()
	if closed(after) {
		t.Fatal("openedChan closed after the circuit closed again")
	}
	c.observe(Retry, Unavailable(errors.New("refused")), time.Now())
	if !closed(after) {
		t.Fatal("openedChan not closed when the circuit opened a second time")
	}
	var off *circuit
	if off.openedChan() != nil {
		t.Error("an off breaker's openedChan is not nil")
	}
}

// TestCircuitIsSaidBeforeItIsCounted: when warren_circuit_open and
// warren_circuit_openings_total move, the line that says why is already
// in the log, so that an operator (or an alert's runbook) who sees them
// finds it.
func TestCircuitIsSaidBeforeItIsCounted(t *testing.T) {
	c := newTestCircuit(t, CircuitConfig{Failures: 2, Window: time.Minute})
	type seen struct{ gauge, openings float64 }
	lines := make(map[string][]seen)
	hook := func(e zapcore.Entry) error {
		lines[e.Message] = append(lines[e.Message], seen{testutil.ToFloat64(c.gauge), testutil.ToFloat64(c.opening)})
		return nil
	}
	core, _ := observer.New(zapcore.InfoLevel)
	c.log = zap.New(zapcore.RegisterHooks(core, hook))
	now := time.Unix(1000, 0)
	down := Unavailable(errors.New("503"))
	for _, o := range []Outcome{Retry, Retry, Ack} {
		var err error
		if o == Retry {
			err = down
		}
		c.observe(o, err, now)
	}
	for _, tt := range []struct {
		prefix string
		want   seen
	}{
		{"circuit open:", seen{gauge: 0, openings: 0}},
		{"circuit closed:", seen{gauge: 1, openings: 1}},
	} {
		var got []seen
		for msg, s := range lines {
			if strings.HasPrefix(msg, tt.prefix) {
				got = append(got, s...)
			}
		}
		if len(got) != 1 || got[0] != tt.want {
			t.Errorf("metrics when %q was logged: %+v, want once %+v", tt.prefix, got, tt.want)
		}
	}
	if g, o := testutil.ToFloat64(c.gauge), testutil.ToFloat64(c.opening); g != 0 || o != 1 {
		t.Errorf("after opening and closing: warren_circuit_open %v, openings %v, want 0 and 1", g, o)
	}
}
