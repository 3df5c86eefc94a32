package worker

import (
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Ack coalescing: finished messages are acked together with one
// basic.ack(multiple=true) up to the highest delivery tag below which every
// message is finished, flushed when a batch fills or after ackDelay.
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

// slot is one delivery tag's entry in the acker's window.
type slot struct {
	state   tagState
	outcome Outcome
}

// acker settles the deliveries of one channel. Acks are coalesced; nacks go
// out at once, one per message. Its window holds every tag from the lowest
// unsettled one to the newest, so at most the prefetch count.
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

	mu     sync.Mutex
	base   uint64 // every tag up to base is settled
	buf    []slot // buf[head:] is the window
	head   int
	window []slot // buf[head:]: window[i] is tag base+1+i
	owed   int    // slots in state toAck
	timer  *time.Timer
	dead   bool       // the channel failed a write: what is owed is stale
	out    []ackFrame // decided and not yet written, in order
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
	return &acker{ch: ch, m: m, batch: min(max(prefetch/4, 1), maxAckBatch)}
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
	sl.state, sl.outcome = toAck, o
	a.owed++
	switch {
	case a.owed >= a.batch:
		a.flush(false)
	case a.timer == nil:
		a.timer = time.AfterFunc(ackDelay, a.flushOwed)
	}
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
// before it is written; the timer calls it, and the session before it
// closes the channel.
func (a *acker) flushOwed() {
	a.mu.Lock()
	a.flush(true)
	a.mu.Unlock()
	a.write()
}

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
	if a.timer != nil {
		a.timer.Stop()
		a.timer = nil
	}
	a.dead = true
}

// flush decides, with one multiple ack, every owed tag below the first
// running one. With all (the timer fired: a slow message holds the lowest
// tag), it acks the rest one by one: a finished message never waits behind
// a slow one for longer than ackDelay. A full batch alone does not do
// that: under load a handler goroutine that waits to be scheduled holds
// the lowest tag for a moment, and acking one by one then costs a write
// per message. The caller holds mu, and writes what was decided.
func (a *acker) flush(all bool) {
	if a.timer != nil {
		a.timer.Stop()
		a.timer = nil
	}
	if a.owed == 0 || a.dead {
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
		a.timer = time.AfterFunc(ackDelay, a.flushOwed)
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
