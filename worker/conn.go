package worker

import (
	"errors"
	"slices"
	"strings"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap"
)

// Bounds of the way out. A broker that blocks a connection stops reading
// it, and a stalled link answers nothing: no broker call on the way out
// may wait for either longer than these.
const (
	// handlerGrace is how long a handler has to return once the shutdown
	// timeout cancelled its context, before the drain stops waiting for
	// it: a KillGrace (the exec handler's SIGTERM to SIGKILL) fits in it.
	handlerGrace = KillGrace + time.Second
	// closeTimeout bounds one broker call on the way out (cancelling the
	// consumer, flushing acks, closing a channel or a connection), and the
	// whole of them after the drain gave up on the handlers.
	closeTimeout = 2 * time.Second
	// exitSlack is what DrainBound allows beyond the timers, for the
	// goroutines to see them.
	exitSlack = time.Second
)

// DrainBound returns the longest Run takes to return once its context is
// done, for a shutdown timeout of shutdownTimeout (0 means
// DefaultShutdownTimeout): the timeout, the grace a cancelled handler has
// to return, and the time to close the connections. A Go handler that
// never returns, or an exec command that outlives its SIGKILL's effect on
// its output, is left behind: its message goes back to the queue with the
// connection, which is closed by then. Whatever kills warren after a
// grace period (Kubernetes' terminationGracePeriodSeconds) must wait
// longer than this.
func DrainBound(shutdownTimeout time.Duration) time.Duration {
	if shutdownTimeout <= 0 {
		shutdownTimeout = DefaultShutdownTimeout
	}
	return shutdownTimeout + handlerGrace + closeTimeout + exitSlack
}

// bounded runs call, a broker call on conn, and waits for it until by.
// Past by, it closes conn at once, which ends every call on it, and waits
// for call to return. It reports whether call returned in time.
func bounded(conn *amqp.Connection, by time.Time, call func()) bool {
	done := make(chan struct{})
	go func() {
		defer close(done)
		call()
	}()
	t := time.NewTimer(time.Until(by))
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
	}
	forceClose(conn)
	<-done
	return false
}

// forceClose closes conn at once: a deadline already passed on its socket
// ends any write or read stuck on it, and the socket closes. The broker
// requeues what the connection's channels held unacked.
func forceClose(conn *amqp.Connection) {
	_ = conn.CloseDeadline(time.Now())
}

// closeConn closes conn, waiting for the broker's answer until by at the
// latest. A connection the broker blocks is closed at once: the broker
// reads nothing from it, and the heartbeats it still sends would keep the
// close waiting past by.
func (w *Worker) closeConn(conn *amqp.Connection, by time.Time) {
	if w.isBlocked(conn) {
		forceClose(conn)
		return
	}
	if err := conn.CloseDeadline(by); err != nil && !errors.Is(err, amqp.ErrClosed) {
		w.log.Debug("close connection", zap.Error(err))
	}
}

// blockedSet is what the broker said of warren's connections: a broker
// short of memory or disk blocks the connections that publish.
type blockedSet struct {
	mu      sync.Mutex
	reasons map[*amqp.Connection]string // the blocked connections, with the broker's reason
}

// watchBlocked watches conn for connection.blocked and .unblocked until
// conn closes; wg counts the goroutine that does it. role names conn in
// logs.
func (w *Worker) watchBlocked(conn *amqp.Connection, role string, wg *sync.WaitGroup) {
	// Buffered and always drained: the library blocks its reader on a
	// full notification channel.
	blocks := conn.NotifyBlocked(make(chan amqp.Blocking, 4))
	wg.Add(1)
	go func() {
		defer wg.Done()
		for b := range blocks {
			w.setBlocked(conn, role, b)
		}
		w.setBlocked(conn, role, amqp.Blocking{}) // closed: blocked no more
	}()
}

func (w *Worker) isBlocked(conn *amqp.Connection) bool {
	w.blocked.mu.Lock()
	defer w.blocked.mu.Unlock()
	_, ok := w.blocked.reasons[conn]
	return ok
}

func (w *Worker) setBlocked(conn *amqp.Connection, role string, b amqp.Blocking) {
	s := &w.blocked
	s.mu.Lock()
	defer s.mu.Unlock()
	_, was := s.reasons[conn]
	switch {
	case b.Active:
		if s.reasons == nil {
			s.reasons = make(map[*amqp.Connection]string)
		}
		s.reasons[conn] = b.Reason
		w.log.Warn("broker blocked a connection of warren's", zap.String("connection", role), zap.String("reason", b.Reason))
	case was:
		delete(s.reasons, conn)
		if !conn.IsClosed() {
			w.log.Info("broker unblocked a connection of warren's", zap.String("connection", role))
		}
	default:
		return
	}
	if len(s.reasons) == 0 {
		w.blockedReason.Store(nil)
		w.metrics.blocked.Set(0)
		return
	}
	reasons := make([]string, 0, len(s.reasons))
	for _, r := range s.reasons {
		if r == "" {
			r = "no reason given"
		}
		reasons = append(reasons, r)
	}
	slices.Sort(reasons)
	reason := strings.Join(slices.Compact(reasons), "; ")
	w.blockedReason.Store(&reason)
	w.metrics.blocked.Set(1)
}
