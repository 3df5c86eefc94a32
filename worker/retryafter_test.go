package worker_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-mq/warren/broker"
	"github.com/warren-mq/warren/handler"
	"github.com/warren-mq/warren/internal/brokertest"
	"github.com/warren-mq/warren/worker"
)

func TestRetryAtWithoutRetryQueuesIsIgnored(t *testing.T) {
	q := brokertest.Queue(t)
	brokertest.DeleteAfter(t, q+".retry.0s")
	rec := newRecorder(nil)
	h := start(t, worker.Config{Topology: topology(q), Handler: rec})
	h.waitReady(t)
	at := time.Now().Add(10 * time.Minute).UnixMilli()
	publishOn(t, brokertest.URL(), q, amqp.Publishing{Headers: amqp.Table{broker.HeaderRetryAt: at}, Body: []byte("m")})
	brokertest.WaitFor(t, 20*time.Second, "the message handled, or a loop", func() bool {
		return h.metric(t, "warren_messages_total", "outcome", "ack") == 1 ||
			h.metric(t, "warren_messages_total", "outcome", "requeue") >= hotLoop
	})
	if n := h.metric(t, "warren_messages_total", "outcome", "requeue"); n != 0 {
		t.Fatalf("handed back %v times, want 0: without retry queues the retry-at header is ignored", n)
	}
	if n := rec.calls(); n != 1 {
		t.Errorf("handled %d times, want 1", n)
	}
}

func TestRetryAfterAboveTheCeilingDies(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Retry-After", "99999999999")
		http.Error(w, "come back in three thousand years", http.StatusTooManyRequests)
	}))
	defer srv.Close()
	for _, tt := range []struct {
		name    string
		handler worker.Handler
		ceiling time.Duration // 0: the default, an hour
		headers amqp.Table
		want    string // in the dead reason
	}{
		{name: "Retry-After", handler: handler.NewHTTP(srv.URL, 1), want: "exceeds WARREN_MAX_RETRY_AFTER (1h0m0s)"},
		{name: "retry-at header", handler: handler.Noop(),
			headers: amqp.Table{broker.HeaderRetryAt: time.Now().Add(2 * time.Hour).UnixMilli()}, want: "exceeds WARREN_MAX_RETRY_AFTER (1h0m0s)"},
		{name: "a ceiling of its own", ceiling: 2 * time.Second,
			handler: worker.HandlerFunc(func(context.Context, *worker.Message) error {
				return worker.RetryAfter(errors.New("rate limited"), 3*time.Second)
			}),
			want: "Retry-After 3s exceeds WARREN_MAX_RETRY_AFTER (2s)"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			q := brokertest.Queue(t)
			h := start(t, worker.Config{
				Topology:      broker.Topology{Queue: q, Declare: true, RetryDelays: []time.Duration{200 * time.Millisecond}},
				Handler:       tt.handler,
				MaxRetryAfter: tt.ceiling,
			})
			h.waitReady(t)
			publishOn(t, brokertest.URL(), q, amqp.Publishing{Headers: tt.headers, Body: []byte("m")})
			brokertest.WaitFor(t, 20*time.Second, "the message dead, or parked", func() bool {
				return h.metric(t, "warren_messages_total", "outcome", "dead") == 1 ||
					h.metric(t, "warren_messages_total", "outcome", "deferred") >= hotLoop
			})
			if n := h.metric(t, "warren_messages_total", "outcome", "deferred"); n != 0 {
				t.Fatalf("deferred %v times, want 0: a wait above the ceiling dies", n)
			}
			d := deadCopy(t, q)
			if r, _ := d.Headers[broker.HeaderReason].(string); !strings.Contains(r, tt.want) {
				t.Errorf("dead reason = %q, want it to say %q", r, tt.want)
			}
		})
	}
}

func TestHeldRetryAfterDoesNotDelayTheDrain(t *testing.T) {
	q := brokertest.Queue(t)
	rec := newRecorder(func(context.Context, *worker.Message, int) error {
		return worker.RetryAfter(errors.New("rate limited"), 10*time.Minute)
	})
	h := start(t, worker.Config{Topology: topology(q), Handler: rec, ShutdownTimeout: 30 * time.Second})
	h.waitReady(t)
	brokertest.Publish(t, q, "m")
	brokertest.WaitFor(t, 10*time.Second, "the handler called", func() bool { return rec.calls() == 1 })
	start := time.Now()
	if err := h.stop(t); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("drain took %s while a message waited out its Retry-After, want it to end the wait (shutdown timeout 30s)", d.Round(time.Millisecond))
	}
	ds := brokertest.Get(t, q, 10)
	if len(ds) != 1 || broker.Attempts(ds[0].Headers) != 1 {
		t.Fatalf("queue holds %d messages, want the message back with 1 attempt counted", len(ds))
	}
}
