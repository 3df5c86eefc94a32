package main

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/warren-mq/warren/internal/brokertest"
	"github.com/warren-mq/warren/internal/otlptest"
)

// traceRequests is an HTTP endpoint that records the trace headers of
// each request; the first `fail` requests get a 503.
type traceRequests struct {
	mu   sync.Mutex
	got  []http.Header
	fail int
}

func (e *traceRequests) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.got = append(e.got, r.Header.Clone())
	if len(e.got) <= e.fail {
		http.Error(w, "warming up", http.StatusServiceUnavailable)
	}
}

func (e *traceRequests) headers() []http.Header {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.got)
}

// traceparentParts splits a W3C traceparent into its trace id and parent
// span id.
func traceparentParts(tp string) (traceID, spanID string) {
	parts := strings.Split(tp, "-")
	if len(parts) != 4 {
		return "", ""
	}
	return parts[1], parts[2]
}

// TestTraceAcrossTheQueue: `warren publish` starts a trace and the worker
// continues it, over each OTLP protocol: the endpoint gets a traceparent
// of the publisher's trace whose parent is the attempt's span, the retry
// shares the trace, every span reaches the receiver when warren exits,
// and the failed attempt's log line carries the trace id.
func TestTraceAcrossTheQueue(t *testing.T) {
	for _, protocol := range []string{"grpc", "http/protobuf"} {
		t.Run(protocol, func(t *testing.T) {
			r := otlptest.New(t)
			ep := &traceRequests{fail: 1}
			srv := httptest.NewServer(ep)
			defer srv.Close()
			q := brokertest.Queue(t)
			brokertest.DeleteAfter(t, q+".retry.200ms")
			p := startWarren(t, append(append(brokerEnv(q), r.Env(protocol)...),
				"WARREN_HANDLER=http", "WARREN_HTTP_URL="+srv.URL, "WARREN_RETRY_DELAYS=200ms", "OTEL_SERVICE_NAME=orders-worker"))
			p.waitStatus(t, "/readyz", http.StatusOK)

			if code, out := runWarren(t, append(brokerEnv(q), r.Env(protocol)...), "", "publish", "hello"); code != 0 {
				t.Fatalf("warren publish = %d, %q", code, out)
			}
			brokertest.WaitFor(t, 20*time.Second, "two attempts at the endpoint", func() bool { return len(ep.headers()) == 2 })
			p.signal(t, syscall.SIGTERM)
			if code := p.wait(t, 30*time.Second); code != 0 {
				t.Fatalf("warren exited %d after SIGTERM, want 0", code)
			}

			// warren publish exported its span at its exit, the worker at its own.
			publish, process := "publish "+q, "process "+q
			spans := r.Spans()
			pubs, procs := r.Named(publish), r.Named(process)
			if len(pubs) != 1 || len(procs) != 2 {
				t.Fatalf("received %d %q and %d %q spans, want 1 and 2: %+v", len(pubs), publish, len(procs), process, spans)
			}
			pub := pubs[0]
			if pub.Kind != tracepb.Span_SPAN_KIND_PRODUCER || pub.ParentSpanID != "" || pub.Resource["service.name"] != "warren" {
				t.Errorf("publish span = %+v, want a root producer span of service warren", pub)
			}
			otlptest.SortBy(procs, "warren.attempt")
			for i, h := range ep.headers() {
				traceID, parent := traceparentParts(h.Get("traceparent"))
				s := procs[i]
				if traceID != pub.TraceID || parent != s.SpanID {
					t.Errorf("request %d: traceparent %q, want trace %s (the publisher's) and parent %s (attempt %d's span)",
						i+1, h.Get("traceparent"), pub.TraceID, s.SpanID, i+1)
				}
				if s.TraceID != pub.TraceID || s.ParentSpanID != pub.SpanID {
					t.Errorf("attempt %d: trace %s, parent %s; want trace %s under the publish span %s", i+1, s.TraceID, s.ParentSpanID, pub.TraceID, pub.SpanID)
				}
				if s.Resource["service.name"] != "orders-worker" || s.Protocol != protocol {
					t.Errorf("attempt %d: service %q over %s, want orders-worker over %s", i+1, s.Resource["service.name"], s.Protocol, protocol)
				}
			}
			if procs[0].StatusCode != tracepb.Status_STATUS_CODE_ERROR || procs[0].Attrs["warren.outcome"] != "retry" || procs[1].Attrs["warren.outcome"] != "ack" {
				t.Errorf("attempts: %v %s, then %s; want error retry, then ack", procs[0].StatusCode, procs[0].Attrs["warren.outcome"], procs[1].Attrs["warren.outcome"])
			}
			if want := `"trace_id":"` + pub.TraceID + `"`; !strings.Contains(p.out.String(), want) {
				t.Errorf("the log has no %s on the failed attempt's line", want)
			}
		})
	}
}

// TestExecPrintsTraceparent: an exec command gets the attempt's trace
// context in TRACEPARENT, a child of the producer's.
func TestExecPrintsTraceparent(t *testing.T) {
	r := otlptest.New(t)
	done := t.TempDir()
	q := brokertest.Queue(t)
	p := startWarren(t, append(append(brokerEnv(q), r.Env("http/protobuf")...),
		"WARREN_HANDLER=exec", `WARREN_EXEC_COMMAND=echo "$TRACEPARENT" > "$DONE_DIR/$WARREN_MESSAGE_ID"`,
		"WARREN_EXEC_ENV=DONE_DIR", "DONE_DIR="+done))
	p.waitStatus(t, "/readyz", http.StatusOK)
	const producerTrace, producerSpan = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	publishWith(t, q, amqp.Publishing{MessageId: "m-1", Body: []byte("x"),
		Headers: amqp.Table{"traceparent": "00-" + producerTrace + "-" + producerSpan + "-01"}})
	var printed string
	brokertest.WaitFor(t, 20*time.Second, "the command's output", func() bool {
		b, err := os.ReadFile(filepath.Join(done, "m-1"))
		printed = strings.TrimSpace(string(b))
		return err == nil && printed != ""
	})
	p.signal(t, syscall.SIGTERM)
	if code := p.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("warren exited %d after SIGTERM, want 0", code)
	}
	procs := r.Named("process " + q)
	if len(procs) != 1 {
		t.Fatalf("received %+v, want one process span", r.Spans())
	}
	if want := "00-" + producerTrace + "-" + procs[0].SpanID + "-01"; printed != want {
		t.Errorf("the command printed TRACEPARENT=%q, want %q (the attempt's span in the producer's trace)", printed, want)
	}
	if procs[0].ParentSpanID != producerSpan {
		t.Errorf("the attempt's span has parent %s, want the producer's %s", procs[0].ParentSpanID, producerSpan)
	}
}

// publishWith publishes msg to q, confirmed.
func publishWith(t *testing.T, q string, msg amqp.Publishing) {
	t.Helper()
	ch := brokertest.Channel(t)
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	msg.DeliveryMode = amqp.Persistent
	dc, err := ch.PublishWithDeferredConfirmWithContext(context.Background(), "", q, true, false, msg)
	if err != nil || !dc.Wait() {
		t.Fatalf("publish to %s: %v, not confirmed", q, err)
	}
}

// TestTracingOffInventsNothing: with no OTEL endpoint, neither warren
// publish nor the worker puts a traceparent anywhere.
func TestTracingOffInventsNothing(t *testing.T) {
	ep := &traceRequests{}
	srv := httptest.NewServer(ep)
	defer srv.Close()
	q := brokertest.Queue(t)
	p := startWarren(t, append(brokerEnv(q), "WARREN_HANDLER=http", "WARREN_HTTP_URL="+srv.URL))
	p.waitStatus(t, "/readyz", http.StatusOK)
	if code, out := runWarren(t, brokerEnv(q), "", "publish", "hello"); code != 0 {
		t.Fatalf("warren publish = %d, %q", code, out)
	}
	brokertest.WaitFor(t, 20*time.Second, "the request", func() bool { return len(ep.headers()) == 1 })
	h := ep.headers()[0]
	for _, name := range []string{"Traceparent", "Tracestate", "Baggage", "X-Warren-Header-Traceparent"} {
		if v := h.Get(name); v != "" {
			t.Errorf("with tracing off, the request has %s: %q", name, v)
		}
	}
}

// TestBadTracingVariableExits2: a bad OTEL_* value is bad configuration,
// for the worker and for publish alike: exit 2 naming the variable,
// before anything connects.
func TestBadTracingVariableExits2(t *testing.T) {
	for _, tt := range []struct{ give, wantVar string }{
		{"OTEL_EXPORTER_OTLP_ENDPOINT=otel-collector:4317", "OTEL_EXPORTER_OTLP_ENDPOINT"},
		{"OTEL_EXPORTER_OTLP_PROTOCOL=http/json", "OTEL_EXPORTER_OTLP_PROTOCOL"},
		{"OTEL_TRACES_SAMPLER=sometimes", "OTEL_TRACES_SAMPLER"},
		{"OTEL_TRACES_SAMPLER_ARG=2", "OTEL_TRACES_SAMPLER_ARG"},
		{"OTEL_RESOURCE_ATTRIBUTES=team", "OTEL_RESOURCE_ATTRIBUTES"},
	} {
		for _, cmd := range []string{"run", "publish"} {
			// A broker nobody listens on: nothing may connect first.
			env := []string{"WARREN_AMQP_URL=amqp://guest:guest@127.0.0.1:1/", "WARREN_QUEUE=q", tt.give}
			code, out := runWarren(t, env, "", cmd, "body")
			if code != 2 || !strings.Contains(out, tt.wantVar+"=") {
				t.Errorf("warren %s with %s = %d, %q; want 2 naming %s", cmd, tt.give, code, out, tt.wantVar)
			}
		}
	}
}

// TestUnreachableCollectorDelaysExitABit: a collector that takes the
// connection and never answers holds warren's exit past its drain by the
// flush bound (2 s), not by the exporter's own timeout (10 s) or retries.
func TestUnreachableCollectorDelaysExitABit(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var held sync.WaitGroup
	defer held.Wait() // after the close below ends its Accept
	defer ln.Close()
	held.Add(1)
	go func() {
		defer held.Done()
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c) // read nothing, answer nothing
		}
	}()
	q := brokertest.Queue(t)
	p := startWarren(t, append(brokerEnv(q), "WARREN_HANDLER=noop", "WARREN_SHUTDOWN_TIMEOUT=1s",
		"OTEL_EXPORTER_OTLP_ENDPOINT=http://"+ln.Addr().String()))
	p.waitStatus(t, "/readyz", http.StatusOK)
	brokertest.Publish(t, q, "m-1")
	brokertest.WaitFor(t, 20*time.Second, "the message handled", func() bool { return brokertest.Ready(t, q) == 0 && strings.Contains(p.out.String(), "tracing") })
	start := time.Now()
	p.signal(t, syscall.SIGTERM)
	if code := p.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("warren exited %d after SIGTERM, want 0", code)
	}
	// An idle drain ends at once; the flush has 2 s; the rest is slack for
	// a loaded machine (the exporter alone would wait 10 s, and retry).
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("warren took %s to exit with an unresponsive collector, want the 2 s flush bound and at most 3 s of slack", took)
	}
	if !strings.Contains(p.out.String(), "spans not exported at exit") {
		t.Errorf("the log does not say the spans were not exported")
	}
}
