package tracing_test

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel/baggage"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/warren-mq/warren/tracing"
)

// A W3C traceparent: version, trace id, parent span id, flags (sampled).
const (
	producerTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
	producerSpan  = "00f067aa0ba902b7"
	traceparent   = "00-" + producerTrace + "-" + producerSpan + "-01"
)

// tracer returns a tracer of an SDK provider that samples everything and
// exports nothing: propagation needs no collector.
func tracer(t *testing.T) trace.Tracer {
	t.Helper()
	tp := sdktrace.NewTracerProvider()
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return tp.Tracer("test")
}

func TestHeadersCarrier(t *testing.T) {
	for _, give := range []any{traceparent, []byte(traceparent)} {
		ctx := tracing.Extract(context.Background(), amqp.Table{"traceparent": give, "baggage": "tenant=acme"})
		sc := trace.SpanContextFromContext(ctx)
		if sc.TraceID().String() != producerTrace || sc.SpanID().String() != producerSpan || !sc.IsRemote() || !sc.IsSampled() {
			t.Errorf("Extract(traceparent %T) = %v, want the producer's sampled remote span", give, sc)
		}
		if got := baggage.FromContext(ctx).Member("tenant").Value(); got != "acme" {
			t.Errorf("Extract(baggage) tenant = %q, want acme", got)
		}
	}
	for _, give := range []amqp.Table{nil, {"traceparent": int64(7)}, {"traceparent": "garbage"}} {
		if sc := trace.SpanContextFromContext(tracing.Extract(context.Background(), give)); sc.IsValid() {
			t.Errorf("Extract(%v) = %v, want no span", give, sc)
		}
	}
	h := amqp.Table{"x": "y"}
	tracing.Inject(tracing.Extract(context.Background(), amqp.Table{"traceparent": traceparent}), h)
	if h["traceparent"] != traceparent {
		t.Errorf("Inject wrote traceparent %v, want %q", h["traceparent"], traceparent)
	}
	keys := tracing.Headers(h).Keys()
	slices.Sort(keys)
	if !slices.Equal(keys, []string{"traceparent", "x"}) {
		t.Errorf("Keys() = %v", keys)
	}
}

func TestInjectIfAbsent(t *testing.T) {
	ctx, span := tracer(t).Start(context.Background(), "attempt")
	defer span.End()

	kept := amqp.Table{"traceparent": traceparent}
	tracing.InjectIfAbsent(ctx, kept)
	if kept["traceparent"] != traceparent {
		t.Errorf("a copy's traceparent became %v, want the producer's %q kept", kept["traceparent"], traceparent)
	}
	added := amqp.Table{}
	tracing.InjectIfAbsent(ctx, added)
	if got, _ := added["traceparent"].(string); !strings.Contains(got, span.SpanContext().SpanID().String()) {
		t.Errorf("a copy without trace got traceparent %q, want the attempt's span %s", got, span.SpanContext().SpanID())
	}
	none := amqp.Table{}
	tracing.InjectIfAbsent(context.Background(), none)
	if len(none) != 0 {
		t.Errorf("without a span, a copy got %v, want no header invented", none)
	}
}

// What a handler gets: the attempt's span as the parent of what the
// service behind does, and the message's baggage; nothing without a span.
func TestHandlerPropagation(t *testing.T) {
	ctx, span := tracing.StartProcess(context.Background(), tracer(t),
		amqp.Table{"traceparent": traceparent, "tracestate": "vendor=x", "baggage": "tenant=acme"}, tracing.Message{Queue: "q"})
	defer span.End()
	want := "00-" + producerTrace + "-" + span.SpanContext().SpanID().String() + "-01"

	h := http.Header{}
	tracing.InjectHTTP(ctx, h)
	if h.Get("traceparent") != want || h.Get("tracestate") != "vendor=x" || h.Get("baggage") != "tenant=acme" {
		t.Errorf("InjectHTTP = %v, want traceparent %s, tracestate and baggage", h, want)
	}
	env := tracing.Env(ctx)
	slices.Sort(env)
	if wantEnv := []string{"BAGGAGE=tenant=acme", "TRACEPARENT=" + want, "TRACESTATE=vendor=x"}; !slices.Equal(env, wantEnv) {
		t.Errorf("Env = %q, want %q", env, wantEnv)
	}

	h = http.Header{}
	tracing.InjectHTTP(context.Background(), h)
	if len(h) != 0 {
		t.Errorf("InjectHTTP without a span = %v, want nothing invented", h)
	}
	if env := tracing.Env(context.Background()); env != nil {
		t.Errorf("Env without a span = %q, want nil", env)
	}
}
