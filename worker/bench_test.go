package worker_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"

	"github.com/warren-mq/warren/broker"
	"github.com/warren-mq/warren/handler"
	"github.com/warren-mq/warren/internal/brokertest"
	"github.com/warren-mq/warren/internal/otlptest"
	"github.com/warren-mq/warren/tracing"
	"github.com/warren-mq/warren/tracing/otlp"
	"github.com/warren-mq/warren/worker"
)

// BenchmarkDrain measures warren's whole per-message path against the real
// broker: b.N persistent messages, pre-filled, drained with the noop
// handler. Its allocs/op are allocations per message, amqp091-go's
// included.
func BenchmarkDrain(b *testing.B) {
	for _, s := range []struct {
		name                  string
		queueType             string
		prefetch, concurrency int
		traced                bool // every message sampled, exported over OTLP/HTTP to a sink in this process
	}{
		{"classic-prefetch200-concurrency4", broker.Classic, 200, 4, false},
		{"classic-prefetch200-concurrency16", broker.Classic, 200, 16, false},
		{"quorum-prefetch200-concurrency16", broker.Quorum, 200, 16, false},
		{"classic-prefetch1000-concurrency32", broker.Classic, 1000, 32, false},
		// Prefetch 0: adaptive, the defaults.
		{"classic-adaptive-concurrency4", broker.Classic, 0, 4, false},
		{"quorum-adaptive-concurrency4", broker.Quorum, 0, 4, false},
		{"classic-adaptive-concurrency4-traced", broker.Classic, 0, 4, true},
	} {
		b.Run(s.name, func(b *testing.B) {
			q := brokertest.Queue(b)
			brokertest.DeclareQueue(b, q, amqp.Table{amqp.QueueTypeArg: s.queueType})
			brokertest.Publish(b, q, brokertest.Bodies("m", b.N)...)
			reg := prometheus.NewRegistry()
			var tp trace.TracerProvider
			if s.traced {
				tp = benchTracer(b)
			}
			w, err := worker.New(worker.Config{
				Dialer:         &broker.Dialer{URLs: []string{brokertest.URL()}},
				Topology:       broker.Topology{Queue: q, QueueType: s.queueType, Declare: true},
				Handler:        handler.Noop(),
				Logger:         zap.NewNop(),
				Registerer:     reg,
				Prefetch:       s.prefetch,
				Concurrency:    s.concurrency,
				TracerProvider: tp,
			})
			if err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			b.ReportAllocs()
			b.ResetTimer()
			go func() { done <- w.Run(ctx) }()
			deadline := time.Now().Add(5 * time.Minute)
			for settledCount(b, reg) < float64(b.N) {
				if time.Now().After(deadline) {
					b.Fatal("not drained in 5 minutes")
				}
				time.Sleep(20 * time.Millisecond)
			}
			b.StopTimer()
			cancel()
			<-done
		})
	}
}

// benchTracer returns a provider that samples every message and exports
// over OTLP/HTTP to a receiver in this process that only counts.
func benchTracer(b *testing.B) trace.TracerProvider {
	r, err := otlptest.StartCounting()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(r.Close)
	p, err := otlp.New(context.Background(), tracing.Settings{
		Endpoint: r.Endpoint(tracing.ProtocolHTTP), Protocol: tracing.ProtocolHTTP, ServiceName: "bench", Sampler: "always_on", Ratio: 1,
	}, "bench")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = p.Shutdown(context.Background()) })
	return p.TracerProvider()
}

func settledCount(b *testing.B, reg *prometheus.Registry) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		b.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() == "warren_messages_total" {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}
