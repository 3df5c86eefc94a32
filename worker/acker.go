package worker

import (
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Ack coalescing: finished messages are acked together with one
// basic.ack(multiple=true) up to the highest delivery tag below which every
// message is finished, flushed when a batch fills, or once the oldest owed
// ack has waited ackDelay.
const (
	// ackDelay is the longest a finished message waits for its ack.
	ackDelay = 5 * time.Millisecond
	// maxAckBatch caps a batch; a batch is also at most a quarter of the
	// prefetch, so that acks free the broker's window well before it runs
	// dry.
	maxAckBatch = 64
)

// tagState is where one delivery of a channel stands.
type tagState uint8

const (
	running tagState = iota // with a handler, or waiting for one
	toAck                   // finished; its ack is owed
	settled                 // acked or nacked on the channel
)

// slot is one delivery tag's entry in the acker's window. It is kept to
// 16 bytes: behind a slow message the window holds one for every message
// acked since.
type slot struct {
	owedAt  time.Duration // when it became owed, on the acker's clock
	state   tagState
	outcome uint8 // an Outcome
}

// acker settles the deliveries of one channel. Acks are coalesced; nacks go
// out at once, one per message. Its window holds every tag from the lowest
// unsettled one to the newest: the prefetch count, and, while a slow
// message holds the lowest tag, one settled slot for each message acked
// alone since (those acks free the broker's window for more deliveries).
//
// What to send is decided under mu, and written under wmu alone, in the
// order decided: a socket that backs up holds only the goroutines that
// settle, never received, and so never the delivery loop.
type acker struct {
	ch    amqp.Acknowledger // the channel that delivered the tags
	m     *metrics
	batch int

	wmu   sync.Mutex // held while frames are written
	spare []ackFrame // the writer's other buffer; guarded by wmu

	epoch time.Time // the acker's clock starts here

	mu     sync.Mutex
	base   uint64 // every tag up to base is settled
	buf    []slot // buf[head:] is the window
	head   int
	window []slot        // buf[head:]: window[i] is tag base+1+i
	owed   int           // slots in state toAck
	oldest time.Duration // the earliest owedAt of an owed slot, if any
	// The timer fires at due, the oldest owed ack's deadline; due is 0
	// while nothing is owed. Only the first owed ack sets it and only a
	// flush moves it: an ack owed later must not push back the deadline
	// of one owed before it.
	timer *time.Timer
	due   time.Duration
	dead  bool       // the channel failed a write: what is owed is stale
	out   []ackFrame // decided and not yet written, in order
}

// ackFrame is one ack or nack decided and waiting to be written, with the
// outcomes it settles, counted once it is written.
type ackFrame struct {
	tag      uint64
	multiple bool
	nack     bool
	outcomes [numOutcomes]int
}

func newAcker(ch amqp.Acknowledger, m *metrics, prefetch int) *acker {
	return &acker{ch: ch, m: m, batch: ackBatch(prefetch), epoch: time.Now()}
}

// ackBatch is the batch of acks for a prefetch: a quarter of it, at most
// maxAckBatch.
func ackBatch(prefetch int) int { return min(max(prefetch/4, 1), maxAckBatch) }

// setPrefetch sizes the batch for a new prefetch, when the consumer's
// window changes.
func (a *acker) setPrefetch(prefetch int) {
	a.mu.Lock()
	a.batch = ackBatch(prefetch)
	a.mu.Unlock()
}

// received enters a delivery tag, as it arrives, before any handler has it.
func (a *acker) received(tag uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	// Tags come in order, one by one; anything else is not ours to ack.
	for next := a.base + uint64(len(a.window)) + 1; next < tag; next++ {
		a.push(slot{state: settled})
	}
	a.push(slot{state: running})
}

// ack records that tag is finished with outcome o and owes an ack.
func (a *acker) ack(tag uint64, o Outcome) {
	a.mu.Lock()
	a.decideAck(tag, o)
	pending := len(a.out) > 0
	a.mu.Unlock()
	if pending {
		a.write()
	}
}

func (a *acker) decideAck(tag uint64, o Outcome) {
	sl := a.slot(tag)
	if sl == nil || sl.state != running {
		return
	}
	if a.dead {
		sl.state = settled
		a.m.stale.Inc()
		a.trim()
		return
	}
	sl.state, sl.outcome, sl.owedAt = toAck, uint8(o), a.now()
	if a.owed == 0 {
		a.oldest = sl.owedAt
	}
	a.owed++
	if a.owed >= a.batch {
		a.flush(false)
	}
	a.schedule()
}

// nack hands tag back to the queue at once.
func (a *acker) nack(tag uint64) {
	a.mu.Lock()
	a.decideNack(tag)
	pending := len(a.out) > 0
	a.mu.Unlock()
	if pending {
		a.write()
	}
}

func (a *acker) decideNack(tag uint64) {
	sl := a.slot(tag)
	if sl == nil || sl.state != running {
		return
	}
	sl.state = settled
	if a.dead {
		a.m.stale.Inc()
	} else {
		f := ackFrame{tag: tag, nack: true}
		f.outcomes[Requeue] = 1
		a.out = append(a.out, f)
	}
	a.trim()
}

// flushOwed sends every ack owed, and returns once every frame decided
// before it is written; the session calls it before it closes the
// channel.
func (a *acker) flushOwed() {
	a.mu.Lock()
	a.flush(true)
	a.schedule()
	a.mu.Unlock()
	a.write()
}

// fire is the timer's: the oldest owed ack has waited ackDelay, so
// everything owed goes out now, and what is owed later waits for the next
// deadline rather than going out one by one as it comes.
func (a *acker) fire() {
	a.mu.Lock()
	if a.due == 0 {
		a.mu.Unlock()
		return
	}
	if wait := a.due - a.now(); wait > 0 {
		// A firing that began before a flush moved the deadline on:
		// wait for the new one.
		a.timer.Reset(wait)
		a.mu.Unlock()
		return
	}
	a.flush(true)
	a.schedule()
	a.mu.Unlock()
	a.write()
}

// schedule sets the timer to the deadline of the oldest owed ack, or
// stops it when nothing is owed. The caller holds mu.
func (a *acker) schedule() {
	if a.owed == 0 || a.dead {
		if a.due != 0 {
			a.timer.Stop()
			a.due = 0
		}
		return
	}
	due := a.oldest + ackDelay
	if due == a.due {
		return
	}
	a.due = due
	wait := due - a.now()
	if a.timer == nil {
		a.timer = time.AfterFunc(wait, a.fire)
		return
	}
	a.timer.Reset(wait)
}

// now reads the acker's clock, which is monotonic.
func (a *acker) now() time.Duration { return time.Since(a.epoch) }

// write writes the frames decided so far, in order. One goroutine writes
// at a time; the others wait here for their frames to be on the wire.
func (a *acker) write() {
	a.wmu.Lock()
	defer a.wmu.Unlock()
	for {
		a.mu.Lock()
		out := a.out
		a.out, a.spare = a.spare[:0], nil
		a.mu.Unlock()
		if len(out) == 0 {
			a.spare = out
			return
		}
		for i, f := range out {
			var err error
			if f.nack {
				err = a.ch.Nack(f.tag, f.multiple, true)
			} else {
				err = a.ch.Ack(f.tag, f.multiple)
			}
			if err != nil {
				a.mu.Lock()
				a.fail(out[i:])
				a.mu.Unlock()
				break
			}
			for o, n := range f.outcomes {
				if n > 0 {
					a.m.messages[o].Add(float64(n))
				}
			}
		}
		a.spare = out[:0]
	}
}

// stop drops the timer; what is still owed is left to the broker, which
// requeues it with the channel.
func (a *acker) stop() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.dead = true
	a.schedule()
}

// flush decides, with one multiple ack, every owed tag below the first
// running one. With all (the oldest owed ack is due: a slow message holds
// the lowest tag), it acks the rest one by one: a finished message never
// waits behind a slow one for longer than ackDelay. A full batch alone
// does not do that: under load a handler goroutine that waits to be
// scheduled holds the lowest tag for a moment, and acking one by one then
// costs a write per message. The caller holds mu, writes what was
// decided, and calls schedule.
func (a *acker) flush(all bool) {
	if a.owed == 0 || a.dead {
		return
	}
	if !all && a.window[0].state == running {
		// Nothing a multiple ack could take; while a slow message holds
		// the lowest tag, every ack of a full batch comes here, so it
		// must not cost a walk over the window.
		return
	}
	// The highest tag of the settled-or-owed prefix that is owed.
	last := -1
	for i, sl := range a.window {
		if sl.state == running {
			break
		}
		if sl.state == toAck {
			last = i
		}
	}
	if last >= 0 {
		f := ackFrame{tag: a.base + uint64(last) + 1, multiple: true}
		for i := range a.window[:last+1] {
			a.done(&a.window[i], &f)
		}
		a.out = append(a.out, f)
		a.trim()
	}
	if a.owed > 0 && all {
		for i := range a.window {
			if a.window[i].state != toAck {
				continue
			}
			f := ackFrame{tag: a.base + uint64(i) + 1}
			a.done(&a.window[i], &f)
			a.out = append(a.out, f)
		}
		a.trim()
	}
	if a.owed > 0 {
		a.oldest = a.now()
		for _, sl := range a.window {
			if sl.state == toAck {
				a.oldest = min(a.oldest, sl.owedAt)
			}
		}
	}
}

// done moves an owed slot into f, the frame that acks it.
func (a *acker) done(sl *slot, f *ackFrame) {
	if sl.state != toAck {
		return
	}
	sl.state = settled
	a.owed--
	f.outcomes[sl.outcome]++
}

// fail counts the frames that could not be written, and what is still
// owed, as stale: the channel is gone, and with it the delivery tags; the
// broker has requeued those messages. The caller holds mu.
func (a *acker) fail(unwritten []ackFrame) {
	a.dead = true
	for _, f := range unwritten {
		for _, n := range f.outcomes {
			a.m.stale.Add(float64(n))
		}
	}
	for _, f := range a.out {
		for _, n := range f.outcomes {
			a.m.stale.Add(float64(n))
		}
	}
	a.out = a.out[:0]
	for i := range a.window {
		if a.window[i].state == toAck {
			a.window[i].state = settled
			a.m.stale.Inc()
		}
	}
	a.owed = 0
	a.trim()
	a.schedule()
}

// push appends to the window, moving it to the front of its buffer when
// that reclaims at least half of it: no allocation once the buffer fits
// the prefetch.
func (a *acker) push(sl slot) {
	if a.head > 0 && a.head >= len(a.buf)/2 && len(a.buf) == cap(a.buf) {
		n := copy(a.buf, a.buf[a.head:])
		a.buf, a.head = a.buf[:n], 0
	}
	a.buf = append(a.buf, sl)
	a.window = a.buf[a.head:]
}

// trim drops the settled prefix of the window.
func (a *acker) trim() {
	n := 0
	for n < len(a.window) && a.window[n].state == settled {
		n++
	}
	a.base += uint64(n)
	a.head += n
	a.window = a.buf[a.head:]
}

func (a *acker) slot(tag uint64) *slot {
	if tag <= a.base || tag > a.base+uint64(len(a.window)) {
		return nil
	}
	return &a.window[tag-a.base-1]
}
