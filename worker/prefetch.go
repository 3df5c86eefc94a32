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
//	target = concurrency + round(2 * rate * (roundTrip + ackDelay))
//
// A slow handler (rate * roundTrip well under 1) gets concurrency: a
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
// Over a slow link the round trip is at least the time a basic.qos call
// takes (link): before the window is full, nothing else measures it. A
// window far below the link's bandwidth-delay product arrives in bursts a
// round trip apart, so a sample of sampleEvery holds either a burst or
// nothing, and neither says the rate: samples add up until they span two
// round trips before a rate is judged from them (over one, five samples
// hold one burst or two, and the rate read swings by half; over two, by a
// third). On a link faster than 12.5 ms every sample is judged.
//
// RabbitMQ applies a new basic.qos only to consumers started after it, so
// a new window means consuming anew; the controller asks for that rarely:
// when the target stays at 2x the window in force or more (growHold), or
// at half or less (shrinkHold).
//
// Bytes bound the window too. RabbitMQ does not implement basic.qos
// prefetch_size, and amqp091-go receives and buffers every delivery the
// window lets the broker send, so the window in messages is what bounds
// the memory: it is at most budget / size, at least 1, where size is the
// largest body seen lately (it decays by half every sizeHalfLife, so the
// window grows back once large messages stop). A window above that
// shrinks at once, without a hold: memory does not wait.
const (
	// DefaultMaxPrefetch bounds the adaptive window: memory.
	DefaultMaxPrefetch = 1000
	// sampleEvery is how often the session feeds the controller: even at
	// concurrency 4 over a millisecond's round trip, a sample counts a
	// hundred completions or so.
	sampleEvery = 25 * time.Millisecond
	// growHold is how long the target must stay at 2x the window or more
	// before it grows: a window too small costs throughput (from
	// concurrency to hundreds takes two or three steps), and growing
	// costs one round trip of idle handlers. Two samples in a row: one
	// odd interval does not move it. A quorum queue drains 100,000
	// messages in about a second here, most of it spent ramping up at
	// 200 ms (0.84x the plain consumer, make bench -only defaults); at
	// 100 ms, sampled every 50 ms, 1.01x to 1.09x in runs the same hour.
	// At 50 ms, sampled every 25 ms, the window reaches its size in half
	// the time: classic 140-204 ms against 194-383, quorum 145-167 ms
	// against 290-351 (four paired drains each; one outlier of 825 ms).
	growHold = 50 * time.Millisecond
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
	// sizeHalfLife is how fast the largest body seen is forgotten: slower
	// than shrinkHold, so that one lull between large messages does not
	// grow the window only to shrink it again at the next one.
	sizeHalfLife = 10 * time.Second
	// growStep is the least a window grows by: a target of twice the
	// window or more is measured through that window, which caps the
	// rate, so the need may be far above it. From concurrency to
	// hundreds in two or three steps, where doubling took six or seven;
	// it overshoots by at most 4x what the target then says (a target
	// under 2x the window does not grow it), and the slow handlers that
	// fairness is about never grow at all.
	growStep = 8
)

// sample is what the session measured over one interval.
type sample struct {
	elapsed   time.Duration
	completed int           // deliveries settled
	rtts      int           // round trips measured
	rttSum    time.Duration // their sum
	largest   int           // the largest body received
}

// prefetchController decides the window from samples. It is not safe for
// concurrent use: the session's consume loop owns it.
type prefetchController struct {
	min, max int
	budget   int64         // bytes of bodies the window may hold
	size     float64       // the largest body seen lately, in bytes; 0 before any
	window   int           // in force
	rate     float64       // completions per second in the last interval
	rtt      time.Duration // the estimate: the mean of about the last rttSamples
	rttN     int           // how many samples rtt averages, at most rttSamples
	link     time.Duration // how long the latest basic.qos call took: a round trip at least
	acc      sample        // the samples since the last rate judged, until they span two round trips
	held     time.Duration // how long the target has been beyond the hysteresis
	grow     bool          // in which direction held counts
	bound    int           // the window to switch to once held is long enough
	why      string        // why the last switch was asked for: "rate" or "bytes"
}

// newPrefetchController returns a controller for concurrency handlers
// and a window of at most limit messages and budget bytes, starting at
// concurrency: a fast handler grows it within a few hundred milliseconds,
// and a slow one never needs more (a window above its target shrinks only
// at half of it).
func newPrefetchController(concurrency, limit int, budget int64) *prefetchController {
	c := &prefetchController{min: concurrency, max: max(concurrency, limit), budget: budget, rtt: defaultRTT}
	c.window = c.clamp(concurrency)
	return c
}

// ceiling returns the largest window allowed: MaxPrefetch, or fewer
// messages of the largest size seen than the budget holds, at least 1.
func (c *prefetchController) ceiling() int {
	if c.size <= 0 {
		return c.max
	}
	return min(c.max, max(1, int(float64(c.budget)/c.size)))
}

// clamp bounds n by concurrency below and the ceiling above; the ceiling
// wins: bytes before busy handlers.
func (c *prefetchController) clamp(n int) int {
	hi := c.ceiling()
	return min(max(n, min(c.min, hi)), hi)
}

// turnaround returns the round trip the window must cover: the one
// measured, or the link's if that is longer.
func (c *prefetchController) turnaround() time.Duration {
	return max(c.rtt, c.link)
}

// target returns the window for a completion rate (per second) and a
// round trip.
func (c *prefetchController) target(rate float64, rtt time.Duration) int {
	bdp := burst * rate * (rtt + ackDelay).Seconds()
	if bdp > float64(c.max) { // and no overflow below
		return c.clamp(c.max)
	}
	// Rounded, not raised: a slot buffered per replica for handlers far
	// slower than the round trip hoards the last messages of a backlog
	// while other replicas sit idle (a whole extra handler call at the
	// end: 1.22x the ideal in the benchmark's fairness row), and saves
	// them only a round trip per call.
	return c.clamp(c.min + int(math.Round(bdp)))
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
	c.size = max(float64(s.largest), c.size*math.Exp2(-s.elapsed.Seconds()/sizeHalfLife.Seconds()))
	if hi := c.ceiling(); c.window > hi {
		c.held, c.why = 0, "bytes"
		return hi, true
	}
	if s.rtts > 0 {
		// A running mean: the old estimate weighs as the samples it
		// stands for, and no more than leaves room for the new ones.
		keep := min(c.rttN, max(rttSamples-s.rtts, 0))
		c.rtt = (c.rtt*time.Duration(keep) + s.rttSum) / time.Duration(keep+s.rtts)
		c.rttN = min(keep+s.rtts, rttSamples)
	}
	c.acc.elapsed += s.elapsed
	c.acc.completed += s.completed
	rtt := c.turnaround()
	if c.acc.elapsed < 2*rtt {
		return c.window, false
	}
	elapsed := c.acc.elapsed
	c.rate = float64(c.acc.completed) / elapsed.Seconds()
	c.acc = sample{}
	t := c.target(c.rate, rtt)
	switch {
	case t >= 2*c.window && c.window < c.max:
		c.hold(true, t, elapsed)
	case 2*t <= c.window && c.window > c.min:
		c.hold(false, t, elapsed)
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
	c.held, c.why = 0, "rate"
	next := c.bound
	if c.grow {
		// The rate a full window lets through understates what a larger
		// one would: go at least growStep times as far.
		next = max(c.bound, c.clamp(growStep*c.window))
	}
	// A body larger than those the hold began with lowers the ceiling.
	if next = min(next, c.ceiling()); next != c.window {
		return next, true
	}
	return c.window, false
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

// tooLarge takes the size of a body that did not fit the budget beside
// the others held, and returns the window to switch to, and true, when
// the window in force is above what the budget allows for it.
func (c *prefetchController) tooLarge(size int) (int, bool) {
	c.size = max(c.size, float64(size))
	if hi := c.ceiling(); c.window > hi {
		c.held, c.why = 0, "bytes"
		return hi, true
	}
	return c.window, false
}

// switched records the window now in force.
func (c *prefetchController) switched(window int) {
	c.window = window
	c.held = 0
	c.acc = sample{}
}

// sample returns what s measured since the last sample, and starts anew.
func (s *session) sample(now time.Time) sample {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := sample{elapsed: now.Sub(s.sampledAt), completed: s.completed, rtts: s.rtts, rttSum: s.rttSum, largest: s.largest}
	s.completed, s.rtts, s.rttSum, s.largest, s.sampledAt = 0, 0, 0, 0, now
	return m
}

// resize puts window in force for the next consumer: its deliveries and
// acks. The caller has made sure that none of the old consumer's
// deliveries is left unsettled.
func (s *session) resize(window int) {
	s.w.adaptive.switched(window)
	s.mu.Lock()
	s.window = window
	// The gap of the switch is not a round trip, and the old window's
	// last completions, spread over it, do not say the new one's rate.
	s.freedAt = time.Time{}
	s.completed, s.rtts, s.rttSum, s.sampledAt = 0, 0, 0, time.Now()
	s.mu.Unlock()
	s.acks.setPrefetch(window)
}
