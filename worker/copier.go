package worker

import (
	"context"
	"fmt"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-mq/warren/broker"
)

// copiesSuffix ends the name of the copies' connection, after the name the
// Dialer gives the consuming one.
const copiesSuffix = ".copies"

// namedDialer is a Dialer that can give a connection a name of its own
// purpose, as broker.Dialer does.
type namedDialer interface {
	DialNamed(ctx context.Context, suffix string) (*amqp.Connection, string, error)
}

// copier publishes the retry and dead copies of messages on a connection
// of its own, in confirm mode. A broker short of memory or disk blocks
// the connections that publish; on its own connection, a blocked copy
// never holds the acks and deliveries of the consuming one. The
// connection and its channel are opened when first needed, and again
// after they failed; the consuming connection does not depend on them.
type copier struct {
	w       *Worker
	opening chan struct{} // holds a token while a goroutine opens the publisher

	mu       sync.Mutex
	conn     *amqp.Connection
	pub      *broker.Publisher
	closed   bool           // close was called: nothing opens again
	watchers sync.WaitGroup // the goroutines watching conn for connection.blocked
}

func newCopier(w *Worker) *copier {
	return &copier{w: w, opening: make(chan struct{}, 1)}
}

// publish publishes msg to queue through the default exchange and waits
// for the broker's confirm.
func (c *copier) publish(ctx context.Context, queue string, msg amqp.Publishing) error {
	return c.do(ctx, func(p *broker.Publisher) error { return p.Publish(ctx, "", queue, msg) })
}

// reply publishes msg, a handler's answer, to the requester's replyTo and
// waits for the broker's confirm (broker.Publisher.PublishReply).
func (c *copier) reply(ctx context.Context, replyTo string, msg amqp.Publishing) error {
	return c.do(ctx, func(p *broker.Publisher) error { return p.PublishReply(ctx, replyTo, msg) })
}

// do runs publish, a publish and the wait for its confirm, on the open
// publisher, bounded by ctx.
func (c *copier) do(ctx context.Context, publish func(*broker.Publisher) error) error {
	p, conn, err := c.publisher(ctx)
	if err != nil {
		return err
	}
	// ctx bounds the wait for the confirm, not the write: a write to a
	// connection the broker no longer reads blocks once the socket's
	// buffers are full (a large copy). closeTimeout past ctx's deadline,
	// the connection is closed under it.
	if !bounded(conn, ctxDeadline(ctx, copyTimeout).Add(closeTimeout), func() { err = publish(p) }) {
		return fmt.Errorf("publish the copy: the write did not end %s past its deadline; the copies' connection was closed", closeTimeout)
	}
	return err
}

// publisher returns the open publisher and its connection, opening them
// if need be. One goroutine opens; the others wait for it, or for their
// context.
func (c *copier) publisher(ctx context.Context) (*broker.Publisher, *amqp.Connection, error) {
	select {
	case c.opening <- struct{}{}:
	case <-ctx.Done():
		return nil, nil, fmt.Errorf("open the copies' connection: %w", ctx.Err())
	}
	defer func() { <-c.opening }()

	c.mu.Lock()
	conn, pub, closed := c.conn, c.pub, c.closed
	c.mu.Unlock()
	switch {
	case closed:
		return nil, nil, fmt.Errorf("copies' connection: %w", amqp.ErrClosed)
	case pub != nil && !pub.IsClosed():
		return pub, conn, nil
	}
	if conn == nil || conn.IsClosed() {
		var err error
		if conn, err = c.dial(ctx); err != nil {
			return nil, nil, err
		}
	}
	// Opening a channel is a call the broker answers: bounded by ctx, on
	// a connection that a blocked broker may not read.
	var err error
	if !bounded(conn, ctxDeadline(ctx, copyTimeout), func() { pub, err = broker.NewPublisher(conn) }) {
		err = fmt.Errorf("open the copies' channel: %w", context.DeadlineExceeded)
	}
	if err != nil {
		return nil, nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		forceClose(conn)
		return nil, nil, fmt.Errorf("copies' connection: %w", amqp.ErrClosed)
	}
	c.pub = pub
	return pub, conn, nil
}

// dial opens the copies' connection, named after the consuming one where
// the Dialer can, and watches it for connection.blocked.
func (c *copier) dial(ctx context.Context) (*amqp.Connection, error) {
	var (
		conn *amqp.Connection
		err  error
	)
	if d, ok := c.w.cfg.Dialer.(namedDialer); ok {
		conn, _, err = d.DialNamed(ctx, copiesSuffix)
	} else {
		conn, _, err = c.w.cfg.Dialer.Dial(ctx)
	}
	if err != nil {
		return nil, fmt.Errorf("open the copies' connection: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		forceClose(conn)
		return nil, fmt.Errorf("copies' connection: %w", amqp.ErrClosed)
	}
	c.conn, c.pub = conn, nil
	c.w.watchBlocked(conn, "copies", &c.watchers)
	return conn, nil
}

// close closes the copies' connection, waiting for the broker's answer
// until by at the latest, and keeps it from opening again.
func (c *copier) close(by time.Time) {
	c.mu.Lock()
	conn := c.conn
	c.conn, c.pub, c.closed = nil, nil, true
	c.mu.Unlock()
	if conn != nil {
		c.w.closeConn(conn, by)
	}
	c.watchers.Wait()
}

// abortIfBlocked closes the copies' connection at once if the broker
// blocks it. Once handlers are cancelled, no copy waiting on it will be
// confirmed in time, and a write stuck on it (a copy larger than the
// socket's buffers) would hold its handler until the drain's end.
func (c *copier) abortIfBlocked() {
	c.mu.Lock()
	conn := c.conn
	c.mu.Unlock()
	if conn != nil && c.w.isBlocked(conn) {
		forceClose(conn)
	}
}

// ctxDeadline returns ctx's deadline, or d from now if it has none.
func ctxDeadline(ctx context.Context, d time.Duration) time.Time {
	if t, ok := ctx.Deadline(); ok {
		return t
	}
	return time.Now().Add(d)
}
