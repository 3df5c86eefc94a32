// Package tracing carries W3C trace context across the queue: the
// standard OTEL_* variables read and checked, the AMQP headers as a
// propagation carrier, the spans of a publish and of each attempt at a
// message, and the context handed on to a handler (HTTP request headers,
// a command's environment). It needs only the OpenTelemetry API; the SDK
// and the OTLP exporters are tracing/otlp's, which the binary wires.
//
// Nothing here is global: a trace.TracerProvider is passed to whoever
// makes spans, and a nil one means tracing is off.
package tracing

import (
	"context"
	"net/http"
	"strings"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// ScopeName is the instrumentation scope of warren's spans.
const ScopeName = "github.com/warren-mq/warren"

// propagator reads and writes W3C trace context and baggage. It holds no
// state.
var propagator = propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})

// Headers adapts a message's AMQP headers to propagation.TextMapCarrier.
// A value written by another client as bytes (a long string some
// libraries send that way) reads as text.
type Headers amqp.Table

// Get returns the value of key as text, or "".
func (h Headers) Get(key string) string {
	switch v := h[key].(type) {
	case string:
		return v
	case []byte:
		return string(v)
	}
	return ""
}

// Set sets key to value.
func (h Headers) Set(key, value string) { h[key] = value }

// Keys returns the names of the headers.
func (h Headers) Keys() []string {
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	return keys
}

// Extract returns ctx with the trace context and baggage of headers.
func Extract(ctx context.Context, headers amqp.Table) context.Context {
	return propagator.Extract(ctx, Headers(headers))
}

// Inject writes the trace context and baggage of ctx into headers, which
// must not be nil. A ctx without a span writes no traceparent.
func Inject(ctx context.Context, headers amqp.Table) {
	propagator.Inject(ctx, Headers(headers))
}

// InjectIfAbsent injects ctx's trace context into the headers of a copy
// that has none: a copy of a message that came with a trace keeps the
// producer's, so that every attempt is a child of the producer's span; a
// message that came without one takes the first attempt's.
func InjectIfAbsent(ctx context.Context, headers amqp.Table) {
	if Headers(headers).Get("traceparent") == "" {
		Inject(ctx, headers)
	}
}

// InjectHTTP writes the trace context and baggage of ctx into the headers
// of a request (traceparent, tracestate, baggage): the service behind an
// HTTP handler continues the trace. Without a span in ctx it writes none.
func InjectHTTP(ctx context.Context, h http.Header) {
	propagator.Inject(ctx, propagation.HeaderCarrier(h))
}

// Env returns the trace context and baggage of ctx as environment
// variables for a command (TRACEPARENT, TRACESTATE, BAGGAGE, as the
// OpenTelemetry environment carrier names them); nil without a span.
func Env(ctx context.Context) []string {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return nil
	}
	m := propagation.MapCarrier{}
	propagator.Inject(ctx, m)
	env := make([]string, 0, len(m))
	for k, v := range m {
		env = append(env, strings.ToUpper(k)+"="+v)
	}
	return env
}

// Message describes a delivery to the span of an attempt at it.
type Message struct {
	Queue       string // the queue consumed
	Exchange    string // the exchange it was first published to
	RoutingKey  string // its first routing key
	MessageID   string
	Correlation string
	BodySize    int
	DeliveryTag uint64
	Attempt     int // from 1
	Redelivered bool
}

// Attribute keys of warren's own, beside the messaging conventions'.
const (
	AttrAttempt = "warren.attempt"
	AttrOutcome = "warren.outcome"
)

// StartProcess starts the span of one attempt at a message whose AMQP
// headers are headers: a consumer span "process <queue>", child of the
// producer's span when the headers carry one (traceparent), a root span
// otherwise. The returned context carries the span and the message's
// baggage, for the handler.
func StartProcess(ctx context.Context, t trace.Tracer, headers amqp.Table, m Message) (context.Context, trace.Span) {
	ctx = Extract(ctx, headers)
	attrs := []attribute.KeyValue{
		attribute.String("messaging.system", "rabbitmq"),
		attribute.String("messaging.operation.type", "process"),
		attribute.String("messaging.operation.name", "process"),
		attribute.String("messaging.destination.name", m.Queue),
		attribute.String("messaging.rabbitmq.destination.routing_key", m.RoutingKey),
		attribute.Int("messaging.message.body.size", m.BodySize),
		attribute.Int64("messaging.rabbitmq.message.delivery_tag", int64(m.DeliveryTag)),
		attribute.Int(AttrAttempt, m.Attempt),
	}
	if m.Exchange != "" {
		attrs = append(attrs, attribute.String("messaging.destination.publish.name", m.Exchange))
	}
	if m.MessageID != "" {
		attrs = append(attrs, attribute.String("messaging.message.id", m.MessageID))
	}
	if m.Correlation != "" {
		attrs = append(attrs, attribute.String("messaging.message.conversation_id", m.Correlation))
	}
	if m.Redelivered {
		attrs = append(attrs, attribute.Bool("warren.redelivered", true))
	}
	return t.Start(ctx, "process "+m.Queue, trace.WithSpanKind(trace.SpanKindConsumer), trace.WithAttributes(attrs...))
}

// End ends the span of an attempt with its outcome (ack, retry, dead,
// requeue); a handler's error sets the span's status to error.
func End(span trace.Span, outcome string, err error) {
	span.SetAttributes(attribute.String(AttrOutcome, outcome))
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// StartPublish starts the producer span of one message published to
// exchange (empty: the default exchange) with key, and returns the
// headers that carry it: the message's trace starts here.
func StartPublish(ctx context.Context, t trace.Tracer, exchange, key string) (trace.Span, amqp.Table) {
	dest := exchange
	if dest == "" {
		dest = key // the default exchange routes to the queue named by the key
	}
	ctx, span := t.Start(ctx, "publish "+dest, trace.WithSpanKind(trace.SpanKindProducer), trace.WithAttributes(
		attribute.String("messaging.system", "rabbitmq"),
		attribute.String("messaging.operation.type", "send"),
		attribute.String("messaging.operation.name", "publish"),
		attribute.String("messaging.destination.name", dest),
		attribute.String("messaging.rabbitmq.destination.routing_key", key),
	))
	h := amqp.Table{}
	Inject(ctx, h)
	return span, h
}

// IDs returns the trace and span ids of ctx's span, as logs carry them,
// or false when ctx has none.
func IDs(ctx context.Context) (traceID, spanID string, ok bool) {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() {
		return "", "", false
	}
	return sc.TraceID().String(), sc.SpanID().String(), true
}
