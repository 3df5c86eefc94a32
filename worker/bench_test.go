package worker_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap"

	"github.com/warren-mq/warren/broker"
	"github.com/warren-mq/warren/handler"
	"github.com/warren-mq/warren/internal/brokertest"
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
	}{
		{"classic-prefetch200-concurrency4", broker.Classic, 200, 4},
		{"classic-prefetch200-concurrency16", broker.Classic, 200, 16},
		{"quorum-prefetch200-concurrency16", broker.Quorum, 200, 16},
		{"classic-prefetch1000-concurrency32", broker.Classic, 1000, 32},
		// Prefetch 0: adaptive, the defaults.
		{"classic-adaptive-concurrency4", broker.Classic, 0, 4},
		{"quorum-adaptive-concurrency4", broker.Quorum, 0, 4},
	} {
		b.Run(s.name, func(b *testing.B) {
			q := brokertest.Queue(b)
			brokertest.DeclareQueue(b, q, amqp.Table{amqp.QueueTypeArg: s.queueType})
			brokertest.Publish(b, q, brokertest.Bodies("m", b.N)...)
			reg := prometheus.NewRegistry()
			w, err := worker.New(worker.Config{
				Dialer:      &broker.Dialer{URLs: []string{brokertest.URL()}},
				Topology:    broker.Topology{Queue: q, QueueType: s.queueType, Declare: true},
				Handler:     handler.Noop(),
				Logger:      zap.NewNop(),
				Registerer:  reg,
				Prefetch:    s.prefetch,
				Concurrency: s.concurrency,
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
