package otlp_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/warren-mq/warren/internal/otlptest"
	"github.com/warren-mq/warren/tracing"
	"github.com/warren-mq/warren/tracing/otlp"
)

// provider returns a provider exporting to r over protocol, with the
// variables of env beside.
func provider(t *testing.T, r *otlptest.Receiver, protocol string, env ...string) *otlp.Provider {
	t.Helper()
	vars := map[string]string{}
	for _, kv := range append(r.Env(protocol), env...) {
		k, v, _ := strings.Cut(kv, "=")
		vars[k] = v
	}
	s, err := tracing.FromEnv(func(k string) (string, bool) { v, ok := vars[k]; return v, ok })
	if err != nil {
		t.Fatal(err)
	}
	p, err := otlp.New(context.Background(), s, "v1.2.3")
	if err != nil || p == nil {
		t.Fatalf("New(%+v) = %v, %v; want a provider", s, p, err)
	}
	t.Cleanup(func() { _ = p.Shutdown(context.Background()) })
	return p
}

// TestExport: the spans reach a real OTLP receiver over each protocol,
// with their names, kinds, attributes, parents, status and resource.
func TestExport(t *testing.T) {
	for _, protocol := range []string{tracing.ProtocolGRPC, tracing.ProtocolHTTP} {
		t.Run(protocol, func(t *testing.T) {
			r := otlptest.New(t)
			p := provider(t, r, protocol, "OTEL_SERVICE_NAME=orders-worker", "OTEL_RESOURCE_ATTRIBUTES=deployment.environment=test")
			tracer := p.TracerProvider().Tracer(tracing.ScopeName)
			pub, headers := tracing.StartPublish(context.Background(), tracer, "", "orders")
			pub.End()
			_, span := tracing.StartProcess(context.Background(), tracer, headers, tracing.Message{
				Queue: "orders", Exchange: "shop", RoutingKey: "orders.created", MessageID: "m-1", BodySize: 12, DeliveryTag: 3, Attempt: 2,
			})
			tracing.End(span, "retry", errors.New("post: status 503"))
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := p.Shutdown(ctx); err != nil {
				t.Fatalf("Shutdown = %v", err)
			}
			sends, processes := r.Named("publish orders"), r.Named("process orders")
			if len(sends) != 1 || len(processes) != 1 {
				t.Fatalf("received %+v, want a publish and a process span", r.Spans())
			}
			send, process := sends[0], processes[0]
			if send.Kind != tracepb.Span_SPAN_KIND_PRODUCER || send.ParentSpanID != "" {
				t.Errorf("publish span = %+v, want a root producer span", send)
			}
			if process.Kind != tracepb.Span_SPAN_KIND_CONSUMER {
				t.Errorf("process span kind %v, want consumer", process.Kind)
			}
			if process.TraceID != send.TraceID || process.ParentSpanID != send.SpanID {
				t.Errorf("process span in trace %s under %s, want trace %s under the publish span %s", process.TraceID, process.ParentSpanID, send.TraceID, send.SpanID)
			}
			for k, want := range map[string]string{
				"messaging.system":                           "rabbitmq",
				"messaging.operation.type":                   "process",
				"messaging.destination.name":                 "orders",
				"messaging.destination.publish.name":         "shop",
				"messaging.rabbitmq.destination.routing_key": "orders.created",
				"messaging.message.id":                       "m-1",
				"messaging.message.body.size":                "12",
				"warren.attempt":                             "2",
				"warren.outcome":                             "retry",
			} {
				if got := process.Attrs[k]; got != want {
					t.Errorf("process span %s = %q, want %q", k, got, want)
				}
			}
			if process.StatusCode != tracepb.Status_STATUS_CODE_ERROR || process.Status != "post: status 503" {
				t.Errorf("process span status = %v %q, want error with the handler's error", process.StatusCode, process.Status)
			}
			for k, want := range map[string]string{"service.name": "orders-worker", "service.version": "v1.2.3", "deployment.environment": "test"} {
				if got := process.Resource[k]; got != want {
					t.Errorf("resource %s = %q, want %q", k, got, want)
				}
			}
			if process.Protocol != protocol {
				t.Errorf("received over %s, want %s", process.Protocol, protocol)
			}
		})
	}
}

func TestSampler(t *testing.T) {
	r := otlptest.New(t)
	tests := []struct {
		give        []string
		wantSampled bool
	}{
		{[]string{"OTEL_TRACES_SAMPLER=always_off"}, false},
		{[]string{"OTEL_TRACES_SAMPLER=traceidratio", "OTEL_TRACES_SAMPLER_ARG=0"}, false},
		{[]string{"OTEL_TRACES_SAMPLER=always_on"}, true},
		{nil, true}, // parentbased_always_on, for a root span
	}
	for _, tt := range tests {
		tracer := provider(t, r, tracing.ProtocolHTTP, tt.give...).TracerProvider().Tracer("test")
		_, span := tracer.Start(context.Background(), "x")
		if got := span.SpanContext().IsSampled(); got != tt.wantSampled {
			t.Errorf("%v: sampled = %v, want %v", tt.give, got, tt.wantSampled)
		}
		span.End()
	}
}

func TestNewOff(t *testing.T) {
	p, err := otlp.New(context.Background(), tracing.Settings{}, "v")
	if p != nil || err != nil {
		t.Fatalf("New(no endpoint) = %v, %v; want nil, nil", p, err)
	}
	if tp := p.TracerProvider(); tp != nil {
		t.Errorf("nil Provider's TracerProvider() = %v, want a nil interface", tp)
	}
	if err := p.Shutdown(context.Background()); err != nil {
		t.Errorf("nil Provider's Shutdown() = %v", err)
	}
}
