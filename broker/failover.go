package broker

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Stream publishes a run of messages through the nodes of a cluster, with
// confirms, and rides through the loss of its connection: the messages
// whose confirm was lost with the connection are not counted as
// published; they are sent again, with the same message id, on a
// connection to another node. A message that was stored before its
// confirm was lost is then in the queue twice: a duplicate is possible, a
// loss is not.
type Stream struct {
	// Dial opens a connection to a node; Dialer.Dial moves on to the next
	// node after a failure.
	Dial func(ctx context.Context) (*amqp.Connection, string, error)
	// Setup, if set, runs on every new connection before publishing
	// (declaring the topology, say).
	Setup func(conn *amqp.Connection) error
	// Window is how many messages are kept unconfirmed at most.
	Window int
	// WindowBytes, if above 0, bounds the bodies kept unconfirmed (and so
	// held in memory, to be sent again after a loss), in bytes; a message
	// larger than it is sent alone.
	WindowBytes int
	// RetryFor is how long to keep dialling, with backoff, once a
	// connection was lost; 0 gives up at the first loss. The first dial is
	// not retried: a broker that cannot be reached at all is an error.
	RetryFor time.Duration
	// Blocked, if set, is told each time the broker blocks a connection
	// of the stream (a memory or disk alarm), with the reason, and when it
	// unblocks it; the stream waits meanwhile. It is called from a
	// goroutine of the stream's own.
	Blocked func(amqp.Blocking)
	// Connected, if set, is told of every connection opened: the node
	// (its URL without password), and the error that lost the previous
	// one (nil for the first).
	Connected func(node string, lost error)
}

// lossGrace is how long an error waits for its connection to be seen
// closed: a write can fail on a dead link a moment before the library
// closes the connection.
const lossGrace = time.Second

// LostWatch returns a function that reports whether conn is lost, after
// an error on it: a lost connection calls for another node, while a
// channel error (a missing exchange, say) does not. Call it once conn is
// open; the function may be called any number of times.
func LostWatch(conn *amqp.Connection) func() bool {
	closed := conn.NotifyClose(make(chan *amqp.Error, 1))
	return func() bool {
		if conn.IsClosed() {
			return true
		}
		t := time.NewTimer(lossGrace)
		defer t.Stop()
		select {
		case <-closed:
			return true
		case <-t.C:
			return conn.IsClosed()
		}
	}
}

// closeGrace bounds the close handshake of a connection on the way out.
const closeGrace = 2 * time.Second

// CloseWhenDone ties conn to ctx: when ctx ends, conn is closed, which ends
// every call still waiting on it (a confirm, a channel's Close, a write
// the broker does not read). It returns the function that closes conn once
// done with it; call it exactly once, before the end of ctx or after.
//
// Every close is bounded: amqp091-go's Close waits for the broker's
// close-ok, which never comes while the broker blocks the connection (a
// memory or disk alarm: it stops reading it). A blocked connection is
// closed at once, without the handshake; any other within closeGrace.
func CloseWhenDone(ctx context.Context, conn *amqp.Connection) func() error {
	return closeWhenDone(ctx, conn, nil)
}

// closeWhenDone is CloseWhenDone, telling blocked, if not nil, each time
// the broker blocks or unblocks conn.
func closeWhenDone(ctx context.Context, conn *amqp.Connection, blocked func(amqp.Blocking)) func() error {
	var isBlocked atomic.Bool
	notes := conn.NotifyBlocked(make(chan amqp.Blocking, 1))
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for b := range notes { // closed with the connection
			isBlocked.Store(b.Active)
			if blocked != nil {
				blocked(b)
			}
		}
	}()
	var (
		once sync.Once
		err  error
	)
	closeConn := func() error {
		once.Do(func() {
			deadline := time.Now().Add(closeGrace)
			if isBlocked.Load() {
				deadline = time.Now()
			}
			if cerr := conn.CloseDeadline(deadline); cerr != nil && !errors.Is(cerr, amqp.ErrClosed) {
				err = fmt.Errorf("close connection: %w", cerr)
			}
			<-watched
		})
		return err
	}
	stop := context.AfterFunc(ctx, func() { _ = closeConn() })
	return func() error {
		stop()
		return closeConn() // after the one ctx's end started, if it did
	}
}

// errLost marks an error that lost the connection: the stream dials again.
type errLost struct{ err error }

func (e *errLost) Error() string { return e.err.Error() }
func (e *errLost) Unwrap() error { return e.err }

// Result is what became of the messages a Stream took.
type Result struct {
	// Confirmed is how many the broker confirmed.
	Confirmed int
	// Refused is how many the broker refused (nack) or returned
	// (unroutable).
	Refused int
	// Unconfirmed is how many were sent and never confirmed nor refused,
	// their connection lost or the stream stopped: each may be in the
	// queue, or not.
	Unconfirmed int
}

// Publish publishes every message of msgs to exchange with key, and
// returns how many the broker confirmed; Run says more.
func (s *Stream) Publish(ctx context.Context, exchange, key string, msgs iter.Seq[amqp.Publishing]) (int, error) {
	r, err := s.Run(ctx, exchange, key, msgs)
	return r.Confirmed, err
}

// Run publishes every message of msgs to exchange with key, and says what
// became of them. It goes on after a refused or unroutable message and
// returns the first such error; it stops at an error of the channel (a
// missing exchange, say), at the end of ctx, and when no node could be
// reached for RetryFor after a loss. Messages without a message id get
// one, so that copies sent again carry the same. When ctx ends, the
// connection is closed at once, whatever it was waiting for.
func (s *Stream) Run(ctx context.Context, exchange, key string, msgs iter.Seq[amqp.Publishing]) (Result, error) {
	next, stop := iter.Pull(msgs)
	defer stop()
	st := &streamState{next: next}
	result := func() Result {
		return Result{Confirmed: st.confirmed, Refused: st.refused, Unconfirmed: len(st.resend)}
	}
	var lost error
	for {
		conn, node, err := s.Dial(ctx)
		if err != nil {
			if lost == nil {
				return result(), err
			}
			return result(), fmt.Errorf("%d messages not confirmed, no node reached within %s: %w", len(st.resend), s.RetryFor, err)
		}
		if s.Connected != nil {
			s.Connected(node, lost)
		}
		err = s.publishOn(ctx, conn, exchange, key, st)
		var le *errLost
		if err == nil {
			return result(), st.firstErr
		}
		if !errors.As(err, &le) || ctx.Err() != nil || s.RetryFor <= 0 {
			if n := len(st.resend); n > 0 {
				err = fmt.Errorf("%d messages not confirmed: %w", n, err)
			}
			return result(), err
		}
		lost = le.err
		if err := s.redial(ctx, st); err != nil {
			return result(), fmt.Errorf("%d messages not confirmed: %w", len(st.resend), errors.Join(lost, err))
		}
	}
}

// redial waits until a node answers, with backoff, for at most RetryFor.
// It dials to find out and closes the connection at once: Publish dials
// again and so starts from the node that answered.
func (s *Stream) redial(ctx context.Context, st *streamState) error {
	deadline := time.Now().Add(s.RetryFor)
	wait := 100 * time.Millisecond
	for {
		conn, _, err := s.Dial(ctx)
		if err == nil {
			_ = conn.CloseDeadline(time.Now().Add(closeGrace))
			return nil
		}
		if time.Now().Add(wait).After(deadline) {
			return err
		}
		t := time.NewTimer(wait/2 + rand.N(wait/2+1))
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		wait = min(2*wait, 5*time.Second)
	}
}

// streamState is what a Stream carries from one connection to the next.
type streamState struct {
	next      func() (amqp.Publishing, bool)
	resend    []amqp.Publishing // sent on a lost connection, unconfirmed: sent first on the next
	unsent    []amqp.Publishing // taken and never sent: sent after resend
	confirmed int
	refused   int
	firstErr  error // the first refused or unroutable message
}

// refuse counts a message the broker refused or returned.
func (st *streamState) refuse(err error) {
	st.refused++
	if st.firstErr == nil {
		st.firstErr = err
	}
}

// take returns the next message to send: one to send again, or a new one.
func (st *streamState) take() (amqp.Publishing, bool) {
	if len(st.resend) > 0 {
		m := st.resend[0]
		st.resend = st.resend[1:]
		return m, true
	}
	if len(st.unsent) > 0 {
		m := st.unsent[0]
		st.unsent = st.unsent[1:]
		return m, true
	}
	m, ok := st.next()
	if ok && m.MessageId == "" {
		m.MessageId = NewID()
	}
	return m, ok
}

type inFlight struct {
	msg amqp.Publishing
	p   *Pending
}

// publishOn publishes on conn until the messages run out or conn fails,
// in which case it puts back every unconfirmed message and returns an
// *errLost. It closes conn.
func (s *Stream) publishOn(ctx context.Context, conn *amqp.Connection, exchange, key string, st *streamState) error {
	lost := LostWatch(conn)
	closeConn := closeWhenDone(ctx, conn, s.Blocked)
	var (
		pending []inFlight
		p       *Publisher
	)
	defer func() {
		// What was confirmed is counted; the rest is sent again or
		// reported. The publisher is not closed on its own: its channel's
		// Close would wait on a broker that blocks the connection.
		_ = closeConn()
		if p != nil {
			<-p.stopped
		}
	}()
	// giveBack puts the unconfirmed messages back, in the order they were
	// sent, before those still waiting to be sent again. Confirms that
	// arrived before the loss still count: only the messages whose confirm
	// was lost are sent again.
	giveBack := func(err error, extra ...amqp.Publishing) error {
		isLost := ctx.Err() == nil && lost()
		back := make([]amqp.Publishing, 0, len(pending)+len(extra)+len(st.resend))
		hctx, cancel := context.WithTimeout(ctx, lossGrace)
		defer cancel()
		for _, f := range pending {
			// The library settles every outstanding confirm when the
			// channel closes: this does not block on a lost connection.
			var werr error
			if isLost {
				werr = p.Wait(hctx, f.p)
			} else {
				// Stopped (ctx ended, or a channel error): the confirms
				// that came still count; the others are not waited for.
				werr = p.poll(f.p)
			}
			switch {
			case werr == nil:
				st.confirmed++
			case errors.Is(werr, ErrNacked) || errors.Is(werr, ErrUnroutable):
				st.refuse(werr)
			default:
				back = append(back, f.msg)
			}
		}
		pending = nil
		back = append(back, extra...)
		st.resend = append(back, st.resend...)
		if isLost {
			return &errLost{err: err}
		}
		return err
	}
	if s.Setup != nil {
		if err := s.Setup(conn); err != nil {
			return giveBack(err)
		}
	}
	var err error
	p, err = NewPublisher(conn)
	if err != nil {
		return giveBack(err)
	}
	window := min(max(s.Window, 1), maxReturns)
	var held int // bytes of the bodies in pending
	// wait waits for the oldest confirm; on a failure, next, taken and
	// not sent, goes back to be taken again.
	wait := func(next ...amqp.Publishing) error {
		f := pending[0]
		err := p.Wait(ctx, f.p)
		switch {
		case err == nil:
			st.confirmed++
		case errors.Is(err, ErrNacked) || errors.Is(err, ErrUnroutable):
			st.refuse(err)
		default:
			err = giveBack(err)
			st.unsent = append(next, st.unsent...)
			return err
		}
		pending = pending[1:]
		held -= len(f.msg.Body)
		return nil
	}
	for {
		msg, ok := st.take()
		if !ok {
			break
		}
		for len(pending) > 0 && (len(pending) >= window || s.WindowBytes > 0 && held+len(msg.Body) > s.WindowBytes) {
			if err := wait(msg); err != nil {
				return err
			}
		}
		m, err := p.Send(ctx, exchange, key, msg)
		if err != nil {
			return giveBack(err, msg)
		}
		pending = append(pending, inFlight{msg: msg, p: m})
		held += len(msg.Body)
	}
	for len(pending) > 0 {
		if err := wait(); err != nil {
			return err
		}
	}
	return nil
}
