package worker_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap/zaptest"

	"github.com/warren-mq/warren/broker"
	"github.com/warren-mq/warren/internal/brokertest"
	"github.com/warren-mq/warren/worker"
)

// oddMessage is a message few producers send, and warren must pass on
// intact all the same.
type oddMessage struct {
	name string
	pub  amqp.Publishing
	// dead: the first failure makes it dead (its attempt count is already
	// past the limit); otherwise it is retried once.
	dead bool
}

// oddMessages returns the odd messages, each with its name as message id.
func oddMessages() []oddMessage {
	many := amqp.Table{}
	for i := range 3000 {
		many[fmt.Sprintf("h-%04d", i)] = fmt.Sprintf("v-%04d", i)
	}
	// amqp091-go reads tables nested up to 32 deep; see
	// TestUnreadableHeadersNeedADeliveryLimit for deeper ones.
	deep := amqp.Table{"leaf": "bottom"}
	for i := range 30 {
		deep = amqp.Table{"level": int32(i), "next": deep}
	}
	big := make([]byte, 16<<20)
	for i := range big {
		big[i] = byte(i*31 + i>>13)
	}
	ts := time.Date(2026, 11, 27, 14, 33, 42, 0, time.UTC)
	msgs := []oddMessage{
		{name: "empty-body", pub: amqp.Publishing{}},
		{name: "16MiB-body", pub: amqp.Publishing{Body: big}},
		{name: "not-utf8", pub: amqp.Publishing{Body: []byte{0xff, 0xfe, 0x00, 0xc3, 0x28, 0xed, 0xa0, 0x80, '\n', 0}, ContentType: "text/plain; charset=utf-8",
			Headers: amqp.Table{"bytes": []byte{0xff, 0, 0xc3}, "text": "\xff\xfe\x00"}}},
		{name: "every-property", pub: amqp.Publishing{
			Body: []byte(`{"id":1}`), ContentType: "application/json", ContentEncoding: "identity",
			DeliveryMode: amqp.Persistent, Priority: 9, CorrelationId: "corr-1", ReplyTo: "replies",
			Expiration: "3600000", Timestamp: ts, Type: "order.created", UserId: "guest", AppId: "shop",
			Headers: amqp.Table{"bool": true, "int8": int8(-8), "int16": int16(-16), "int32": int32(-32), "int64": int64(-64),
				"float32": float32(1.5), "float64": 2.25, "decimal": amqp.Decimal{Scale: 2, Value: 1999}, "string": "s",
				"bytes": []byte("b"), "time": ts, "table": amqp.Table{"k": "v"}, "array": []any{int32(1), "two", nil}, "void": nil},
		}},
		{name: "3000-headers", pub: amqp.Publishing{Body: []byte("many"), Headers: many}},
		{name: "deep-table", pub: amqp.Publishing{Body: []byte("deep"), Headers: amqp.Table{"deep": deep}}},
		{name: "attempts-text", pub: amqp.Publishing{Body: []byte("a"), Headers: amqp.Table{broker.HeaderAttempts: "abc"}}},
		{name: "attempts-negative", pub: amqp.Publishing{Body: []byte("b"), Headers: amqp.Table{broker.HeaderAttempts: int64(-5)}}},
		{name: "attempts-float", pub: amqp.Publishing{Body: []byte("c"), Headers: amqp.Table{broker.HeaderAttempts: 1.5}}},
		{name: "attempts-huge", dead: true, pub: amqp.Publishing{Body: []byte("d"), Headers: amqp.Table{broker.HeaderAttempts: int64(math.MaxInt64)}}},
		{name: "retry-at-text", pub: amqp.Publishing{Body: []byte("e"), Headers: amqp.Table{broker.HeaderRetryAt: "tomorrow"}}},
	}
	for i := range msgs {
		msgs[i].pub.MessageId = msgs[i].name
		msgs[i].pub.DeliveryMode = amqp.Persistent
	}
	return msgs
}

// publishOdd publishes the messages to queue, confirmed.
func publishOdd(t *testing.T, queue string, msgs []oddMessage) {
	t.Helper()
	ch := brokertest.Channel(t)
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		dc, err := ch.PublishWithDeferredConfirmWithContext(context.Background(), "", queue, true, false, m.pub)
		if err != nil {
			t.Fatalf("publish %s: %v", m.name, err)
		}
		if !dc.Wait() {
			t.Fatalf("publish %s: not confirmed", m.name)
		}
	}
}

// seenMessages keeps every attempt at every message, by message id.
type seenMessages struct {
	mu sync.Mutex
	by map[string][]worker.Message
}

func (s *seenMessages) add(m *worker.Message) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := *m
	c.Body = bytes.Clone(m.Body)
	s.by[m.MessageID] = append(s.by[m.MessageID], c)
	return len(s.by[m.MessageID])
}

func (s *seenMessages) get(id string) []worker.Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]worker.Message(nil), s.by[id]...)
}

// TestOddMessagesReachTheHandlerIntact publishes messages with odd bodies,
// properties and headers through the broker; the handler receives each
// intact, fails it once, and receives its retry copy intact too. None is
// lost.
func TestOddMessagesReachTheHandlerIntact(t *testing.T) {
	q := brokertest.Queue(t)
	msgs := oddMessages()
	seen := &seenMessages{by: make(map[string][]worker.Message)}
	h := worker.HandlerFunc(func(_ context.Context, m *worker.Message) error {
		if seen.add(m) == 1 {
			return errors.New("fail the first attempt, to send a copy through the broker")
		}
		return nil
	})
	w, err := worker.New(worker.Config{
		Dialer:   &broker.Dialer{URLs: []string{brokertest.URL()}},
		Topology: broker.Topology{Queue: q, Declare: true}, // no delays: retry at the tail
		Handler:  h,
		Logger:   zaptest.NewLogger(t),
		Prefetch: 4,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v, want nil", err)
		}
	}()
	brokertest.WaitFor(t, 20*time.Second, "worker ready", func() bool { return w.Ready() == nil })
	publishOdd(t, q, msgs)

	for _, m := range msgs {
		want := 2
		if m.dead {
			want = 1
		}
		brokertest.WaitFor(t, 60*time.Second, fmt.Sprintf("%d attempts at %s", want, m.name), func() bool {
			return len(seen.get(m.name)) >= want
		})
	}
	brokertest.WaitFor(t, 20*time.Second, "the queue empty, the dead message dead", func() bool {
		return brokertest.Ready(t, q) == 0 && brokertest.Ready(t, q+".dead") == 1
	})
	for _, m := range msgs {
		t.Run(m.name, func(t *testing.T) {
			got := seen.get(m.name)
			checkIntact(t, "first delivery", &got[0], m.pub, false)
			if m.dead {
				if len(got) != 1 {
					t.Errorf("%s handled %d times, want once: its attempts were used up", m.name, len(got))
				}
				return
			}
			if len(got) != 2 {
				t.Errorf("%s handled %d times, want twice", m.name, len(got))
				return
			}
			if got[1].Attempt != got[0].Attempt+1 {
				t.Errorf("%s attempts %d then %d, want one more", m.name, got[0].Attempt, got[1].Attempt)
			}
			checkIntact(t, "retry copy", &got[1], m.pub, true)
		})
	}
	dead := brokertest.Get(t, q+".dead", 1)
	if len(dead) != 1 || dead[0].MessageId != "attempts-huge" || !strings.Contains(fmt.Sprint(dead[0].Headers[broker.HeaderReason]), "attempts") {
		t.Errorf("dead-letter queue holds %v, want attempts-huge with its reason", dead)
	}
}

// checkIntact compares what the handler got with what was published. A
// copy drops the expiration and user id, is persistent, and adds warren's
// headers.
func checkIntact(t *testing.T, what string, got *worker.Message, pub amqp.Publishing, isCopy bool) {
	t.Helper()
	if !bytes.Equal(got.Body, pub.Body) {
		t.Errorf("%s: body of %d bytes differs from the %d published", what, len(got.Body), len(pub.Body))
	}
	wantExpiration, wantUser := pub.Expiration, pub.UserId
	if isCopy {
		wantExpiration, wantUser = "", ""
	}
	for _, f := range []struct {
		name      string
		got, want any
	}{
		{"ContentType", got.ContentType, pub.ContentType},
		{"ContentEncoding", got.ContentEncoding, pub.ContentEncoding},
		{"DeliveryMode", got.DeliveryMode, pub.DeliveryMode},
		{"Priority", got.Priority, pub.Priority},
		{"CorrelationID", got.CorrelationID, pub.CorrelationId},
		{"ReplyTo", got.ReplyTo, pub.ReplyTo},
		{"Expiration", got.Expiration, wantExpiration},
		{"MessageID", got.MessageID, pub.MessageId},
		{"Timestamp", got.Timestamp.UTC(), pub.Timestamp.UTC()},
		{"Type", got.Type, pub.Type},
		{"UserID", got.UserID, wantUser},
		{"AppID", got.AppID, pub.AppId},
	} {
		if !reflect.DeepEqual(f.got, f.want) {
			t.Errorf("%s: %s = %#v, want %#v", what, f.name, f.got, f.want)
		}
	}
	for k, want := range pub.Headers {
		if isCopy && strings.HasPrefix(k, "x-warren-") {
			continue // warren's own headers: rewritten on its copies
		}
		if g, ok := got.Headers[k]; !ok || !reflect.DeepEqual(normalize(g), normalize(want)) {
			t.Errorf("%s: header %q = %.200v, want %.200v", what, k, g, want)
		}
	}
	extra := 0
	for k := range got.Headers {
		if _, ok := pub.Headers[k]; !ok {
			if !isCopy || !strings.HasPrefix(k, "x-warren-") {
				t.Errorf("%s: header %q appeared", what, k)
			}
			extra++
		}
	}
	if !isCopy && extra != 0 {
		t.Errorf("%s: %d headers appeared", what, extra)
	}
}

// normalize makes times comparable: the wire keeps seconds, in UTC.
func normalize(v any) any {
	switch v := v.(type) {
	case time.Time:
		return v.UTC()
	case amqp.Table:
		c := amqp.Table{}
		for k, x := range v {
			c[k] = normalize(x)
		}
		return c
	}
	return v
}

// TestUnreadableHeadersNeedADeliveryLimit: amqp091-go refuses to read a
// message whose headers nest more than 32 tables or arrays deep or hold
// more than 8192 fields in one table, and closes the whole connection
// instead; the broker then hands the message to the next consumer, which
// dies the same way. warren never sees such a message, so only the broker
// can end the loop: a quorum queue's delivery limit moves it to Q.dead,
// and every other message is handled. Each loss of the connection counts a
// delivery of every message in flight, so this runs at prefetch 1: with
// more, the messages around an unreadable one use up their deliveries too.
func TestUnreadableHeadersNeedADeliveryLimit(t *testing.T) {
	q := brokertest.Queue(t)
	seen := &seenMessages{by: make(map[string][]worker.Message)}
	w, err := worker.New(worker.Config{
		Dialer:   &broker.Dialer{URLs: []string{brokertest.URL()}},
		Topology: broker.Topology{Queue: q, QueueType: broker.Quorum, Declare: true, DeliveryLimit: 2},
		Handler: worker.HandlerFunc(func(_ context.Context, m *worker.Message) error {
			seen.add(m)
			return nil
		}),
		Logger:      zaptest.NewLogger(t),
		Prefetch:    1,
		Concurrency: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v, want nil", err)
		}
	}()
	brokertest.WaitFor(t, 20*time.Second, "worker ready", func() bool { return w.Ready() == nil })

	deep := amqp.Table{}
	for range 40 {
		deep = amqp.Table{"next": deep}
	}
	wide := amqp.Table{}
	for i := range 9000 {
		wide[fmt.Sprint(i)] = nil
	}
	var msgs []oddMessage
	for i := range 10 {
		msgs = append(msgs, oddMessage{name: fmt.Sprint("before-", i)})
	}
	msgs = append(msgs, oddMessage{name: "deep", pub: amqp.Publishing{Headers: amqp.Table{"deep": deep}}},
		oddMessage{name: "wide", pub: amqp.Publishing{Headers: wide}})
	for i := range 10 {
		msgs = append(msgs, oddMessage{name: fmt.Sprint("after-", i)})
	}
	for i := range msgs {
		msgs[i].pub.MessageId = msgs[i].name
		msgs[i].pub.DeliveryMode = amqp.Persistent
	}
	publishOdd(t, q, msgs)

	// Reading Q.dead with amqp091-go would fail the same way: count only.
	brokertest.WaitFor(t, 2*time.Minute, "both unreadable messages dead, the others handled", func() bool {
		return brokertest.Ready(t, q+".dead") == 2 && brokertest.Ready(t, q) == 0
	})
	for _, m := range msgs {
		got := len(seen.get(m.name))
		switch {
		case m.name == "deep" || m.name == "wide":
			if got != 0 {
				t.Errorf("%s reached the handler %d times, want never: amqp091-go cannot read it", m.name, got)
			}
		case got == 0:
			t.Errorf("%s never reached the handler", m.name)
		}
	}
}
