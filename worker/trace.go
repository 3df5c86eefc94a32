package worker

import (
	"context"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"

	"github.com/warren-mq/warren/broker"
	"github.com/warren-mq/warren/tracing"
)

// startSpan starts the span of this attempt at d (tracing is on): a child
// of the trace context d's headers carry, described as the handler sees
// the message (a retried one by how it was first published).
func (w *Worker) startSpan(ctx context.Context, d *amqp.Delivery) (context.Context, trace.Span) {
	m := tracing.Message{
		Queue:       w.cfg.Topology.Queue,
		Exchange:    d.Exchange,
		RoutingKey:  d.RoutingKey,
		MessageID:   d.MessageId,
		Correlation: d.CorrelationId,
		BodySize:    len(d.Body),
		DeliveryTag: d.DeliveryTag,
		Attempt:     broker.Attempts(d.Headers) + 1,
		Redelivered: d.Redelivered,
	}
	if rk, ok := d.Headers[broker.HeaderRoutingKey].(string); ok {
		m.RoutingKey = rk
		m.Exchange, _ = d.Headers[broker.HeaderExchange].(string)
	}
	return tracing.StartProcess(ctx, w.tracer, d.Headers, m)
}

// messageFields returns the fields of a per-message log line: the
// delivery, then extra, then the trace and span ids of the attempt's span
// when tracing is on.
func (w *Worker) messageFields(ctx context.Context, d *amqp.Delivery, extra ...zap.Field) []zap.Field {
	fields := make([]zap.Field, 0, 4+len(extra))
	fields = append(fields, zap.Uint64("delivery_tag", d.DeliveryTag), zap.String("message_id", d.MessageId))
	fields = append(fields, extra...)
	return w.traceFields(ctx, fields)
}

// traceFields appends to fields the trace_id and span_id of ctx's span,
// if tracing is on and there is one.
func (w *Worker) traceFields(ctx context.Context, fields []zap.Field) []zap.Field {
	if w.tracer == nil {
		return fields
	}
	if traceID, spanID, ok := tracing.IDs(ctx); ok {
		fields = append(fields, zap.String("trace_id", traceID), zap.String("span_id", spanID))
	}
	return fields
}
