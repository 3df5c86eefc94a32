package worker

import (
	"context"
	"sync"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-mq/warren/broker"
)

// copier publishes the retry and dead copies of messages, on a channel in
// confirm mode beside the consumer's, opened when first needed and again
// after it failed.
type copier struct {
	conn *amqp.Connection

	mu  sync.Mutex
	pub *broker.Publisher
}

// publish publishes msg to queue through the default exchange and waits
// for the broker's confirm.
func (c *copier) publish(ctx context.Context, queue string, msg amqp.Publishing) error {
	p, err := c.publisher()
	if err != nil {
		return err
	}
	return p.Publish(ctx, "", queue, msg)
}

func (c *copier) publisher() (*broker.Publisher, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pub == nil || c.pub.IsClosed() {
		p, err := broker.NewPublisher(c.conn)
		if err != nil {
			return nil, err
		}
		c.pub = p
	}
	return c.pub, nil
}

func (c *copier) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pub != nil {
		_ = c.pub.Close()
	}
}
