package worker

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the worker's Prometheus series, all prefixed warren_.
type metrics struct {
	messages   [numOutcomes]prometheus.Counter
	duration   [numOutcomes]prometheus.Observer
	stale      prometheus.Counter
	inflight   prometheus.Gauge
	connected  prometheus.Gauge
	reconnects prometheus.Counter
	consuming  prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	messages := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "warren_messages_total",
		Help: "Messages settled, by outcome: ack (handled), retry (failed, to be tried again), dead (failed for good), requeue (handed back untried).",
	}, []string{"outcome"})
	duration := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "warren_handler_duration_seconds",
		Help:    "Time the handler took per message, by outcome.",
		Buckets: []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
	}, []string{"outcome"})
	m := &metrics{
		stale: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "warren_stale_settlements_total",
			Help: "Messages whose channel closed before they could be settled; the broker redelivers them.",
		}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "warren_inflight_messages",
			Help: "Messages handed to a handler and not yet settled.",
		}),
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "warren_connected",
			Help: "1 while warren holds a connection to the broker, else 0.",
		}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "warren_reconnects_total",
			Help: "Connections and channels lost and opened again.",
		}),
		consuming: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "warren_consuming",
			Help: "1 while warren consumes its queue (ready), else 0.",
		}),
	}
	for o := Outcome(0); o < numOutcomes; o++ {
		m.messages[o] = messages.WithLabelValues(o.String())
		m.duration[o] = duration.WithLabelValues(o.String())
	}
	for _, c := range []prometheus.Collector{messages, duration, m.stale, m.inflight, m.connected, m.reconnects, m.consuming} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	return m, nil
}
