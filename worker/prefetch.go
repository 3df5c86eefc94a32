package worker

import (
	"math"
	"time"
)

// Adaptive prefetch. With no prefetch configured, the window (the QoS
// prefetch count of the consumer) is sized like a transport's window to
// its bandwidth-delay product: the handlers' slots, plus what completes
// during one round trip of a slot through the broker (the ack written,
// the next delivery back), twice over for bursts:
//
//	target = concurrency + ceil(2 * rate * (roundTrip + ackDelay))
//
// A slow handler (rate * roundTrip well under 1) gets concurrency + 1: a
// backlog is left in the queue for other replicas. A fast one gets
// hundreds. The window is bounded below by concurrency and above by
// MaxPrefetch.
//
// What is measured, and why it is cheap: rate is the deliveries settled
// per second; roundTrip is the time from a handler freeing a slot of a
// full window (the session holds as many deliveries as the window) to the
// next delivery, averaged over the last rttSamples such times. That is the
// broker's turn-around as warren sees it, ack coalescing included (a
// quorum queue's settlement goes through its log: milliseconds, where a
// classic queue takes a tenth of one), and it costs a clock read only when
// the window is full: exactly when it limits. A mean, not the smallest: the
// window must cover the average turn-around to keep handlers busy. A slot
// freed as the queue runs dry is refilled only when a message is
// published, which says nothing of the broker: a sample counts for at most
// maxRTTSample, and among rttSamples others.
//
// RabbitMQ applies a new basic.qos only to consumers started after it, so
// a new window means consuming anew; the controller asks for that rarely:
// when the target stays at 2x the window in force or more (growHold), or
// at half or less (shrinkHold).
const (
	// DefaultMaxPrefetch bounds the adaptive window: memory.
	DefaultMaxPrefetch = 1000
	// sampleEvery is how often the session feeds the controller.
	sampleEvery = 100 * time.Millisecond
	// growHold is how long the target must stay at 2x the window or more
	// before it grows: a window too small costs throughput (from
	// concurrency + 1 to hundreds takes three or four steps), and growing
	// costs one round trip of idle handlers. Three samples in a row: one
	// odd interval does not move it.
	growHold = 300 * time.Millisecond
	// shrinkHold is how long the target must stay at half the window or
	// less before it shrinks: a window too large only holds back messages
	// other replicas could take, and a wrong shrink costs a regrowth.
	shrinkHold = 5 * time.Second
	// rttSamples is how many of the latest round trips the estimate
	// averages.
	rttSamples = 64
	// maxRTTSample caps one round trip.
	maxRTTSample = time.Second
	// defaultRTT is the round trip assumed before any is measured: a
	// broker on the same network.
	defaultRTT = time.Millisecond
	// burst is the headroom over the bandwidth-delay product.
	burst = 2
	// growStep is the least a window grows by: a target of twice the
	// window or more is measured through that window, which caps the
	// rate, so the need may be far above it. From concurrency + 1 to a
	// thousand in three or four steps, where doubling took six or seven;
	// it overshoots by at most 2x what the target then says (a target
	// under 2x the window does not grow it), and the slow handlers that
	// fairness is about never grow at all.
	growStep = 4
)

// sample is what the session measured over one interval.
type sample struct {
	elapsed   time.Duration
	completed int           // deliveries settled
	rtts      int           // round trips measured
	rttSum    time.Duration // their sum
}

// prefetchController decides the window from samples. It is not safe for
// concurrent use: the session's consume loop owns it.
type prefetchController struct {
	min, max int
	window   int           // in force
	rate     float64       // completions per second in the last interval
	rtt      time.Duration // the estimate: the mean of about the last rttSamples
	rttN     int           // how many samples rtt averages, at most rttSamples
	held     time.Duration // how long the target has been beyond the hysteresis
	grow     bool          // in which direction held counts
	bound    int           // the window to switch to once held is long enough
}

// newPrefetchController returns a controller for concurrency handlers
// and a window of at most limit, starting at concurrency + 1.
func newPrefetchController(concurrency, limit int) *prefetchController {
	c := &prefetchController{min: concurrency, max: max(concurrency, limit), rtt: defaultRTT}
	c.window = c.clamp(concurrency + 1)
	return c
}

func (c *prefetchController) clamp(n int) int { return min(max(n, c.min), c.max) }

// target returns the window for a completion rate (per second) and a
// round trip.
func (c *prefetchController) target(rate float64, rtt time.Duration) int {
	bdp := burst * rate * (rtt + ackDelay).Seconds()
	if bdp > float64(c.max) { // and no overflow below
		return c.max
	}
	return c.clamp(c.min + int(math.Ceil(bdp)))
}

// observe takes one interval's sample and returns the window to switch
// to, and true, when a switch is due. Each interval's own rate counts:
// the hold is the smoothing. A window grows to the smallest target seen
// while it held, or growStep times itself if that is more, and shrinks
// to the largest target.
func (c *prefetchController) observe(s sample) (int, bool) {
	if s.elapsed <= 0 {
		return c.window, false
	}
	if s.rtts > 0 {
		// A running mean: the old estimate weighs as the samples it
		// stands for, and no more than leaves room for the new ones.
		keep := min(c.rttN, max(rttSamples-s.rtts, 0))
		c.rtt = (c.rtt*time.Duration(keep) + s.rttSum) / time.Duration(keep+s.rtts)
		c.rttN = min(keep+s.rtts, rttSamples)
	}
	c.rate = float64(s.completed) / s.elapsed.Seconds()
	t := c.target(c.rate, c.rtt)
	switch {
	case t >= 2*c.window && c.window < c.max:
		c.hold(true, t, s.elapsed)
	case 2*t <= c.window && c.window > c.min:
		c.hold(false, t, s.elapsed)
	default:
		c.held = 0
		return c.window, false
	}
	limit := shrinkHold
	if c.grow {
		limit = growHold
	}
	if c.held < limit {
		return c.window, false
	}
	c.held = 0
	if c.grow {
		// The rate a full window lets through understates what a larger
		// one would: go at least growStep times as far.
		return max(c.bound, c.clamp(growStep*c.window)), true
	}
	return c.bound, true
}

// hold counts how long the target has been beyond the hysteresis in the
// direction grow, and the target a switch would go to.
func (c *prefetchController) hold(grow bool, target int, d time.Duration) {
	if c.grow != grow || c.held == 0 {
		c.grow, c.held, c.bound = grow, 0, target
	}
	c.held += d
	if grow {
		c.bound = min(c.bound, target)
	} else {
		c.bound = max(c.bound, target)
	}
}

// switched records the window now in force.
func (c *prefetchController) switched(window int) {
	c.window = window
	c.held = 0
}

// sample returns what s measured since the last sample, and starts anew.
func (s *session) sample(now time.Time) sample {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := sample{elapsed: now.Sub(s.sampledAt), completed: s.completed, rtts: s.rtts, rttSum: s.rttSum}
	s.completed, s.rtts, s.rttSum, s.sampledAt = 0, 0, 0, now
	return m
}

// resize puts window in force for the next consumer: its deliveries and
// acks. The caller has made sure that none of the old consumer's
// deliveries is left unsettled.
func (s *session) resize(window int) {
	s.w.adaptive.switched(window)
	s.mu.Lock()
	s.window = window
	// The gap of the switch is not a round trip.
	s.freedAt = time.Time{}
	s.mu.Unlock()
	s.acks.setPrefetch(window)
}
