package worker_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/trace"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/warren-mq/warren/broker"
	"github.com/warren-mq/warren/handler"
	"github.com/warren-mq/warren/internal/brokertest"
	"github.com/warren-mq/warren/internal/otlptest"
	"github.com/warren-mq/warren/tracing"
	"github.com/warren-mq/warren/tracing/otlp"
	"github.com/warren-mq/warren/worker"
)

// The producer's span, as a W3C traceparent header carries it.
const (
	producerTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
	producerSpan  = "00f067aa0ba902b7"
	traceparent   = "00-" + producerTrace + "-" + producerSpan + "-01"
)

// otlpProvider returns a tracing provider exporting to a real OTLP
// receiver over HTTP, and the receiver.
func otlpProvider(t *testing.T) (*otlp.Provider, *otlptest.Receiver) {
	t.Helper()
	r := otlptest.New(t)
	s, err := tracing.FromEnv(func(k string) (string, bool) {
		switch k {
		case tracing.EnvEndpoint:
			return r.Endpoint(tracing.ProtocolHTTP), true
		case tracing.EnvProtocol:
			return tracing.ProtocolHTTP, true
		}
		return "", false
	})
	if err != nil {
		t.Fatal(err)
	}
	p, err := otlp.New(context.Background(), s, "test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Shutdown(context.Background()) })
	return p, r
}

// attempt is what a Go handler saw in its context.
type attempt struct {
	span   trace.SpanContext
	tenant string // the message's baggage
}

// failingHandler fails every message, recording what each attempt saw.
type failingHandler struct {
	mu   sync.Mutex
	seen []attempt
}

func (f *failingHandler) Handle(ctx context.Context, _ *worker.Message) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seen = append(f.seen, attempt{trace.SpanFromContext(ctx).SpanContext(), baggage.FromContext(ctx).Member("tenant").Value()})
	return errors.New("not today")
}

func (f *failingHandler) attempts() []attempt {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.seen)
}

// runToDead publishes one message with headers to a worker on cfg whose
// handler always fails, with two attempts, and returns the dead copy once
// the worker has stopped.
func runToDead(t *testing.T, cfg worker.Config, headers amqp.Table) (*harness, amqp.Delivery) {
	t.Helper()
	q := brokertest.Queue(t)
	cfg.Topology = broker.Topology{Queue: q, Declare: true, RetryDelays: []time.Duration{100 * time.Millisecond}}
	cfg.MaxAttempts = 2
	h := start(t, cfg)
	h.waitReady(t)
	publishOn(t, brokertest.URL(), q, amqp.Publishing{MessageId: "m-1", Headers: headers, Body: []byte("x")})
	var dead []amqp.Delivery
	brokertest.WaitFor(t, 20*time.Second, "the dead copy", func() bool {
		dead = append(dead, brokertest.Get(t, q+".dead", 1)...)
		return len(dead) == 1
	})
	// The drain waits for the last attempt's span to end.
	if err := h.stop(t); err != nil {
		t.Fatalf("Run = %v", err)
	}
	return h, dead[0]
}

// TestTraceAttempts: each attempt at a message is a consumer span, child
// of the producer's span when the message has one; every attempt, the
// retry and the dead copy share the trace; the Go handler's context
// carries the attempt's span and the message's baggage; the per-message
// log lines carry trace_id and span_id.
func TestTraceAttempts(t *testing.T) {
	tests := []struct {
		name    string
		headers amqp.Table
		// wantParents returns the parents the two attempts' spans must
		// have, given the spans.
		wantParents func(spans []otlptest.Span) [2]string
		wantTenant  string
	}{
		{
			name:        "with the producer's trace",
			headers:     amqp.Table{"traceparent": traceparent, "baggage": "tenant=acme"},
			wantParents: func([]otlptest.Span) [2]string { return [2]string{producerSpan, producerSpan} },
			wantTenant:  "acme",
		},
		{
			// The first attempt starts the trace; its copy carries it.
			name:        "without a trace",
			wantParents: func(spans []otlptest.Span) [2]string { return [2]string{"", spans[0].SpanID} },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, r := otlpProvider(t)
			f := &failingHandler{}
			h, dead := runToDead(t, worker.Config{Handler: f, TracerProvider: p.TracerProvider()}, tt.headers)
			if err := p.Shutdown(context.Background()); err != nil {
				t.Fatalf("flush spans: %v", err)
			}

			var spans []otlptest.Span
			for _, s := range r.Spans() {
				if strings.HasPrefix(s.Name, "process warren-test.") {
					spans = append(spans, s)
				}
			}
			if len(spans) != 2 {
				t.Fatalf("%d process spans exported, want 2 (one per attempt): %+v", len(spans), r.Spans())
			}
			otlptest.SortBy(spans, "warren.attempt")
			traceID := spans[0].TraceID
			if tt.headers != nil && traceID != producerTrace {
				t.Errorf("trace id %s, want the producer's %s", traceID, producerTrace)
			}
			parents := tt.wantParents(spans)
			seen := f.attempts()
			for i, s := range spans {
				if s.TraceID != traceID {
					t.Errorf("attempt %d in trace %s, want %s: every attempt shares the trace", i+1, s.TraceID, traceID)
				}
				if s.ParentSpanID != parents[i] {
					t.Errorf("attempt %d has parent %q, want %q", i+1, s.ParentSpanID, parents[i])
				}
				want := map[string]string{
					"messaging.system": "rabbitmq", "messaging.operation.type": "process", "messaging.message.id": "m-1",
					"warren.attempt": []string{"1", "2"}[i], "warren.outcome": []string{"retry", "dead"}[i],
				}
				for k, v := range want {
					if s.Attrs[k] != v {
						t.Errorf("attempt %d: %s = %q, want %q", i+1, k, s.Attrs[k], v)
					}
				}
				if s.Kind != tracepb.Span_SPAN_KIND_CONSUMER || s.StatusCode != tracepb.Status_STATUS_CODE_ERROR || s.Status != "not today" {
					t.Errorf("attempt %d: kind %v, status %v %q; want consumer, error, the handler's error", i+1, s.Kind, s.StatusCode, s.Status)
				}
				if i < len(seen) && (seen[i].span.SpanID().String() != s.SpanID || seen[i].tenant != tt.wantTenant) {
					t.Errorf("attempt %d: the handler's context had span %s and tenant %q, want the attempt's span %s and %q",
						i+1, seen[i].span.SpanID(), seen[i].tenant, s.SpanID, tt.wantTenant)
				}
			}
			if len(seen) != 2 {
				t.Errorf("the handler ran %d times, want 2", len(seen))
			}
			if tp, _ := dead.Headers["traceparent"].(string); !strings.Contains(tp, traceID) {
				t.Errorf("the dead copy carries traceparent %q, want trace %s", tp, traceID)
			}

			failed := h.logs.FilterMessage("handler failed").All()
			if len(failed) != 2 {
				t.Fatalf("%d 'handler failed' lines, want 2", len(failed))
			}
			for i, e := range failed {
				if m := e.ContextMap(); m["trace_id"] != traceID || m["span_id"] != spans[i].SpanID {
					t.Errorf("'handler failed' line %d has trace_id %v, span_id %v; want %s, %s", i+1, m["trace_id"], m["span_id"], traceID, spans[i].SpanID)
				}
			}
			for _, e := range h.logs.FilterMessage("dead-lettered").All() {
				if got := e.ContextMap()["trace_id"]; got != traceID {
					t.Errorf("'dead-lettered' line has trace_id %v, want %s", got, traceID)
				}
			}
		})
	}
}

// TestTraceOff: without a TracerProvider, warren makes no span, hands the
// handler none, invents no traceparent on the copies and logs no trace
// ids; a producer's headers pass through unchanged.
func TestTraceOff(t *testing.T) {
	for _, headers := range []amqp.Table{nil, {"traceparent": traceparent}} {
		f := &failingHandler{}
		h, dead := runToDead(t, worker.Config{Handler: f}, headers)
		if got, want := dead.Headers["traceparent"], headers["traceparent"]; got != want {
			t.Errorf("message with traceparent %v: the dead copy has %v, want it unchanged", want, got)
		}
		for i, a := range f.attempts() {
			if a.span.IsValid() {
				t.Errorf("attempt %d: the handler's context has span %v, want none with tracing off", i+1, a.span)
			}
		}
		for _, e := range h.logs.All() {
			if _, ok := e.ContextMap()["trace_id"]; ok {
				t.Errorf("log line %q has a trace_id with tracing off", e.Message)
			}
		}
	}
}

// TestTraceHandledLine: the debug line of a handled message carries the
// attempt's trace and span ids too.
func TestTraceHandledLine(t *testing.T) {
	p, r := otlpProvider(t)
	q := brokertest.Queue(t)
	h := start(t, worker.Config{
		Topology:       broker.Topology{Queue: q, Declare: true},
		Handler:        handler.Noop(),
		TracerProvider: p.TracerProvider(),
	})
	h.waitReady(t)
	publishOn(t, brokertest.URL(), q, amqp.Publishing{MessageId: "m-1", Headers: amqp.Table{"traceparent": traceparent}, Body: []byte("x")})
	brokertest.WaitFor(t, 20*time.Second, "the handled line", func() bool { return h.logs.FilterMessage("handled").Len() == 1 })
	if err := h.stop(t); err != nil {
		t.Fatalf("Run = %v", err)
	}
	if err := p.Shutdown(context.Background()); err != nil {
		t.Fatalf("flush spans: %v", err)
	}
	spans := r.Named("process " + q)
	if len(spans) != 1 {
		t.Fatalf("received %+v, want one process span", r.Spans())
	}
	m := h.logs.FilterMessage("handled").All()[0].ContextMap()
	if m["trace_id"] != producerTrace || m["span_id"] != spans[0].SpanID || m["message_id"] != "m-1" {
		t.Errorf("'handled' line = %v, want message_id m-1, trace_id %s, span_id %s", m, producerTrace, spans[0].SpanID)
	}
	if got := spans[0].Attrs["warren.outcome"]; got != "ack" || spans[0].StatusCode == tracepb.Status_STATUS_CODE_ERROR {
		t.Errorf("span outcome %q, status %v; want ack, not error", got, spans[0].StatusCode)
	}
}

// TestTraceReply: a reply carries the trace context and baggage of the
// attempt that answered (its process span the parent), so that the
// requester's trace goes on through the answer; a trace context the
// handler put in its reply's headers is kept; with tracing off a reply
// carries none.
func TestTraceReply(t *testing.T) {
	const handlerParent = "00-" + producerTrace + "-b7ad6b7169203331-01"
	for _, tt := range []struct {
		name        string
		traced      bool
		handler     worker.HandlerFunc
		replyOnDead bool
		want        string // the reply's traceparent: "span" for the attempt's span
	}{
		{name: "an answer", traced: true, handler: upper, want: "span"},
		{name: "the handler's own trace context kept", traced: true, want: handlerParent,
			handler: func(_ context.Context, m *worker.Message) error {
				m.Reply = &worker.Reply{Body: []byte("ok"), Headers: amqp.Table{"traceparent": handlerParent}}
				return nil
			}},
		{name: "an error reply", traced: true, replyOnDead: true, want: "span",
			handler: func(context.Context, *worker.Message) error { return worker.Permanent(errors.New("no")) }},
		{name: "tracing off", handler: upper},
	} {
		t.Run(tt.name, func(t *testing.T) {
			q := brokertest.Queue(t)
			cfg := worker.Config{Topology: broker.Topology{Queue: q, Declare: true}, Handler: tt.handler, ReplyOnDead: tt.replyOnDead}
			var (
				p *otlp.Provider
				r *otlptest.Receiver
			)
			if tt.traced {
				p, r = otlpProvider(t)
				cfg.TracerProvider = p.TracerProvider()
			}
			h := start(t, cfg)
			h.waitReady(t)
			c := brokertest.NewRPCClient(t)
			publishOn(t, brokertest.URL(), q, amqp.Publishing{MessageId: "m-1", ReplyTo: c.ReplyTo, CorrelationId: "c-1",
				Headers: amqp.Table{"traceparent": traceparent, "baggage": "tenant=acme"}, Body: []byte("x")})
			reply, ok := c.Reply(t, 20*time.Second)
			if !ok {
				t.Fatal("no reply within 20 s")
			}
			if err := h.stop(t); err != nil {
				t.Fatalf("Run = %v", err)
			}
			got, _ := reply.Headers["traceparent"].(string)
			want := tt.want
			if want == "span" {
				if err := p.Shutdown(context.Background()); err != nil {
					t.Fatalf("flush spans: %v", err)
				}
				spans := r.Named("process " + q)
				if len(spans) != 1 {
					t.Fatalf("received %+v, want one process span", r.Spans())
				}
				want = "00-" + producerTrace + "-" + spans[0].SpanID + "-01"
				if b, _ := reply.Headers["baggage"].(string); b != "tenant=acme" {
					t.Errorf("reply baggage %q, want the request's, tenant=acme", b)
				}
			}
			if got != want {
				t.Errorf("reply traceparent %q, want %q", got, want)
			}
		})
	}
}
