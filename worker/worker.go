// Package worker consumes a RabbitMQ queue with at-least-once guarantees:
// it keeps a connection and channel open through broker failures, hands each
// delivery to a Handler on a bounded set of goroutines, and settles each
// message on the channel that delivered it only after its handler returned.
package worker

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/warren-mq/warren/broker"
	"github.com/warren-mq/warren/tracing"
)

// Defaults for the zero values of Config.
const (
	DefaultConcurrency     = 4
	DefaultHandlerTimeout  = time.Minute
	DefaultShutdownTimeout = 25 * time.Second
	DefaultMaxRetryAfter   = time.Hour
	// DefaultMaxInflightBytes bounds the bodies held at once when the
	// Config says nothing: a pod without a memory limit of its own still
	// must not take gigabytes because a producer sends large messages.
	DefaultMaxInflightBytes = 256 << 20
)

const (
	// minBackoff and maxBackoff bound the wait between reconnection attempts.
	minBackoff = 200 * time.Millisecond
	maxBackoff = 30 * time.Second
	// healthyAfter is how long a channel must consume before the backoff
	// starts again from minBackoff: a channel that dies at once is not
	// reopened in a hot loop.
	healthyAfter = 2 * time.Second
	// tick is how often the worker's loops prove they are not stuck.
	tick = time.Second
	// stallAfter is how long without a tick makes the worker not alive. It
	// is far above anything a loop legitimately blocks for (a wait is
	// bounded by maxBackoff; dials, bounded by their handshake timeouts, are
	// not counted).
	stallAfter = 2 * time.Minute
	// overrunGrace is how long a handler may run past its timeout before
	// the worker counts as stuck: a handler that ignores its context holds
	// its slot forever, and only a restart frees it.
	overrunGrace = 30 * time.Second
)

// Dialer opens a connection to the broker. It returns the node it reached,
// as a URL without password, for logs.
type Dialer interface {
	Dial(ctx context.Context) (*amqp.Connection, string, error)
}

// Config holds what a Worker needs. Dialer, Topology.Queue, Handler and
// Logger are required; zero numbers take the defaults above.
type Config struct {
	Dialer   Dialer
	Topology broker.Topology
	Handler  Handler
	Logger   *zap.Logger
	// Registerer receives the worker's metrics; nil registers nowhere.
	Registerer prometheus.Registerer
	// TracerProvider makes a span for each attempt at a message, child of
	// the trace context its headers carry, and hands it to the handler in
	// its context; nil means tracing is off, at no cost per message.
	TracerProvider trace.TracerProvider

	// Prefetch is the QoS prefetch count: the most unacked deliveries the
	// broker sends, and so the most messages held in memory. 0 means
	// adaptive: the worker sizes it from the completion rate and the
	// broker's round trip, from Concurrency to MaxPrefetch.
	Prefetch int
	// MaxPrefetch bounds the adaptive prefetch; 0 means DefaultMaxPrefetch.
	// It is ignored when Prefetch is set.
	MaxPrefetch int
	// MaxInflightBytes bounds the bytes of message bodies held at once
	// (received and not settled) when the prefetch is adaptive: the
	// window shrinks to what the budget allows for the largest bodies
	// seen, and a delivery that would exceed it, beside others held, is
	// handed back untried. One message larger than the budget is taken
	// alone. 0 means DefaultMaxInflightBytes. With a fixed Prefetch, the
	// broker may deliver that many messages of any size.
	MaxInflightBytes int64
	// Concurrency is the number of handlers that run at once.
	Concurrency int
	// HandlerTimeout bounds one call of the handler.
	HandlerTimeout time.Duration
	// ShutdownTimeout bounds the drain once Run's context is done: then
	// handlers are cancelled. Run returns within DrainBound of it.
	ShutdownTimeout time.Duration
	// MaxAttempts is how many attempts a message has before it is
	// dead-lettered; 0 means DefaultMaxAttempts.
	MaxAttempts int
	// MaxRetryAfter is the longest wait a handler may ask for (an HTTP
	// Retry-After); a message asking for more is dead-lettered. 0 means
	// DefaultMaxRetryAfter.
	MaxRetryAfter time.Duration
	// ReplyOnDead sends an error reply to the requester of a message that
	// goes dead, when it carries reply_to: the reason in its body and in
	// the x-warren-error header, x-warren-outcome "dead". It is
	// published once the dead copy is confirmed, and confirmed before the
	// message is acked.
	ReplyOnDead bool
	// Circuit sets the circuit breaker; its zero value is off.
	Circuit CircuitConfig
	// RateLimit is the most handler calls that start a second, for
	// endpoints with quotas; 0 means no limit. A retry takes its turn
	// like a first attempt. The calls start evenly spaced (a burst of
	// one); a delivery waits for its turn in its handler's slot.
	RateLimit float64
	// ConsumerTag prefixes the tags of the worker's consumers on the
	// broker; empty means "warren-" and a random suffix.
	ConsumerTag string
}

// Worker consumes one queue. Create it with New and start it with Run.
type Worker struct {
	cfg     Config
	log     *zap.Logger
	metrics *metrics

	notReady atomic.Pointer[string] // why the worker is not ready; nil when consuming
	lastTick atomic.Int64           // unix nanoseconds of the last loop tick
	dialing  atomic.Bool            // a dial is under way: bounded by its own timeouts, it does not tick
	slots    []atomic.Int64         // per handler goroutine: unix nanoseconds its handler started, 0 when idle

	conn          atomic.Pointer[amqp.Connection] // the consuming connection, while open
	blocked       blockedSet
	blockedReason atomic.Pointer[string] // why the broker blocks a connection of warren's; nil when none is

	reported string // last failure logged at error level, to log a repeat only at debug

	copyFail  *copyFailures // copies the broker did not take, across sessions
	replyFail *handBacks    // replies the broker did not take

	// adaptive sizes the prefetch, across sessions; nil when the
	// prefetch is fixed. Only the consuming session uses it.
	adaptive *prefetchController

	// tracer makes the span of each attempt; nil when tracing is off.
	tracer trace.Tracer

	// circuit stops consumption while the downstream is down; nil when off.
	circuit *circuit

	// limiter spaces the handlers' starts; nil when there is no limit.
	limiter *rate.Limiter
}

// New checks cfg and returns a Worker that is not yet running.
func New(cfg Config) (*Worker, error) {
	switch {
	case cfg.Dialer == nil:
		return nil, errors.New("worker: no Dialer")
	case cfg.Topology.Queue == "":
		return nil, errors.New("worker: no queue")
	case cfg.Handler == nil:
		return nil, errors.New("worker: no Handler")
	case cfg.Logger == nil:
		return nil, errors.New("worker: no Logger")
	case cfg.Prefetch < 0 || cfg.Prefetch > 65535:
		return nil, fmt.Errorf("worker: prefetch %d out of range 0-65535", cfg.Prefetch)
	case cfg.MaxPrefetch < 0 || cfg.MaxPrefetch > 65535:
		return nil, fmt.Errorf("worker: max prefetch %d out of range 0-65535", cfg.MaxPrefetch)
	case cfg.MaxInflightBytes < 0:
		return nil, fmt.Errorf("worker: max inflight bytes %d below 0", cfg.MaxInflightBytes)
	case !(cfg.RateLimit >= 0) || math.IsInf(cfg.RateLimit, 1): // NaN too
		return nil, fmt.Errorf("worker: rate limit %v not a number of 0 or more", cfg.RateLimit)
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = DefaultConcurrency
	}
	if cfg.MaxPrefetch == 0 {
		cfg.MaxPrefetch = DefaultMaxPrefetch
	}
	if cfg.MaxInflightBytes == 0 {
		cfg.MaxInflightBytes = DefaultMaxInflightBytes
	}
	if cfg.HandlerTimeout <= 0 {
		cfg.HandlerTimeout = DefaultHandlerTimeout
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = DefaultShutdownTimeout
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = DefaultMaxAttempts
	}
	if cfg.MaxRetryAfter <= 0 {
		cfg.MaxRetryAfter = DefaultMaxRetryAfter
	}
	if cfg.ConsumerTag == "" {
		cfg.ConsumerTag = fmt.Sprintf("warren-%08x", rand.Uint32())
	}
	reg := cfg.Registerer
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	w := &Worker{
		cfg:     cfg,
		log:     cfg.Logger.With(zap.String("queue", cfg.Topology.Queue)),
		metrics: m,
		slots:   make([]atomic.Int64, cfg.Concurrency),

		copyFail:  newCopyFailures(),
		replyFail: newHandBacks(),
	}
	w.circuit = newCircuit(cfg.Circuit, w.log, m)
	w.limiter = newLimiter(cfg.RateLimit)
	if cfg.Prefetch == 0 {
		w.adaptive = newPrefetchController(cfg.Concurrency, cfg.MaxPrefetch, cfg.MaxInflightBytes)
	}
	if cfg.TracerProvider != nil {
		w.tracer = cfg.TracerProvider.Tracer(tracing.ScopeName)
	}
	w.setNotReady("starting")
	w.touch()
	return w, nil
}

// Ready returns nil while the worker consumes its queue, else an error
// saying why not (connecting, declaring, draining, copies refused), or
// that the broker blocks publishing. A blocked worker still consumes and
// acks, but its retry and dead copies wait, and so do the messages they
// copy: not ready says so where operators look. It does not restart the
// worker; in Kubernetes it only takes the pod out of its Service's
// endpoints.
func (w *Worker) Ready() error {
	if r := w.notReady.Load(); r != nil {
		if step := w.dialStep(); step != "" {
			return errors.New("connecting: " + step)
		}
		return errors.New(*r)
	}
	if r := w.circuit.reason(); r != "" {
		return errors.New(r)
	}
	if r := w.blockedReason.Load(); r != nil {
		return fmt.Errorf("broker blocked publishing: %s", *r)
	}
	if r := w.copyFail.trouble.Load(); r != nil {
		return errors.New(*r)
	}
	return nil
}

// stepper is a Dialer that says what a dial under way waits for
// (broker.Dialer: "handshake with host:port").
type stepper interface{ Step() string }

// dialStep returns what the dial of the consuming connection waits for,
// or "" when none is under way.
func (w *Worker) dialStep() string {
	s, ok := w.cfg.Dialer.(stepper)
	if !ok || !w.dialing.Load() {
		return ""
	}
	return s.Step()
}

// Alive returns nil while the worker's loops make progress and no handler
// overran its timeout by far. It never talks to the broker.
func (w *Worker) Alive() error {
	now := time.Now()
	if last := time.Unix(0, w.lastTick.Load()); now.Sub(last) > stallAfter && !w.dialing.Load() {
		return fmt.Errorf("worker loop stalled for %s", now.Sub(last).Round(time.Second))
	}
	limit := w.cfg.HandlerTimeout + overrunGrace
	for i := range w.slots {
		if start := w.slots[i].Load(); start != 0 {
			if d := now.Sub(time.Unix(0, start)); d > limit {
				return fmt.Errorf("a handler has run for %s, past its timeout of %s", d.Round(time.Second), w.cfg.HandlerTimeout)
			}
		}
	}
	return nil
}

func (w *Worker) setNotReady(reason string) {
	w.notReady.Store(&reason)
	w.metrics.consuming.Set(0)
}

func (w *Worker) setReady() {
	w.notReady.Store(nil)
	w.metrics.consuming.Set(1)
}

func (w *Worker) touch() { w.lastTick.Store(time.Now().UnixNano()) }

// Run consumes until ctx is done, then drains: it stops taking deliveries,
// hands back what it prefetched, lets running handlers finish and settles
// them, all within the shutdown timeout, and returns nil. A broker that is
// unreachable or refuses the topology is not fatal: Run keeps trying with
// backoff and reports not ready meanwhile. Once ctx is done, Run returns
// within DrainBound of the shutdown timeout, whatever the broker and the
// handlers do.
func (w *Worker) Run(ctx context.Context) error {
	// Handlers outlive ctx: they are cancelled only when the shutdown
	// timeout has passed since ctx ended. The drain waits for them
	// handlerGrace longer (dctx), and then everything is closed.
	hctx, cancelHandlers := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelHandlers()
	dctx, cancelDrain := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelDrain()
	copies := newCopier(w)
	hardStop := make(chan struct{}) // closed when every connection was closed by force
	runDone := make(chan struct{})
	var clock sync.WaitGroup
	clock.Add(1)
	go func() {
		defer clock.Done()
		cancel := func() {
			cancelHandlers()
			copies.abortIfBlocked()
		}
		w.shutdownClock(ctx, runDone, cancel, cancelDrain, func() {
			// Whatever still waits on the broker (a call on a stalled
			// link, a topology declaration) ends now.
			if c := w.conn.Load(); c != nil {
				forceClose(c)
			}
			copies.close(time.Now())
			close(hardStop)
		})
	}()
	defer func() {
		close(runDone)
		clock.Wait()
	}()

	jobs := make(chan job)
	var (
		wg      sync.WaitGroup
		running atomic.Int32
		idle    = make(chan struct{})
	)
	running.Store(int32(len(w.slots)))
	for i := range w.slots {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() {
				if running.Add(-1) == 0 {
					close(idle)
				}
			}()
			w.dispatch(hctx, jobs, &w.slots[i])
		}()
	}
	w.supervise(ctx, dctx, copies, jobs)
	close(jobs)
	select {
	case <-idle:
		wg.Wait()
	case <-hardStop:
		// A handler that ignores its context: its message went back to
		// the queue with the connection, closed by now. Its goroutine
		// ends when the handler returns, and settles nothing.
		w.log.Warn("handlers still running at the drain's bound; leaving them", zap.Int32("handlers", running.Load()))
	}
	copies.close(time.Now().Add(closeTimeout))
	w.log.Info("stopped")
	return nil
}

// shutdownClock waits for ctx to end, then keeps the drain's time:
// handlers are cancelled at the shutdown timeout, the drain stops waiting
// for them handlerGrace later, and closeTimeout after that every
// connection is closed by force. It returns early when Run is done.
func (w *Worker) shutdownClock(ctx context.Context, runDone <-chan struct{}, cancelHandlers, cancelDrain, forceClose func()) {
	select {
	case <-ctx.Done():
	case <-runDone:
		return
	}
	for _, step := range []struct {
		after time.Duration
		do    func()
	}{
		{w.cfg.ShutdownTimeout, cancelHandlers},
		{handlerGrace, cancelDrain},
		{closeTimeout, forceClose},
	} {
		t := time.NewTimer(step.after)
		select {
		case <-t.C:
			step.do()
		case <-runDone:
			t.Stop()
			return
		}
	}
}

// supervise keeps a connection open until ctx is done; dctx ends when the
// drain must stop waiting for handlers.
func (w *Worker) supervise(ctx, dctx context.Context, copies *copier, jobs chan<- job) {
	bo := backoff{min: minBackoff, max: maxBackoff}
	for {
		w.touch()
		if ctx.Err() != nil {
			return
		}
		w.dialing.Store(true)
		conn, node, err := w.cfg.Dialer.Dial(ctx)
		w.dialing.Store(false)
		w.touch()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			w.setNotReady("connecting: " + err.Error())
			w.report("cannot connect to broker", err)
			if !w.sleep(ctx, bo.next()) {
				return
			}
			continue
		}
		addr := nodeAddr(node)
		// Said before shown, as for a loss: whoever sees the gauge turn
		// finds the line.
		w.log.Info("connected", zap.String("node", node), zap.String("broker_node", addr))
		w.metrics.connected.Set(1)
		w.metrics.setNode(addr, true)
		// The copies' connection opens with the first consuming one, so
		// that the first copy does not wait for a dial; it stays open
		// across reconnections of the consuming one.
		if _, _, err := copies.publisher(ctx); err != nil && ctx.Err() == nil {
			w.log.Warn("cannot open the copies' connection; trying again at the first copy", zap.Error(err))
		}
		var watchers sync.WaitGroup
		w.watchBlocked(conn, "consume", &watchers)
		w.conn.Store(conn)
		err = w.serveConnection(ctx, dctx, conn, copies, jobs, &bo)
		lost := ctx.Err() == nil
		if lost {
			// Not ready from now, not once the close below is done; the
			// count comes last, so that whoever sees it sees why.
			w.setNotReady("connection lost: " + err.Error())
			w.log.Info("connection lost", zap.String("node", node), zap.String("broker_node", addr), zap.Error(err))
		}
		w.metrics.connected.Set(0)
		w.metrics.setNode(addr, false)
		w.closeConn(conn, time.Now().Add(closeTimeout))
		w.conn.Store(nil)
		watchers.Wait()
		if !lost {
			return
		}
		w.metrics.reconnects.Inc()
		if !w.sleep(ctx, bo.next()) {
			return
		}
	}
}

// serveConnection consumes on channels of conn, opening a new channel after
// a channel error, until conn closes or ctx is done.
func (w *Worker) serveConnection(ctx, dctx context.Context, conn *amqp.Connection, copies *copier, jobs chan<- job, bo *backoff) error {
	connClosed := conn.NotifyClose(make(chan *amqp.Error, 1))
	for {
		start := time.Now()
		err := w.serveChannel(ctx, dctx, conn, copies, jobs)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(start) > healthyAfter {
			bo.reset()
		}
		select {
		case cerr, ok := <-connClosed:
			if ok && cerr != nil {
				return cerr
			}
			return errors.Join(err, amqp.ErrClosed)
		default:
		}
		if conn.IsClosed() {
			return err
		}
		w.setNotReady("channel closed: " + err.Error())
		w.report("channel closed, opening a new one", err)
		w.metrics.reconnects.Inc()
		if !w.sleep(ctx, bo.next()) {
			return nil
		}
	}
}

// sleep waits for d or until ctx is done; it reports whether to go on.
func (w *Worker) sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		w.touch()
		return true
	}
}

// report logs a failure at error level once, and its repeats at debug, so
// a broker that refuses warren for hours does not flood the log.
func (w *Worker) report(msg string, err error) {
	text := msg + ": " + err.Error()
	if text == w.reported {
		w.log.Debug(msg+" (again)", zap.Error(err))
		return
	}
	w.reported = text
	w.log.Error(msg, zap.Error(err))
}

// recovered clears the last reported failure once things work again.
func (w *Worker) recovered() { w.reported = "" }

// consumerTag returns the tag of the n-th consumer of this worker. The
// worker chooses it, rather than the library, to cancel it on drain.
func (w *Worker) consumerTag(n int) string {
	return fmt.Sprintf("%s-%d", w.cfg.ConsumerTag, n)
}

// nodeAddr returns the host:port of the node a Dialer reached, given as a
// URL without password: the label of warren_broker_info, which must carry
// neither user nor password. A port left out is AMQP's default.
func nodeAddr(node string) string {
	u, err := url.Parse(node)
	if err != nil || u.Host == "" {
		return ""
	}
	if u.Port() != "" {
		return u.Host
	}
	port := "5672"
	if u.Scheme == "amqps" {
		port = "5671"
	}
	return net.JoinHostPort(u.Hostname(), port)
}
