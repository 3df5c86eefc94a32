package worker

import (
	"time"

	"golang.org/x/time/rate"
)

// rateBurst is the token bucket's depth: one. Handlers start at most one
// every 1/RateLimit seconds, evenly, so that no second of an endpoint's
// quota sees more than RateLimit+1 of a replica's calls; a deeper bucket
// would let an idle replica fire a burst of that many at once.
const rateBurst = 1

// newLimiter returns the token bucket for limit handler starts a second,
// or nil when limit is 0: no limit.
func newLimiter(limit float64) *rate.Limiter {
	if limit <= 0 {
		return nil
	}
	return rate.NewLimiter(rate.Limit(limit), rateBurst)
}

// awaitToken waits until the rate limit lets j's handler start, and
// reports whether it may. A delivery whose wait is cut short (the drain
// began, its channel closed, or, unless it is the probe, the circuit
// opened) must go back untried: its token is given back. The wait holds
// the delivery, not a handler: Alive does not count it.
func (w *Worker) awaitToken(j *job) bool {
	if w.limiter == nil {
		return true
	}
	r := w.limiter.Reserve()
	d := r.Delay()
	if d <= 0 {
		return true
	}
	begin := time.Now()
	defer func() { w.metrics.rateLimitWait.Add(time.Since(begin).Seconds()) }()
	var opened <-chan struct{}
	if !j.probe {
		opened = w.circuit.openedChan()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-j.s.stopping:
	case <-j.s.ended:
	case <-opened:
	}
	r.Cancel()
	return false
}
