// Package otlp exports warren's spans with the OpenTelemetry SDK over
// OTLP (gRPC or HTTP/protobuf), as the standard OTEL_* variables, read by
// package tracing, describe. The binary wires it; the worker only sees
// the trace.TracerProvider it returns.
package otlp

import (
	"context"
	"fmt"
	"net/url"
	"path"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/warren-mq/warren/tracing"
)

// ShutdownTimeout bounds the flush of the spans still buffered at exit:
// a collector that does not answer must not hold the process past its
// drain bound by more than this.
const ShutdownTimeout = 2 * time.Second

// Provider makes warren's spans and exports them. The zero of *Provider,
// nil, is tracing off.
type Provider struct {
	tp *sdktrace.TracerProvider
	s  tracing.Settings
}

// New returns the provider that s describes, exporting over OTLP, or nil
// when s has no endpoint. version is the service.version of the spans.
// The exporter reads its other variables (headers, timeout, TLS files)
// itself; it connects at the first export, not here.
func New(ctx context.Context, s tracing.Settings, version string) (*Provider, error) {
	if !s.Enabled() {
		return nil, nil
	}
	var (
		exp sdktrace.SpanExporter
		err error
	)
	// The exporters would read the endpoint from the environment
	// themselves; given explicitly, Settings is the one truth.
	switch s.Protocol {
	case tracing.ProtocolGRPC:
		exp, err = otlptracegrpc.New(ctx, otlptracegrpc.WithEndpointURL(exportURL(s)))
	default:
		exp, err = otlptracehttp.New(ctx, otlptracehttp.WithEndpointURL(exportURL(s)))
	}
	if err != nil {
		return nil, fmt.Errorf("otlp exporter: %w", err)
	}
	attrs := []attribute.KeyValue{attribute.String("service.version", version)}
	attrs = append(attrs, s.Attributes...)
	// OTEL_SERVICE_NAME wins over a service.name in the attributes.
	attrs = append(attrs, attribute.String("service.name", s.ServiceName))
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp),
		sdktrace.WithResource(resource.NewSchemaless(attrs...)),
		sdktrace.WithSampler(sampler(s)),
	)
	return &Provider{tp: tp, s: s}, nil
}

// exportURL returns the URL the exporter of s posts to: over HTTP, the
// generic endpoint is a base to which /v1/traces is added, and the
// traces-only one is whole; gRPC takes the host and scheme only.
func exportURL(s tracing.Settings) string {
	if s.Protocol == tracing.ProtocolGRPC || s.WholeURL {
		return s.Endpoint
	}
	u, err := url.Parse(s.Endpoint)
	if err != nil { // checked by FromEnv
		return s.Endpoint
	}
	u.Path = path.Join("/", u.Path, "v1/traces")
	return u.String()
}

// sampler returns the sampler s names.
func sampler(s tracing.Settings) sdktrace.Sampler {
	switch s.Sampler {
	case "always_on":
		return sdktrace.AlwaysSample()
	case "always_off":
		return sdktrace.NeverSample()
	case "traceidratio":
		return sdktrace.TraceIDRatioBased(s.Ratio)
	case "parentbased_always_off":
		return sdktrace.ParentBased(sdktrace.NeverSample())
	case "parentbased_traceidratio":
		return sdktrace.ParentBased(sdktrace.TraceIDRatioBased(s.Ratio))
	}
	return sdktrace.ParentBased(sdktrace.AlwaysSample())
}

// TracerProvider returns the provider for worker.Config and the like: nil
// (tracing off) when p is nil.
func (p *Provider) TracerProvider() trace.TracerProvider {
	if p == nil {
		return nil
	}
	return p.tp
}

// Settings returns what p was made from.
func (p *Provider) Settings() tracing.Settings {
	if p == nil {
		return tracing.Settings{}
	}
	return p.s
}

// Shutdown exports the spans still buffered and stops the exporter,
// within ctx. A nil p has nothing to do.
func (p *Provider) Shutdown(ctx context.Context) error {
	if p == nil {
		return nil
	}
	if err := p.tp.Shutdown(ctx); err != nil {
		return fmt.Errorf("flush spans: %w", err)
	}
	return nil
}
