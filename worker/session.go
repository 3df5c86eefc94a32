package worker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"

	"github.com/warren-mq/warren/broker"
	"github.com/warren-mq/warren/tracing"
)

// session is one channel and the deliveries it handed out. Every delivery
// is settled on the channel that delivered it: delivery tags mean nothing
// on another channel, and once a channel is gone the broker has requeued
// its unacked messages already.
type session struct {
	w *Worker
	// conn is ch's connection: closed by force when a call on the way out
	// hangs, and where the topology is declared again on a channel of its own.
	conn   *amqp.Connection
	ch     *amqp.Channel
	copies *copier // publishes retry and dead copies, on a connection of its own
	acks   *acker

	stopping <-chan struct{} // closed when the drain begins
	ended    chan struct{}   // closed when the session is over

	mu       sync.Mutex
	inflight int           // deliveries handed to handlers and not yet settled
	bytes    int64         // the bytes of their bodies
	idle     chan struct{} // closed when inflight drops to 0; nil if nobody waits
	window   int           // the prefetch of the consumer in force
	// What the adaptive prefetch measures (prefetch.go).
	completed int           // deliveries settled since sampledAt
	sampledAt time.Time     // when the last sample was taken
	freedAt   time.Time     // when a handler freed a slot of a full window; zero once its delivery came
	rtts      int           // round trips measured since sampledAt
	rttSum    time.Duration // their sum
	largest   int           // the largest body received since sampledAt
}

// job is one delivery on its way to a handler.
type job struct {
	d amqp.Delivery
	s *session
	// probe is set on the one message taken while the circuit is open, to
	// try the downstream with.
	probe bool
}

// serveChannel opens a channel on conn, declares the topology and consumes
// until the channel closes or ctx is done, in which case it drains until
// dctx ends at the latest. A consumer cancelled by the broker (its queue
// was deleted) is declared and consumed again on the same channel; so is
// one that warren cancels to change the adaptive prefetch.
func (w *Worker) serveChannel(ctx, dctx context.Context, conn *amqp.Connection, copies *copier, jobs chan<- job) error {
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	window := w.cfg.Prefetch
	if w.adaptive != nil {
		window = w.adaptive.window
	}
	s := &session{w: w, conn: conn, ch: ch, copies: copies, stopping: ctx.Done(), ended: make(chan struct{}), window: window, sampledAt: time.Now()}
	s.acks = newAcker(ch, w.metrics, window)
	// cancelling runs the cancel of a consumer whose window changes; it
	// ends by the close below at the latest (a call on a closed channel
	// returns).
	var cancelling sync.WaitGroup
	defer cancelling.Wait()
	defer func() {
		close(s.ended)
		s.acks.stop()
		s.call("close channel", func() error { return ch.Close() })
	}()
	closed := ch.NotifyClose(make(chan *amqp.Error, 1))
	cancels := ch.NotifyCancel(make(chan string, 1))
	ticker := time.NewTicker(tick)
	defer ticker.Stop()
	var samples <-chan time.Time
	if w.adaptive != nil {
		t := time.NewTicker(sampleEvery)
		defer t.Stop()
		samples = t.C
	}

	declare := true
	for n := 1; ; n++ {
		if declare {
			w.setNotReady("declaring topology")
			if err := w.cfg.Topology.Apply(ch); err != nil {
				return err
			}
			declare = false
		}
		if w.circuit.isOpen() {
			if stop, err := s.probe(ctx, dctx, jobs, closed, ticker.C); stop {
				return err
			}
		}
		// A new basic.qos applies to the consumers started after it.
		called := time.Now()
		if err := ch.Qos(s.window, 0, false); err != nil {
			return fmt.Errorf("set prefetch: %w", err)
		}
		if w.adaptive != nil {
			w.adaptive.link = min(time.Since(called), maxRTTSample)
		}
		tag := w.consumerTag(n)
		deliveries, err := ch.Consume(w.cfg.Topology.Queue, tag,
			false, // autoAck: never; a message is acked after its handler
			false, // exclusive
			false, // noLocal
			false, // noWait
			nil)
		if err != nil {
			return fmt.Errorf("consume queue %q: %w", w.cfg.Topology.Queue, err)
		}
		// Said before shown, as "connected" is: the probe and the
		// gauges turn once the line is there to say why.
		w.log.Info("consuming", zap.Int("prefetch", s.window), zap.Bool("adaptive", w.adaptive != nil), zap.Int("concurrency", w.cfg.Concurrency),
			zap.Int64("max_inflight_bytes", w.cfg.MaxInflightBytes), zap.Float64("rate_limit", w.cfg.RateLimit))
		w.metrics.prefetch.Set(float64(s.window))
		w.setReady()
		w.recovered()
		resize := 0 // the window asked for once tag is cancelled to change it; 0 when none is
		// cancelled receives the result of the cancel of tag that warren
		// asked for (to change the window, or because the circuit
		// opened); nil while none is under way.
		var cancelled chan error
		// stopConsumer cancels the consumer beside this loop, which keeps
		// reading its deliveries meanwhile: waiting for the cancel-ok here
		// would leave them all buffered in amqp091-go, in memory.
		stopConsumer := func() {
			cancelled = make(chan error, 1)
			cancelling.Add(1)
			go func(tag string) {
				defer cancelling.Done()
				cancelled <- ch.Cancel(tag, false)
			}(tag)
		}
		// changeWindow cancels the consumer to consume anew with next.
		// The old consumer's deliveries, up to the cancel-ok, keep coming
		// on deliveries: they are handled as usual, or handed back when
		// they do not fit the byte budget. The cancel runs beside this
		// loop, which keeps reading them meanwhile: waiting for the
		// cancel-ok here would leave them all buffered in amqp091-go, in
		// memory. Only once they are all settled does the new window start.
		changeWindow := func(next int) {
			w.log.Info("changing prefetch", zap.Int("from", s.window), zap.Int("to", next), zap.String("why", w.adaptive.why),
				zap.Float64("completion_rate", w.adaptive.rate), zap.Duration("round_trip", w.adaptive.turnaround()),
				zap.Int64("largest_body", int64(w.adaptive.size)))
			resize = next
			stopConsumer()
		}
	consume:
		for {
			select {
			case <-ctx.Done():
				if cancelled != nil {
					tag = "" // cancelled already
				}
				return s.drain(dctx, tag, deliveries, closed)
			case e := <-closed:
				return closeError(e)
			case <-ticker.C:
				w.touch()
			case <-w.circuit.tripped():
				// Messages wait in the queue: stop the consumer, hand back
				// what comes until the cancel-ok, then probe.
				if cancelled == nil && w.circuit.isOpen() {
					w.log.Info("circuit open: stopping the consumer", zap.Int("inflight", s.pending()))
					stopConsumer()
				}
			case now := <-samples:
				if cancelled != nil {
					continue
				}
				if next, ok := w.adaptive.observe(s.sample(now)); ok {
					changeWindow(next)
				}
			case d, ok := <-deliveries:
				if !ok {
					if cancelled != nil {
						// The library closes deliveries once the cancel-ok came.
						if err := <-cancelled; err != nil {
							return fmt.Errorf("cancel consumer: %w", err)
						}
						if stop, err := s.settleCancelled(ctx, dctx, closed, ticker.C); stop {
							return err
						}
						if resize != 0 {
							// A body seen during the switch may have lowered the ceiling.
							s.resize(min(resize, w.adaptive.ceiling()))
						}
						select {
						case _, ok := <-cancels:
							if !ok {
								return closeError(<-closed)
							}
							declare = true // the broker cancelled it too: its queue may be gone
						default:
						}
						break consume
					}
					// Closed by a cancel from the broker, or with the channel.
					select {
					case <-ctx.Done():
						return s.drain(dctx, "", nil, closed)
					case e := <-closed:
						return closeError(e)
					case t, ok := <-cancels:
						if !ok {
							// The library closes the cancel notifications too
							// when the channel dies, maybe before this select
							// sees the error.
							return closeError(<-closed)
						}
						w.setNotReady("consumer cancelled by the broker")
						w.log.Info("consumer cancelled by the broker; declaring and consuming again once its deliveries are settled",
							zap.String("consumer", t), zap.Int("inflight", s.pending()))
						w.metrics.reconnects.Inc()
						if stop, err := s.settleCancelled(ctx, dctx, closed, ticker.C); stop {
							return err
						}
						declare = true
						break consume
					}
				}
				s.acks.received(d.DeliveryTag)
				if w.circuit.isOpen() && !s.copiesBack() {
					// Untried, it counts as no attempt; the consumer is
					// being cancelled. (Where a hand-back counts a
					// delivery, a handler slot hands it back as a copy.)
					s.acks.nack(d.DeliveryTag)
					continue
				}
				if !s.admit(&d) {
					if next, ok := w.adaptive.tooLarge(len(d.Body)); ok && cancelled == nil {
						changeWindow(next)
					}
					continue
				}
				if err := s.forward(ctx, jobs, job{d: d, s: s}, ticker.C, closed); err != nil {
					if errors.Is(err, errDraining) {
						if cancelled != nil {
							tag = ""
						}
						return s.drain(dctx, tag, deliveries, closed)
					}
					return err
				}
			}
		}
	}
}

// settleCancelled waits until every delivery of the consumer the broker
// cancelled is settled and its ack sent. The prefetch limits each consumer
// on its own: a new one beside the old one's unsettled deliveries would
// hold up to twice the prefetch. It reports whether serveChannel must
// return, with what, because the channel closed or the drain began (the
// broker cancelled the consumer already: the drain has none to cancel).
func (s *session) settleCancelled(ctx, dctx context.Context, closed <-chan *amqp.Error, tick <-chan time.Time) (bool, error) {
	for {
		select {
		case <-s.idleChan():
			s.acks.flushOwed()
			return false, nil
		case <-ctx.Done():
			return true, s.drain(dctx, "", nil, closed)
		case e := <-closed:
			return true, closeError(e)
		case <-tick:
			s.w.touch()
		}
	}
}

// probe runs while the circuit is open, the consumer stopped: at growing
// intervals it takes one message (basic.get) for a handler to try the
// downstream with, until an answer closes the circuit. A probe that finds
// the downstream still down hands its message back untried. It reports
// whether serveChannel must return, with what, because the channel closed
// or the drain began.
func (s *session) probe(ctx, dctx context.Context, jobs chan<- job, closed <-chan *amqp.Error, tick <-chan time.Time) (bool, error) {
	w := s.w
	// Ready says why not: the circuit's reason.
	w.notReady.Store(nil)
	w.metrics.consuming.Set(0)
	for w.circuit.isOpen() {
		t := time.NewTimer(w.circuit.nextProbe())
	wait:
		for {
			select {
			case <-ctx.Done():
				t.Stop()
				return true, s.drain(dctx, "", nil, closed)
			case e := <-closed:
				t.Stop()
				return true, closeError(e)
			case <-tick:
				w.touch()
			case <-t.C:
				break wait
			}
		}
		d, ok, err := s.ch.Get(w.cfg.Topology.Queue, false)
		if err != nil {
			return true, fmt.Errorf("probe queue %q: %w", w.cfg.Topology.Queue, err)
		}
		if !ok {
			continue // nothing waits, nothing to try the downstream with
		}
		w.log.Info("circuit half-open: probing with one message", zap.String("message_id", d.MessageId))
		s.acks.received(d.DeliveryTag)
		if err := s.forward(ctx, jobs, job{d: d, s: s, probe: true}, tick, closed); err != nil {
			if errors.Is(err, errDraining) {
				return true, s.drain(dctx, "", nil, closed)
			}
			return true, err
		}
		if stop, err := s.settleCancelled(ctx, dctx, closed, tick); stop {
			return true, err
		}
	}
	return false, nil
}

// errDraining says that ctx ended while a delivery waited for a handler.
var errDraining = errors.New("draining")

// admit reports whether d fits the byte budget beside the deliveries
// held. One that does not, while others are held, is handed back untried:
// the broker sent it because the window in messages let it, and the
// window shrinks meanwhile. A delivery that comes alone always fits, so a
// message larger than the budget goes through. A fixed prefetch admits
// everything: handing a delivery back would only bring it again at once.
func (s *session) admit(d *amqp.Delivery) bool {
	if s.w.adaptive == nil {
		return true
	}
	s.mu.Lock()
	fits := s.inflight == 0 || s.bytes+int64(len(d.Body)) <= s.w.cfg.MaxInflightBytes
	s.mu.Unlock()
	if !fits {
		// Never held: it counts neither as in flight nor as completed
		// (the completion rate sizes the window).
		s.acks.nack(d.DeliveryTag)
	}
	return fits
}

// forward hands j's delivery to a free handler, waiting while all are busy.
func (s *session) forward(ctx context.Context, jobs chan<- job, j job, tick <-chan time.Time, closed <-chan *amqp.Error) error {
	d := j.d
	s.add(len(d.Body))
	for {
		select {
		case jobs <- j:
			return nil
		case <-tick:
			s.w.touch()
		case <-ctx.Done():
			s.settle(&d, Requeue)
			return errDraining
		case e := <-closed:
			s.done(len(d.Body))
			return closeError(e)
		}
	}
}

// drain stops the consumer (tag; none if empty), hands back deliveries
// that no handler started, and waits until running handlers are settled
// or dctx ends, a while after the shutdown timeout cancelled them. Either
// way it flushes the acks owed. The caller closes the channel, which
// hands back the rest. A call to the broker that hangs (a blocked or
// stalled connection) closes the connection: the broker requeues what it
// held.
func (s *session) drain(dctx context.Context, tag string, deliveries <-chan amqp.Delivery, closed <-chan *amqp.Error) error {
	w := s.w
	w.setNotReady("draining")
	w.log.Info("draining", zap.Int("inflight", s.pending()))
	if tag != "" {
		s.call("cancel consumer", func() error { return s.ch.Cancel(tag, false) })
	}
	ticker := time.NewTicker(tick)
	defer ticker.Stop()
	for deliveries != nil {
		select {
		case d, ok := <-deliveries:
			if !ok {
				deliveries = nil
				continue
			}
			s.acks.received(d.DeliveryTag)
			s.add(len(d.Body))
			s.settle(&d, Requeue)
		case <-closed:
			return nil
		case <-dctx.Done():
			return s.giveUp()
		case <-ticker.C:
			w.touch()
		}
	}
	for {
		select {
		case <-s.idleChan():
			s.call("flush acks", func() error { s.acks.flushOwed(); return nil })
			w.log.Info("drained")
			return nil
		case <-closed:
			return nil
		case <-dctx.Done():
			return s.giveUp()
		case <-ticker.C:
			w.touch()
		}
	}
}

// giveUp ends a drain whose handlers did not all return in time: what
// they finished is acked, the rest goes back with the channel.
func (s *session) giveUp() error {
	s.call("flush acks", func() error { s.acks.flushOwed(); return nil })
	s.w.log.Warn("shutdown timeout: handing back unfinished messages", zap.Int("inflight", s.pending()))
	return nil
}

// call makes a broker call on the way out, bounded by closeTimeout; past
// it, the connection is closed by force.
func (s *session) call(what string, fn func() error) {
	var err error
	if !bounded(s.conn, time.Now().Add(closeTimeout), func() { err = fn() }) {
		s.w.log.Warn(what+": no answer from the broker; connection closed", zap.Duration("after", closeTimeout))
		return
	}
	if err != nil && !errors.Is(err, amqp.ErrClosed) {
		s.w.log.Debug(what, zap.Error(err))
	}
}

// settle acks d on its own channel, or for Requeue nacks it back to the
// queue; the acker counts its outcome once the broker has been told. A
// retried, dead or deferred message is acked: its copy is confirmed
// already. A delivery whose channel died meanwhile is only counted as
// stale: the broker has requeued it.
func (s *session) settle(d *amqp.Delivery, o Outcome) {
	if o == Requeue {
		s.acks.nack(d.DeliveryTag)
		s.done(len(d.Body))
		return
	}
	s.ackAs(d, o)
}

// ackAs acks d, counting the outcome o: also Requeue, for a message
// handed back as a copy (handBack).
func (s *session) ackAs(d *amqp.Delivery, o Outcome) {
	s.acks.ack(d.DeliveryTag, o)
	s.done(len(d.Body))
}

// add counts a delivery of size bytes as held.
func (s *session) add(size int) {
	s.mu.Lock()
	if !s.freedAt.IsZero() {
		// The delivery that fills the slot freed at freedAt: a round trip.
		s.rttSum += min(time.Since(s.freedAt), maxRTTSample)
		s.rtts++
		s.freedAt = time.Time{}
	}
	s.inflight++
	s.bytes += int64(size)
	s.largest = max(s.largest, size)
	s.mu.Unlock()
	s.w.metrics.inflight.Inc()
	s.w.metrics.inflightBytes.Add(float64(size))
}

// done counts a delivery of size bytes as settled.
func (s *session) done(size int) {
	s.mu.Lock()
	if s.inflight == s.window && s.freedAt.IsZero() && s.w.adaptive != nil {
		s.freedAt = time.Now()
	}
	s.inflight--
	s.bytes -= int64(size)
	s.completed++
	if s.inflight == 0 && s.idle != nil {
		close(s.idle)
		s.idle = nil
	}
	s.mu.Unlock()
	s.w.metrics.inflight.Dec()
	s.w.metrics.inflightBytes.Sub(float64(size))
}

func (s *session) pending() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inflight
}

// idleChan returns a channel closed once no delivery of s is in flight.
func (s *session) idleChan() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inflight == 0 {
		c := make(chan struct{})
		close(c)
		return c
	}
	if s.idle == nil {
		s.idle = make(chan struct{})
	}
	return s.idle
}

// closeError turns a channel's close notification into an error; a nil
// or closed notification means the channel was closed on purpose.
func closeError(e *amqp.Error) error {
	if e == nil {
		return amqp.ErrClosed
	}
	return e
}

// dispatch runs handlers for jobs until jobs is closed. slot records when
// the running handler started, for Alive.
func (w *Worker) dispatch(ctx context.Context, jobs <-chan job, slot *atomic.Int64) {
	// Each handler's timeout context, when one is made, hangs off this
	// goroutine's own parent: off the shared one, it would take that
	// parent's lock twice.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for j := range jobs {
		if !j.probe && w.circuit.isOpen() {
			// Held but not started when the circuit opened: back to the
			// queue untried.
			j.s.handBack(ctx, &j.d)
			continue
		}
		if at, ok := broker.RetryAt(j.d.Headers); ok && j.s.deferUntil(ctx, &j.d, at) {
			continue
		}
		turn := w.awaitToken(&j)
		if !j.probe && w.circuit.isOpen() {
			// The circuit opened while it waited for its turn (which
			// cuts the wait short).
			j.s.handBack(ctx, &j.d)
			continue
		}
		if !turn {
			// The drain began or the channel closed while it waited for its
			// turn: back to the queue untried.
			j.s.settle(&j.d, Requeue)
			continue
		}
		start := time.Now()
		slot.Store(start.UnixNano())
		// mctx is the message's context: with tracing on, it carries the
		// attempt's span, for the handler, the logs and the copies.
		mctx, span := ctx, trace.Span(nil)
		if w.tracer != nil {
			mctx, span = w.startSpan(ctx, &j.d)
		}
		o, reply, err := w.handle(mctx, &j.d)
		slot.Store(0)
		tried := o
		o = w.circuit.observe(o, err, time.Now())
		// The outcome logged and measured is the real one: a last failed
		// attempt is dead, not retried.
		f := w.verdict(&j.d, o, err)
		f.reply = reply
		// The downstream is down and the circuit open: this attempt
		// does not count.
		f.handBack = o == Requeue && tried != Requeue
		w.metrics.duration[f.outcome].Observe(time.Since(start).Seconds())
		if err != nil {
			w.log.Warn("handler failed", w.messageFields(mctx, &j.d, zap.Stringer("outcome", f.outcome), zap.Error(err))...)
		} else if ce := w.log.Check(zap.DebugLevel, "handled"); ce != nil {
			ce.Write(w.messageFields(mctx, &j.d)...)
		}
		j.s.finish(mctx, &j.d, f)
		if span != nil {
			tracing.End(span, f.outcome.String(), err)
		}
	}
}

// handle runs the handler for d with its timeout, turning a panic into a
// retry. A handler cut short by the end of the shutdown timeout hands its
// message back untried.
// The handler's reply is returned for an ack of a request that carries
// reply_to, nil otherwise.
func (w *Worker) handle(ctx context.Context, d *amqp.Delivery) (o Outcome, reply *Reply, err error) {
	hctx := newCallContext(ctx, w.cfg.HandlerTimeout)
	defer hctx.release()
	defer func() {
		if r := recover(); r != nil {
			w.log.Error("handler panicked", zap.Any("panic", r), zap.Stack("stack"))
			o, reply, err = Retry, nil, fmt.Errorf("handler panicked: %v", r)
		}
	}()
	m := newMessage(d)
	err = w.cfg.Handler.Handle(hctx, m)
	if err != nil && ctx.Err() != nil {
		return Requeue, nil, err
	}
	if err == nil && d.ReplyTo != "" {
		reply = m.Reply
	}
	return OutcomeOf(err), reply, err
}
