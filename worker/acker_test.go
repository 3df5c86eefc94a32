package worker

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/warren-mq/warren/internal/brokertest"
)

// frames records what an acker sends, as a channel would carry it.
type frames struct {
	mu   sync.Mutex
	sent []string
	fail bool // the channel is gone
}

func (f *frames) Ack(tag uint64, multiple bool) error {
	return f.send(fmt.Sprintf("ack %d%s", tag, map[bool]string{true: "+"}[multiple]))
}

func (f *frames) Nack(tag uint64, multiple, requeue bool) error {
	return f.send(fmt.Sprintf("nack %d", tag))
}

func (f *frames) Reject(tag uint64, requeue bool) error {
	return f.send(fmt.Sprintf("reject %d", tag))
}

func (f *frames) send(frame string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail {
		return errors.New("channel closed")
	}
	f.sent = append(f.sent, frame)
	return nil
}

func (f *frames) String() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return strings.Join(f.sent, ", ")
}

func newTestAcker(t *testing.T, prefetch int) (*acker, *frames, *metrics) {
	t.Helper()
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	f := &frames{}
	a := newAcker(f, m, prefetch)
	t.Cleanup(a.stop)
	return a, f, m
}

// step is one event in an acker's life: a delivery arrives (+N), a handler
// finishes with an ack (aN) or a nack (nN), or the timer fires (flush).
type step string

func run(a *acker, steps []step) {
	for _, s := range steps {
		var tag uint64
		switch {
		case s == "flush":
			a.flushOwed()
		case s[0] == '+':
			fmt.Sscan(string(s[1:]), &tag)
			a.received(tag)
		case s[0] == 'a':
			fmt.Sscan(string(s[1:]), &tag)
			a.ack(tag, Ack)
		case s[0] == 'n':
			fmt.Sscan(string(s[1:]), &tag)
			a.nack(tag)
		}
	}
}

func TestAckerCoalesces(t *testing.T) {
	for _, tt := range []struct {
		name     string
		prefetch int // batch is a quarter of it
		give     []step
		want     string
	}{
		{
			name: "in order: one multiple ack per batch", prefetch: 16,
			give: []step{"+1", "+2", "+3", "+4", "+5", "a1", "a2", "a3", "a4", "a5"},
			want: "ack 4+",
		},
		{
			name: "out of order: acked up to the first unfinished tag", prefetch: 16,
			give: []step{"+1", "+2", "+3", "+4", "+5", "+6", "a2", "a3", "a5", "a1", "a6", "a4", "flush"},
			want: "ack 3+, ack 6+",
		},
		{
			name: "the timer sends what a small batch owes", prefetch: 16,
			give: []step{"+1", "+2", "a1", "flush"},
			want: "ack 1+",
		},
		{
			name: "a slow message does not hold the others past the timer", prefetch: 16,
			give: []step{"+1", "+2", "+3", "a2", "a3", "flush"},
			want: "ack 2, ack 3",
		},
		{
			name: "a full batch behind a slow message waits for the timer", prefetch: 8,
			give: []step{"+1", "+2", "+3", "a2", "a3"},
			want: "",
		},
		{
			name: "then the timer acks it one by one", prefetch: 8,
			give: []step{"+1", "+2", "+3", "a2", "a3", "flush"},
			want: "ack 2, ack 3",
		},
		{
			name: "nacks go out at once, one by one, and do not break the run", prefetch: 16,
			give: []step{"+1", "+2", "+3", "+4", "+5", "a1", "n2", "a3", "a4", "a5"},
			want: "nack 2, ack 5+",
		},
		{
			name: "the multiple ack ends on an owed tag, not a nacked one", prefetch: 8,
			give: []step{"+1", "+2", "+3", "a1", "n3", "a2"},
			want: "nack 3, ack 2+",
		},
		{
			name: "a gap in the tags is not waited for", prefetch: 8,
			give: []step{"+1", "+3", "a1", "a3"},
			want: "ack 3+",
		},
		{
			name: "settling twice, or a tag never received, sends nothing more", prefetch: 4,
			give: []step{"+1", "a1", "a1", "n1", "a7", "n9"},
			want: "ack 1+",
		},
		{
			name: "prefetch 1 acks each message", prefetch: 1,
			give: []step{"+1", "a1", "+2", "a2"},
			want: "ack 1+, ack 2+",
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a, f, _ := newTestAcker(t, tt.prefetch)
			run(a, tt.give)
			if got := f.String(); got != tt.want {
				t.Errorf("after %v: sent %q, want %q", tt.give, got, tt.want)
			}
		})
	}
}

func TestAckerCountsOutcomesOnceSent(t *testing.T) {
	a, f, m := newTestAcker(t, 16)
	for tag := uint64(1); tag <= 3; tag++ {
		a.received(tag)
	}
	a.ack(1, Ack)
	a.ack(2, Retry)
	if got := testutil.ToFloat64(m.messages[Ack]); got != 0 {
		t.Errorf("acks counted before the ack was sent: %v", got)
	}
	a.flushOwed()
	a.nack(3)
	for o, want := range map[Outcome]float64{Ack: 1, Retry: 1, Requeue: 1, Dead: 0} {
		if got := testutil.ToFloat64(m.messages[o]); got != want {
			t.Errorf("messages{outcome=%s} = %v, want %v", o, got, want)
		}
	}
	if got := f.String(); got != "ack 2+, nack 3" {
		t.Errorf("sent %q, want %q", got, "ack 2+, nack 3")
	}
}

func TestAckerChannelDiesWithTagsOwed(t *testing.T) {
	a, f, m := newTestAcker(t, 16)
	for tag := uint64(1); tag <= 4; tag++ {
		a.received(tag)
	}
	a.ack(1, Ack)
	a.ack(2, Ack)
	f.mu.Lock()
	f.fail = true
	f.mu.Unlock()
	a.flushOwed()
	a.ack(3, Ack) // a handler that finishes after the channel died
	a.nack(4)
	if got := testutil.ToFloat64(m.stale); got != 4 {
		t.Errorf("stale settlements = %v, want 4: nothing owed on a dead channel is counted as done", got)
	}
	if got := testutil.ToFloat64(m.messages[Ack]); got != 0 {
		t.Errorf("acks counted = %v, want 0", got)
	}
	if f.String() != "" {
		t.Errorf("sent %q on a dead channel", f.String())
	}
}

func TestAckerTimerFlushes(t *testing.T) {
	a, f, _ := newTestAcker(t, 64)
	a.received(1)
	a.ack(1, Ack)
	deadline := time.Now().Add(5 * time.Second)
	for f.String() == "" {
		if time.Now().After(deadline) {
			t.Fatal("an owed ack was not sent by the timer")
		}
		time.Sleep(time.Millisecond)
	}
	if got := f.String(); got != "ack 1+" {
		t.Errorf("sent %q, want %q", got, "ack 1+")
	}
}

func TestAckerWindowStaysWithinItsBuffer(t *testing.T) {
	a, _, _ := newTestAcker(t, 64)
	// A long run at a steady window of 64 must not grow the buffer.
	for tag := uint64(1); tag <= 100_000; tag++ {
		a.received(tag)
		if tag > 64 {
			a.ack(tag-64, Ack)
		}
	}
	if c := cap(a.buf); c > 1024 {
		t.Errorf("buffer grew to %d slots for a window of 64", c)
	}
	if n := len(a.window); n > 64+a.batch {
		t.Errorf("window holds %d slots, want at most the in-flight ones and a batch", n)
	}
}

// stuckAcks is a channel whose socket is backed up: an Ack or Nack write
// blocks until the test lets it through.
type stuckAcks struct {
	frames
	writing chan struct{} // receives once a write is stuck
	release chan struct{} // closed to let every write through
}

func (s *stuckAcks) Ack(tag uint64, multiple bool) error {
	s.writing <- struct{}{}
	<-s.release
	return s.frames.Ack(tag, multiple)
}

func (s *stuckAcks) Nack(tag uint64, multiple, requeue bool) error {
	s.writing <- struct{}{}
	<-s.release
	return s.frames.Nack(tag, multiple, requeue)
}

func TestAckerReceivesWhileAWriteIsStuck(t *testing.T) {
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	s := &stuckAcks{writing: make(chan struct{}, 16), release: make(chan struct{})}
	a := newAcker(s, m, 4) // a batch of 1: every ack is written at once
	t.Cleanup(a.stop)
	var releaseOnce sync.Once
	release := func() { releaseOnce.Do(func() { close(s.release) }) }
	t.Cleanup(release) // runs first: nothing stays stuck after the test
	a.received(1)
	a.received(2)
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Add(2)
	go func() { defer wg.Done(); a.ack(1, Ack) }()
	// The ack of 1 is on its way and stuck; the ack of 2 is decided now
	// and written after it.
	<-s.writing
	go func() { defer wg.Done(); a.ack(2, Ack) }()

	done := make(chan struct{})
	go func() { a.received(3); close(done) }() // the delivery loop
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		release()
		<-done
		t.Fatal("received(3) blocked for 2s while an Ack write was stuck")
	}
	release()
	wg.Wait()
	if got, want := s.String(), "ack 1+, ack 2+"; got != want {
		t.Errorf("sent %q, want %q: in tag order", got, want)
	}
	if got := testutil.ToFloat64(m.messages[Ack]); got != 2 {
		t.Errorf("messages{outcome=ack} = %v, want 2", got)
	}
}

// ackFrameAt is one frame as the broker would see it, and when.
type ackFrameAt struct {
	tag      uint64
	multiple bool
	at       time.Duration // since the load began
}

// ackBroker is a channel that records every frame with its time, and, like
// the broker, has no more than the prefetch delivered and unacked.
type ackBroker struct {
	prefetch int
	start    time.Time

	mu        sync.Mutex
	freed     *sync.Cond // broadcast when acks free the window
	frames    []ackFrameAt
	delivered uint64
	unacked   int
	low       uint64          // every tag below low is acked
	finished  []time.Duration // finished[tag]: when its handler was done
	acked     []time.Duration // acked[tag]: when a frame first acked it; 0: not yet
	stuck     bool            // the window stayed full for too long
	fault     error           // a frame the broker would close the channel for
}

func newAckBroker(prefetch int) *ackBroker {
	b := &ackBroker{prefetch: prefetch, start: time.Now(), low: 1}
	b.freed = sync.NewCond(&b.mu)
	b.finished, b.acked = []time.Duration{0}, []time.Duration{0}
	return b
}

// deliver hands out the next tag once the window has room for it.
func (b *ackBroker) deliver() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	for b.unacked >= b.prefetch {
		if b.stuck || b.fault != nil {
			return 0
		}
		b.freed.Wait()
	}
	b.delivered++
	b.unacked++
	b.finished = append(b.finished, 0)
	b.acked = append(b.acked, 0)
	return b.delivered
}

// giveUp ends a load whose acks stopped, rather than wait forever for
// room in the window.
func (b *ackBroker) giveUp() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.stuck = true
	b.freed.Broadcast()
}

// finish records that the handler of tag is done.
func (b *ackBroker) finish(tag uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.finished[tag] = time.Since(b.start)
}

func (b *ackBroker) Ack(tag uint64, multiple bool) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	at := time.Since(b.start)
	switch {
	case tag == 0 || tag > b.delivered:
		b.fault = fmt.Errorf("ack of tag %d, never delivered", tag)
	case !multiple && b.acked[tag] != 0:
		b.fault = fmt.Errorf("ack of tag %d, acked before", tag)
	}
	if b.fault != nil {
		b.freed.Broadcast()
		return b.fault
	}
	b.frames = append(b.frames, ackFrameAt{tag: tag, multiple: multiple, at: at})
	settle := func(t uint64) {
		if b.acked[t] == 0 {
			b.acked[t] = at
			b.unacked--
		}
	}
	if multiple {
		for t := b.low; t <= tag; t++ {
			settle(t)
		}
	} else {
		settle(tag)
	}
	for b.low <= b.delivered && b.acked[b.low] != 0 {
		b.low++
	}
	b.freed.Broadcast()
	return nil
}

func (b *ackBroker) Nack(tag uint64, multiple, requeue bool) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.fault = fmt.Errorf("nack of tag %d: every handler of the load succeeds", tag)
	b.freed.Broadcast()
	return b.fault
}

func (b *ackBroker) Reject(tag uint64, requeue bool) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.fault = fmt.Errorf("reject of tag %d: every handler of the load succeeds", tag)
	b.freed.Broadcast()
	return b.fault
}

// over reports whether every tag delivered is acked, or the channel
// would have been closed.
func (b *ackBroker) over() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.unacked == 0 || b.fault != nil
}

// err is the frame the broker would have closed the channel for, if any.
func (b *ackBroker) err() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.fault
}

// ackLoad is a consumer's life in small: a delivery loop that takes what
// the window allows, workers that finish a message every pace between
// them, and the acker between them and the broker.
type ackLoad struct {
	prefetch int
	workers  int
	pace     time.Duration // between two messages finished, on average
	slow     time.Duration // the work of tag 1's handler
	messages uint64        // deliveries, if not 0
	length   time.Duration // or how long deliveries go on
}

// run plays the load to its end, until every message is acked.
func (l ackLoad) run(t *testing.T) *ackBroker {
	t.Helper()
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	b := newAckBroker(l.prefetch)
	a := newAcker(b, m, l.prefetch)
	t.Cleanup(a.stop)
	jobs := make(chan uint64, l.prefetch)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the delivery loop
		defer wg.Done()
		defer close(jobs)
		for n := uint64(0); l.messages == 0 || n < l.messages; n++ {
			if l.length > 0 && time.Since(b.start) > l.length {
				return
			}
			tag := b.deliver()
			if tag == 0 {
				return
			}
			a.received(tag)
			jobs <- tag
		}
	}()
	var finished atomic.Int64
	for range l.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for tag := range jobs {
				if tag == 1 && l.slow > 0 {
					time.Sleep(l.slow)
				} else if l.pace > 0 {
					// A sleep takes a millisecond or so: the messages
					// finish in bursts that keep to the pace on average.
					due := b.start.Add(time.Duration(finished.Add(1)) * l.pace)
					time.Sleep(time.Until(due))
				}
				b.finish(tag)
				a.ack(tag, Ack)
			}
		}()
	}
	stuck := time.AfterFunc(10*time.Second, b.giveUp)
	wg.Wait()
	if err := b.err(); err != nil {
		t.Fatal(err)
	}
	if !stuck.Stop() {
		t.Fatal("the window stayed full for 10s: the acks stopped")
	}
	brokertest.WaitFor(t, 5*time.Second, "every message acked", b.over)
	if err := b.err(); err != nil {
		t.Fatal(err)
	}
	return b
}

// worstWait is the longest a message waited for its ack once its handler
// was done, and its tag.
func (b *ackBroker) worstWait() (time.Duration, uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var worst time.Duration
	var worstTag uint64
	for tag := uint64(1); tag <= b.delivered; tag++ {
		if w := b.acked[tag] - b.finished[tag]; w > worst {
			worst, worstTag = w, tag
		}
	}
	return worst, worstTag
}

func TestAckerKeepsTheAckDelayBehindASlowMessage(t *testing.T) {
	// Four handlers finish a message every 50 µs between them; the
	// handler of tag 1 takes 120 ms, and no multiple ack can be sent
	// before it is done.
	l := ackLoad{prefetch: 1000, workers: 4, pace: 50 * time.Microsecond, slow: 120 * time.Millisecond, length: 250 * time.Millisecond}
	// A loaded machine of two cores delays a timer, or a goroutine, by a
	// few milliseconds; not by tens. CI's (the race detector, other
	// packages' tests beside this one) once held a message 30 ms, in one
	// run of hundreds: so up to three runs, and an acker that keeps
	// finished messages waiting fails all three.
	const tolerance = 20 * time.Millisecond
	var faults []string
	for run := range 3 {
		fault := ackDelayBehindASlowMessage(t, l, tolerance)
		if fault == "" {
			return
		}
		faults = append(faults, fmt.Sprintf("run %d: %s", run+1, fault))
	}
	t.Errorf("in every run:\n%s", strings.Join(faults, "\n"))
}

// ackDelayBehindASlowMessage plays l, whose tag 1 is slow, and returns what
// broke the ack delay's promise in it, or "".
func ackDelayBehindASlowMessage(t *testing.T, l ackLoad, tolerance time.Duration) string {
	t.Helper()
	b := l.run(t)
	worst, tag := b.worstWait()
	b.mu.Lock()
	defer b.mu.Unlock()
	singles := 0
	for _, f := range b.frames {
		if !f.multiple {
			singles++
		}
	}
	t.Logf("%d messages, %d frames (%d single acks); the longest wait for an ack %v (tag %d)",
		b.delivered, len(b.frames), singles, worst, tag)
	if worst > ackDelay+tolerance {
		return fmt.Sprintf("tag %d waited %v for its ack once finished, want at most %v (ackDelay) + %v",
			tag, worst, ackDelay, tolerance)
	}
	// While tag 1 runs, the rest can only be acked one by one; once it is
	// done, a frame acks a batch again, with at most a few stragglers to
	// ack alone when the timer fires.
	behind := 0 // messages finished while tag 1 ran
	for tag := uint64(2); tag <= b.delivered; tag++ {
		if b.finished[tag] < b.finished[1] {
			behind++
		}
	}
	batch := min(l.prefetch/4, maxAckBatch)
	ticks := int(b.frames[len(b.frames)-1].at / ackDelay)
	if want := behind + int(b.delivered)/batch + 4*ticks + 8; len(b.frames) > want {
		return fmt.Sprintf("%d frames for %d messages, %d of them behind the slow one; want at most %d",
			len(b.frames), b.delivered, behind, want)
	}
	return ""
}

func TestAckerFramesPer1000Messages(t *testing.T) {
	// The usual case: fast handlers, none slow. A frame acks a batch;
	// the timer, and the odd message finished out of order, add a few.
	for _, tt := range []struct {
		give int // prefetch; a batch is a quarter of it, at most 64
		want int // frames for 1000 messages, about 1000 per batch
	}{
		{give: 16, want: 250},
		{give: 200, want: 20},
		{give: 1000, want: 16},
	} {
		t.Run(fmt.Sprint("prefetch ", tt.give), func(t *testing.T) {
			// A busy machine (CI: two cores, the race detector, other
			// packages' tests) that leaves the handler goroutines waiting
			// scrambles the order they finish in, and a batch is cut at
			// each message finished late: the usual case is a run the
			// machine lets go, so up to three runs, the best counts.
			var got []int
			for range 3 {
				b := ackLoad{prefetch: tt.give, workers: 4, messages: 1000}.run(t)
				b.mu.Lock()
				got = append(got, len(b.frames))
				b.mu.Unlock()
				if got[len(got)-1] <= tt.want+tt.want/2+4 {
					break
				}
			}
			t.Logf("frames for 1000 messages, run by run: %v", got)
			if best := slices.Min(got); best > tt.want+tt.want/2+4 {
				t.Errorf("prefetch %d: %v frames for 1000 messages in %d runs, want about %d", tt.give, got, len(got), tt.want)
			}
		})
	}
}

// countAcks is a channel that only counts the frames it carries.
type countAcks struct{ n atomic.Int64 }

func (c *countAcks) Ack(tag uint64, multiple bool) error           { c.n.Add(1); return nil }
func (c *countAcks) Nack(tag uint64, multiple, requeue bool) error { c.n.Add(1); return nil }
func (c *countAcks) Reject(tag uint64, requeue bool) error         { c.n.Add(1); return nil }

// BenchmarkAcker is the acker's own cost per message, four in flight, and
// the frames it sends for them.
func BenchmarkAcker(b *testing.B) {
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	c := &countAcks{}
	a := newAcker(c, m, 1000)
	defer a.stop()
	const inflight = 4
	for i := range b.N {
		tag := uint64(i) + 1
		a.received(tag)
		if tag > inflight {
			a.ack(tag-inflight, Ack)
		}
	}
	b.ReportMetric(float64(c.n.Load())*1000/float64(b.N), "frames/1000msgs")
}
