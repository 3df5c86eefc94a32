package broker_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-mq/warren/broker"
	"github.com/warren-mq/warren/internal/brokertest"
)

// TestPublisherReturnsMatchTheirPublish publishes copies that share one
// message id (as the copies of one producer's messages do) and a stale
// publish token from an earlier hop, some to a queue that exists and some
// to one that was deleted, all at once on one Publisher: each unroutable
// copy must fail with ErrUnroutable and each routable one succeed, whatever
// the others do.
func TestPublisherReturnsMatchTheirPublish(t *testing.T) {
	for _, tt := range []struct {
		name                 string
		routable, unroutable int
	}{
		{name: "all unroutable", unroutable: 20},
		{name: "mixed", routable: 50, unroutable: 50},
	} {
		t.Run(tt.name, func(t *testing.T) {
			q := brokertest.Queue(t)
			brokertest.DeclareQueue(t, q, nil)
			gone := q + ".dead" // deleted, as by an operator purging it: never declared
			p, err := broker.NewPublisher(brokertest.Dial(t))
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			var (
				wg                  sync.WaitGroup
				mu                  sync.Mutex
				confirmed, returned int
				wrong               []string
			)
			publish := func(key, what string, want error) {
				defer wg.Done()
				err := p.Publish(ctx, "", key, amqp.Publishing{
					MessageId: "order-42",
					Headers:   amqp.Table{"x-warren-publish-id": "stale-from-an-earlier-hop"},
					Body:      []byte(key),
				})
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					confirmed++
				case errors.Is(err, broker.ErrUnroutable):
					returned++
				}
				if !errors.Is(err, want) {
					wrong = append(wrong, what+": "+errString(err))
				}
			}
			for range tt.routable {
				wg.Add(1)
				go publish(q, "routable", nil)
			}
			for range tt.unroutable {
				wg.Add(1)
				go publish(gone, "unroutable", broker.ErrUnroutable)
			}
			wg.Wait()
			if confirmed != tt.routable || returned != tt.unroutable || len(wrong) > 0 {
				t.Errorf("%d routable and %d unroutable copies with one message id: %d confirmed, %d unroutable, want %d and %d; %d wrong, the first: %q",
					tt.routable, tt.unroutable, confirmed, returned, tt.routable, tt.unroutable, len(wrong), wrong[:min(len(wrong), 3)])
			}
			if n := brokertest.Ready(t, q); n != tt.routable {
				t.Errorf("queue holds %d messages, want %d", n, tt.routable)
			}
		})
	}
}

func errString(err error) string {
	if err == nil {
		return "nil"
	}
	return err.Error()
}
