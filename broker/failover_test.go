package broker_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-mq/warren/broker"
	"github.com/warren-mq/warren/internal/brokertest"
)

// TestStreamSendsUnconfirmedAgainOnAnotherNode publishes through two
// "nodes" (proxies to the test broker) and kills the one in use halfway:
// every message must be in the queue, those whose confirm was lost sent
// again with their message id, and the count must be only the confirmed.
func TestStreamSendsUnconfirmedAgainOnAnotherNode(t *testing.T) {
	for _, tt := range []struct {
		name      string
		retryFor  time.Duration
		wantAll   bool
		wantInErr string
	}{
		{name: "fails over", retryFor: 30 * time.Second, wantAll: true},
		{name: "no retry", retryFor: 0, wantInErr: "messages not confirmed"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			q := brokertest.Queue(t)
			brokertest.DeclareQueue(t, q, nil)
			nodes := []*brokertest.Proxy{brokertest.NewProxy(t), brokertest.NewProxy(t)}
			d := &broker.Dialer{URLs: []string{nodes[0].URL(), nodes[1].URL()}}
			var (
				connected []string
				losses    int
			)
			s := &broker.Stream{Dial: d.Dial, Window: 256, RetryFor: tt.retryFor,
				Connected: func(node string, lost error) {
					connected = append(connected, node)
					if lost != nil {
						losses++
					}
				}}
			const total = 20000
			msgs := func(yield func(amqp.Publishing) bool) {
				for i := range total {
					if i == total/2 {
						// The node in use dies with messages unconfirmed.
						for _, n := range nodes {
							if n.Accepted() > 0 {
								n.Refuse(true)
								n.Cut()
							}
						}
					}
					if !yield(amqp.Publishing{Body: []byte(fmt.Sprintf("m-%05d", i))}) {
						return
					}
				}
			}
			confirmed, err := s.Publish(context.Background(), "", q, msgs)
			t.Logf("confirmed %d of %d; connections %v; err %v", confirmed, total, connected, err)
			if tt.wantAll {
				if err != nil || confirmed != total {
					t.Fatalf("Publish = %d, %v; want %d, nil", confirmed, err, total)
				}
				if losses != 1 || len(connected) != 2 || connected[0] == connected[1] {
					t.Errorf("connected to %v, %d losses; want two nodes, one loss", connected, losses)
				}
			} else {
				if err == nil || !strings.Contains(err.Error(), tt.wantInErr) || confirmed >= total {
					t.Fatalf("Publish = %d, %v; want fewer than %d and an error saying %q", confirmed, err, total, tt.wantInErr)
				}
			}
			ids := map[string]int{}
			var got []amqp.Delivery
			brokertest.WaitFor(t, 10*time.Second, "messages in the queue", func() bool {
				return brokertest.Ready(t, q) >= confirmed
			})
			got = brokertest.Get(t, q, 2*total)
			for _, m := range got {
				ids[string(m.Body)]++
				if m.MessageId == "" {
					t.Fatalf("message %q has no message id", m.Body)
				}
			}
			if len(got) < confirmed {
				t.Errorf("queue holds %d messages, fewer than the %d confirmed", len(got), confirmed)
			}
			if tt.wantAll {
				for i := range total {
					if b := fmt.Sprintf("m-%05d", i); ids[b] == 0 {
						t.Fatalf("%s is not in the queue", b)
					}
				}
			}
			t.Logf("%d in the queue, %d distinct", len(got), len(ids))
		})
	}
}

// TestStreamWindowBytes: with WindowBytes, the bodies kept unconfirmed
// never pass it (a larger message goes alone). With the broker's confirms
// held up, a stream of 6-byte messages and a 10-byte window sends one and
// takes the next, and no more.
func TestStreamWindowBytes(t *testing.T) {
	q := brokertest.Queue(t)
	brokertest.DeclareQueue(t, q, nil)
	node := brokertest.NewProxy(t)
	d := &broker.Dialer{URLs: []string{node.URL()}}
	s := &broker.Stream{Dial: d.Dial, Window: 256, WindowBytes: 10}
	const total = 20
	var taken atomic.Int32
	msgs := func(yield func(amqp.Publishing) bool) {
		for k := range total {
			if k == 0 {
				node.StallFromBroker(true) // the publisher is ready: hold up the confirms
			}
			taken.Add(1)
			if !yield(amqp.Publishing{Body: []byte(fmt.Sprintf("m-%04d", k))}) { // 6 bytes
				return
			}
		}
	}
	type result struct {
		r   broker.Result
		err error
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan result, 1)
	go func() {
		r, err := s.Run(ctx, "", q, msgs)
		done <- result{r, err}
	}()
	brokertest.WaitFor(t, 10*time.Second, "two messages taken", func() bool { return taken.Load() >= 2 })
	// Without the bound, the other 18 would be taken at once.
	time.Sleep(300 * time.Millisecond)
	if n := taken.Load(); n != 2 {
		t.Errorf("%d messages taken with the first unconfirmed, want 2", n)
	}
	cancel() // the confirms are gone: the broker's side is dropped
	if got := <-done; got.r.Confirmed != 0 || got.r.Unconfirmed != 1 {
		t.Errorf("Run = %+v, %v; want 1 unconfirmed (the second was never sent)", got.r, got.err)
	}
}
