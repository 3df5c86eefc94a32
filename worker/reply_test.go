package worker_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-mq/warren/broker"
	"github.com/warren-mq/warren/internal/brokertest"
	"github.com/warren-mq/warren/worker"
)

// upper answers each request with its body in upper case.
var upper = worker.HandlerFunc(func(_ context.Context, m *worker.Message) error {
	m.Reply = &worker.Reply{
		Body:        bytes.ToUpper(m.Body),
		ContentType: "text/x-upper",
		Headers:     amqp.Table{"x-answered-by": "upper"},
	}
	return nil
})

// TestReplyReachesRequester: a Go handler's answer reaches the requester
// of the pika tutorial (exclusive callback queue) and of direct reply-to,
// with the request's correlation id, the handler's content type and
// headers, as persistent as the request; the request is acked.
func TestReplyReachesRequester(t *testing.T) {
	q := brokertest.Queue(t)
	h := start(t, worker.Config{Topology: broker.Topology{Queue: q, Declare: true}, Handler: upper})
	h.waitReady(t)
	for _, tt := range []struct {
		name   string
		client func(testing.TB) *brokertest.RPCClient
		mode   uint8
	}{
		{name: "callback queue, persistent", client: brokertest.NewRPCClient, mode: amqp.Persistent},
		{name: "callback queue, transient", client: brokertest.NewRPCClient, mode: amqp.Transient},
		{name: "direct reply-to", client: brokertest.NewDirectRPCClient, mode: amqp.Persistent},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := tt.client(t)
			id := c.Call(t, q, "hello", tt.mode)
			r, ok := c.Reply(t, 20*time.Second)
			if !ok {
				t.Fatal("no reply within 20s")
			}
			if string(r.Body) != "HELLO" || r.CorrelationId != id || r.ContentType != "text/x-upper" || r.Headers["x-answered-by"] != "upper" {
				t.Errorf("reply = %q, correlation id %q, content type %q, headers %v; want HELLO, %q, text/x-upper, x-answered-by=upper",
					r.Body, r.CorrelationId, r.ContentType, r.Headers, id)
			}
			if r.DeliveryMode != tt.mode {
				t.Errorf("reply delivery mode = %d, want %d (the request's)", r.DeliveryMode, tt.mode)
			}
			brokertest.WaitFor(t, 10*time.Second, "the request acked", func() bool {
				ready, unacked, _ := brokertest.Counts(t, q)
				return ready == 0 && unacked == 0
			})
		})
	}
	if got := h.metric(t, "warren_replies_total", "outcome", "confirmed"); got != 3 {
		t.Errorf("warren_replies_total{outcome=confirmed} = %v, want 3", got)
	}
}

// TestNoReplyWithoutReplyTo: a request without reply_to is acked and
// answers nobody, whatever the handler sets; nor does a handler that sets
// no Reply answer a request that asks for one.
func TestNoReplyWithoutReplyTo(t *testing.T) {
	q := brokertest.Queue(t)
	silent := worker.HandlerFunc(func(_ context.Context, m *worker.Message) error {
		if string(m.Body) == "answer" {
			m.Reply = &worker.Reply{Body: []byte("answered")}
		}
		return nil
	})
	h := start(t, worker.Config{Topology: broker.Topology{Queue: q, Declare: true}, Handler: silent})
	h.waitReady(t)
	c := brokertest.NewRPCClient(t)
	brokertest.Publish(t, q, "answer") // no reply_to
	c.Call(t, q, "silent", amqp.Persistent)
	brokertest.WaitFor(t, 20*time.Second, "both acked", func() bool {
		return h.metric(t, "warren_messages_total", "outcome", "ack") == 2
	})
	if r, ok := c.Reply(t, time.Second); ok {
		t.Errorf("got reply %q, want none", r.Body)
	}
	if got := h.metric(t, "warren_replies_total"); got != 0 {
		t.Errorf("warren_replies_total = %v, want 0", got)
	}
}

// TestReplyRefusedHandsRequestBack: a reply the broker nacks (the
// callback queue is at its length limit, x-overflow reject-publish)
// leaves the request unacked: it is handed back, tried again, and stays
// in the queue; nothing is lost.
func TestReplyRefusedHandsRequestBack(t *testing.T) {
	q := brokertest.Queue(t)
	replyQ := brokertest.Queue(t)
	brokertest.DeclareQueue(t, replyQ, amqp.Table{"x-max-length": int32(0), "x-overflow": "reject-publish"})
	rec := newRecorder(func(_ context.Context, m *worker.Message, _ int) error {
		m.Reply = &worker.Reply{Body: []byte("answer")}
		return nil
	})
	h := start(t, worker.Config{Topology: broker.Topology{Queue: q, Declare: true}, Handler: rec})
	h.waitReady(t)
	ch := brokertest.Channel(t)
	if err := ch.PublishWithContext(context.Background(), "", q, false, false,
		amqp.Publishing{Body: []byte("req"), ReplyTo: replyQ, CorrelationId: "c1", DeliveryMode: amqp.Persistent}); err != nil {
		t.Fatal(err)
	}
	brokertest.WaitFor(t, 30*time.Second, "the request tried again", func() bool { return rec.count("req") >= 2 })
	if got := h.metric(t, "warren_replies_total", "outcome", "refused"); got < 1 {
		t.Errorf("warren_replies_total{outcome=refused} = %v, want at least 1", got)
	}
	if got := h.metric(t, "warren_messages_total", "outcome", "ack"); got != 0 {
		t.Errorf("warren_messages_total{outcome=ack} = %v, want 0: the request must not be acked", got)
	}
	if err := h.stop(t); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if n := brokertest.Ready(t, q); n != 1 {
		t.Errorf("%s holds %d messages after the stop, want the request back (1)", q, n)
	}
}

// TestReplyUnroutableDropped: a reply to a queue that is gone (the
// requester left) cannot be delivered by retrying: the request is acked,
// the reply counted and dropped.
func TestReplyUnroutableDropped(t *testing.T) {
	q := brokertest.Queue(t)
	h := start(t, worker.Config{Topology: broker.Topology{Queue: q, Declare: true}, Handler: upper})
	h.waitReady(t)
	ch := brokertest.Channel(t)
	if err := ch.PublishWithContext(context.Background(), "", q, false, false,
		amqp.Publishing{Body: []byte("req"), ReplyTo: brokertest.Name(t), CorrelationId: "c1"}); err != nil {
		t.Fatal(err)
	}
	brokertest.WaitFor(t, 20*time.Second, "the request acked", func() bool {
		return h.metric(t, "warren_messages_total", "outcome", "ack") == 1
	})
	if got := h.metric(t, "warren_replies_total", "outcome", "unroutable"); got != 1 {
		t.Errorf("warren_replies_total{outcome=unroutable} = %v, want 1", got)
	}
	if n := h.logs.FilterMessage("reply dropped: no queue of that name (the requester is gone)").Len(); n != 1 {
		t.Errorf("%d logs of the dropped reply, want 1", n)
	}
}

// TestReplyOnlyOnSuccess: a failed attempt sends no reply, even if its
// handler set one; the attempt that succeeds sends exactly one.
func TestReplyOnlyOnSuccess(t *testing.T) {
	q := brokertest.Queue(t)
	delays := []time.Duration{100 * time.Millisecond}
	h := start(t, worker.Config{
		Topology: broker.Topology{Queue: q, Declare: true, RetryDelays: delays},
		Handler: worker.HandlerFunc(func(_ context.Context, m *worker.Message) error {
			m.Reply = &worker.Reply{Body: []byte("attempt " + string(rune('0'+m.Attempt)))}
			if m.Attempt < 3 {
				return errors.New("transient")
			}
			return nil
		}),
	})
	h.waitReady(t)
	c := brokertest.NewRPCClient(t)
	c.Call(t, q, "req", amqp.Persistent)
	r, ok := c.Reply(t, 20*time.Second)
	if !ok || string(r.Body) != "attempt 3" {
		t.Fatalf("reply = %q, %v; want the third attempt's", r.Body, ok)
	}
	if r, ok := c.Reply(t, time.Second); ok {
		t.Errorf("a second reply %q, want none", r.Body)
	}
}

// TestReplyOnDead: with ReplyOnDead a request that goes dead answers its
// requester with the reason (body and x-warren-error, x-warren-outcome
// dead); without it, it answers nothing. Either way the dead copy is in
// Q.dead.
func TestReplyOnDead(t *testing.T) {
	for _, on := range []bool{true, false} {
		t.Run(map[bool]string{true: "on", false: "off"}[on], func(t *testing.T) {
			q := brokertest.Queue(t)
			h := start(t, worker.Config{
				Topology:    broker.Topology{Queue: q, Declare: true},
				ReplyOnDead: on,
				Handler: worker.HandlerFunc(func(_ context.Context, m *worker.Message) error {
					m.Reply = &worker.Reply{Body: []byte("not sent")}
					return worker.Permanent(errors.New("cannot parse the request"))
				}),
			})
			h.waitReady(t)
			c := brokertest.NewRPCClient(t)
			id := c.Call(t, q, "req", amqp.Persistent)
			deadCopy(t, q)
			r, ok := c.Reply(t, 3*time.Second)
			switch {
			case on && !ok:
				t.Fatal("no error reply")
			case on:
				if r.CorrelationId != id || !strings.Contains(string(r.Body), "cannot parse the request") ||
					r.Headers[worker.HeaderReplyOutcome] != "dead" || !strings.Contains(r.Headers[worker.HeaderReplyError].(string), "cannot parse") {
					t.Errorf("error reply = %q, correlation id %q, headers %v; want the reason, %q, x-warren-outcome=dead", r.Body, r.CorrelationId, r.Headers, id)
				}
			case ok:
				t.Errorf("reply %q with WARREN_REPLY_ON_DEAD off, want none", r.Body)
			}
			brokertest.WaitFor(t, 10*time.Second, "the request acked", func() bool {
				ready, unacked, _ := brokertest.Counts(t, q)
				return ready == 0 && unacked == 0
			})
		})
	}
}

// TestReplyUnconfirmedHandsRequestBack: a reply whose confirm never comes
// (the link stalls after the reply reached the broker) leaves the request
// unacked: it comes back, is handled again, and the requester gets its
// answer; nothing is lost.
func TestReplyUnconfirmedHandsRequestBack(t *testing.T) {
	q := brokertest.Queue(t)
	proxy := brokertest.NewProxy(t)
	rec := newRecorder(func(_ context.Context, m *worker.Message, attempt int) error {
		m.Reply = &worker.Reply{Body: []byte("answer")}
		if attempt == 1 {
			// The reply will reach the broker; its confirm will not come back.
			proxy.StallFromBroker(true)
		}
		return nil
	})
	h := start(t, worker.Config{
		Dialer:   &broker.Dialer{URLs: []string{proxy.URL()}, Heartbeat: time.Second},
		Topology: broker.Topology{Queue: q, Declare: true},
		Handler:  rec,
	})
	h.waitReady(t)
	c := brokertest.NewRPCClient(t)
	id := c.Call(t, q, "req", amqp.Persistent)
	brokertest.WaitFor(t, 15*time.Second, "the dead link noticed", func() bool {
		return h.metric(t, "warren_connected") == 0
	})
	proxy.StallFromBroker(false)
	brokertest.WaitFor(t, 30*time.Second, "the request handled again and acked", func() bool {
		return rec.count("req") >= 2 && h.metric(t, "warren_messages_total", "outcome", "ack") >= 1
	})
	if got := h.metric(t, "warren_replies_total", "outcome", "unconfirmed"); got < 1 {
		t.Errorf("warren_replies_total{outcome=unconfirmed} = %v, want at least 1", got)
	}
	r, ok := c.Reply(t, 10*time.Second)
	if !ok || r.CorrelationId != id || string(r.Body) != "answer" {
		t.Errorf("reply = %q, %q, %v; want answer, %q", r.Body, r.CorrelationId, ok, id)
	}
	brokertest.WaitFor(t, 10*time.Second, "the queue empty", func() bool {
		return brokertest.Ready(t, q) == 0 && h.metric(t, "warren_inflight_messages") == 0
	})
}
