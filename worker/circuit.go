package worker

import (
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// Defaults of the circuit breaker, for the zero values of CircuitConfig.
const (
	DefaultCircuitFailures         = 5
	DefaultCircuitWindow           = 30 * time.Second
	DefaultCircuitMaxProbeInterval = time.Minute
	// firstProbe is the wait before the first probe once the circuit
	// opened, unless the ceiling is lower; each probe that fails doubles it.
	firstProbe = time.Second
)

// CircuitConfig sets the circuit breaker: when Failures handler errors
// marked Unavailable (the downstream is down) come within Window, with no
// success between them, the worker stops taking messages and probes with
// one message at growing intervals, up to MaxProbeInterval. Failures 0 is
// off.
type CircuitConfig struct {
	Failures         int
	Window           time.Duration
	MaxProbeInterval time.Duration
}

// unavailableError marks an error as "the downstream is down".
type unavailableError struct{ err error }

func (e *unavailableError) Error() string { return e.err.Error() }
func (e *unavailableError) Unwrap() error { return e.err }

// Unavailable marks err as transient and saying that the handler's
// downstream is down (refused, reset, timed out, 5xx), not that the message
// is bad: the message is retried, and such errors in a row open the
// circuit breaker. Unavailable(nil) is nil.
func Unavailable(err error) error {
	if err == nil {
		return nil
	}
	return &unavailableError{err: err}
}

// IsUnavailable reports whether err, or an error it wraps, was marked with
// Unavailable and not with Permanent: the one place that says whether a
// failure means the downstream is down.
func IsUnavailable(err error) bool {
	var u *unavailableError
	return errors.As(err, &u) && !IsPermanent(err)
}

// circuit is the breaker's state, shared by the handler goroutines that
// observe outcomes and the session that stops and starts consuming. A nil
// *circuit is off: it never opens.
type circuit struct {
	cfg     CircuitConfig
	log     *zap.Logger
	gauge   prometheus.Gauge
	opening prometheus.Counter
	trips   chan struct{} // signalled when the circuit opens

	// opened mirrors open, and counting says failures is not empty, for
	// the checks made on every message without taking mu.
	opened, counting atomic.Bool

	mu       sync.Mutex
	open     bool
	failures []time.Time // downstream-down failures since the last success, within the window
	last     error       // the last downstream-down failure
	interval time.Duration
	floor    time.Duration // a Retry-After of the last failure, up to the ceiling
	openc    chan struct{} // closed when the circuit opens; a new one once it closes
}

func newCircuit(cfg CircuitConfig, log *zap.Logger, m *metrics) *circuit {
	if cfg.Failures <= 0 {
		return nil
	}
	if cfg.Window <= 0 {
		cfg.Window = DefaultCircuitWindow
	}
	if cfg.MaxProbeInterval <= 0 {
		cfg.MaxProbeInterval = DefaultCircuitMaxProbeInterval
	}
	return &circuit{cfg: cfg, log: log, gauge: m.circuitOpen, opening: m.circuitOpenings, trips: make(chan struct{}, 1),
		openc: make(chan struct{})}
}

// tripped returns a channel signalled when the circuit opens; nil (never)
// when it is off. A signal may be stale: check isOpen.
func (c *circuit) tripped() <-chan struct{} {
	if c == nil {
		return nil
	}
	return c.trips
}

// openedChan returns a channel closed once the circuit is open (at once
// if it is), for goroutines that wait to stop waiting; nil (never) when
// the breaker is off.
func (c *circuit) openedChan() <-chan struct{} {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.openc
}

// isOpen reports whether messages must wait in the queue.
func (c *circuit) isOpen() bool {
	return c != nil && c.opened.Load()
}

// reason returns why the worker is not ready while the circuit is open,
// else "".
func (c *circuit) reason() string {
	if c == nil {
		return ""
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.open {
		return ""
	}
	return "circuit open: " + c.last.Error()
}

// observe records the outcome o of a handler that returned err and
// returns the outcome to settle with. A success, or a verdict that the
// message is bad (dead), proves the downstream answers: it clears the
// count and closes the circuit. A failure that means the downstream is
// down counts, and opens the circuit at the threshold; while the circuit
// is open, such a failure hands its message back untried (Requeue): no
// attempt of it is spent on an outage. Other failures count for nothing.
func (c *circuit) observe(o Outcome, err error, now time.Time) Outcome {
	if c == nil {
		return o
	}
	switch {
	case o == Ack || o == Dead:
		if !c.opened.Load() && !c.counting.Load() {
			return o
		}
		c.mu.Lock()
		c.failures = c.failures[:0]
		c.counting.Store(false)
		wasOpen := c.open
		if wasOpen {
			c.openc = make(chan struct{})
		}
		c.open = false
		c.opened.Store(false)
		c.mu.Unlock()
		if wasOpen {
			// Said before the gauge moves, so that whoever sees it sees why.
			c.log.Info("circuit closed: the downstream answers; consuming again")
			c.gauge.Set(0)
		}
		return o
	case o != Retry || !IsUnavailable(err):
		return o
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.last = err
	c.floor = 0
	if d, ok := RetryDelay(err); ok {
		c.floor = min(d, c.cfg.MaxProbeInterval)
	}
	if c.open {
		return Requeue
	}
	kept := c.failures[:0]
	for _, t := range c.failures {
		if now.Sub(t) < c.cfg.Window {
			kept = append(kept, t)
		}
	}
	c.failures = append(kept, now)
	c.counting.Store(true)
	if len(c.failures) < c.cfg.Failures {
		return o
	}
	c.open = true
	c.opened.Store(true)
	close(c.openc)
	c.failures = c.failures[:0]
	c.counting.Store(false)
	c.interval = min(firstProbe, c.cfg.MaxProbeInterval)
	c.log.Warn("circuit open: the downstream is down; messages wait in the queue, probing with one",
		zap.Int("failures", c.cfg.Failures), zap.Duration("window", c.cfg.Window), zap.Error(err))
	c.gauge.Set(1)
	c.opening.Inc()
	select {
	case c.trips <- struct{}{}:
	default:
	}
	return Requeue
}

// nextProbe returns how long to wait before the next probe: the interval,
// jittered by up to a fifth either way and at least the Retry-After of the
// last failure, never past the ceiling; the interval then doubles, up to
// the ceiling.
func (c *circuit) nextProbe() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	d := c.interval
	c.interval = min(2*c.interval, c.cfg.MaxProbeInterval)
	jitter := time.Duration(rand.Int64N(int64(d)/5+1)) * 2
	return min(max(d-d/5+jitter, c.floor), c.cfg.MaxProbeInterval)
}
