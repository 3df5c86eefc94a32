package worker

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
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
