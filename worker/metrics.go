package worker

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the worker's Prometheus series, all prefixed warren_.
type metrics struct {
	messages    [numOutcomes]prometheus.Counter
	duration    [numOutcomes]prometheus.Observer
	stale       prometheus.Counter
	retryCopies copyMetrics
	deadCopies  copyMetrics
	// handBackCopies count the copies that hand a message back untried
	// to a quorum queue while the circuit is open.
	handBackCopies copyMetrics
	inflight       prometheus.Gauge
	inflightBytes  prometheus.Gauge
	prefetch       prometheus.Gauge
	connected      prometheus.Gauge
	reconnects     prometheus.Counter
	consuming      prometheus.Gauge
	blocked        prometheus.Gauge
	// circuitOpen is 1 while the circuit breaker keeps messages in the
	// queue; circuitOpenings counts the times it opened.
	circuitOpen     prometheus.Gauge
	circuitOpenings prometheus.Counter
	brokerInfo      *prometheus.GaugeVec
	// rateLimitWait counts the seconds deliveries waited for their turn
	// under the rate limit.
	rateLimitWait prometheus.Counter
	// copyFailures counts copies the broker did not take, by reason.
	copyFailures *prometheus.CounterVec
	// replies counts the answers to requests with reply_to, by outcome.
	replies *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	messages := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "warren_messages_total",
		Help: "Messages settled, by outcome: ack (handled), retry (failed, copied to wait for another attempt), dead (failed for good, copied to the dead-letter queue), requeue (handed back untried: on shutdown, or beyond the byte budget), deferred (back before the time it was asked to wait for).",
	}, []string{"outcome"})
	duration := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "warren_handler_duration_seconds",
		Help:    "Time the handler took per message, by outcome.",
		Buckets: []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
	}, []string{"outcome"})
	retryCopies := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "warren_retry_publishes_total",
		Help: "Copies of failed messages published to a retry queue, by result: confirmed by the broker, or failed (the original was handed back).",
	}, []string{"result"})
	handBackCopies := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "warren_handback_publishes_total",
		Help: "Copies of messages handed back untried to the tail of a quorum queue while the circuit is open (a nack would count against the queue's delivery limit), by result: confirmed by the broker, or failed (the original was nacked after a delay).",
	}, []string{"result"})
	deadCopies := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "warren_dead_publishes_total",
		Help: "Copies of dead messages published to the dead-letter queue, by result: confirmed by the broker, or failed (the original was handed back).",
	}, []string{"result"})
	m := &metrics{
		retryCopies:    newCopyMetrics(retryCopies),
		deadCopies:     newCopyMetrics(deadCopies),
		handBackCopies: newCopyMetrics(handBackCopies),
		stale: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "warren_stale_settlements_total",
			Help: "Messages whose channel closed before they could be settled; the broker redelivers them.",
		}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "warren_inflight_messages",
			Help: "Messages handed to a handler and not yet settled.",
		}),
		inflightBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "warren_inflight_bytes",
			Help: "Bytes of the bodies of the messages warren holds: received and not yet settled. The adaptive window keeps them within WARREN_MAX_INFLIGHT_BYTES, but for one message larger than that.",
		}),
		prefetch: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "warren_prefetch",
			Help: "The QoS prefetch count of the consumer in force: the most unacked messages warren holds. Fixed by WARREN_PREFETCH; unset, sized by warren from the completion rate and the broker's round trip, up to WARREN_MAX_PREFETCH.",
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
		blocked: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "warren_blocked",
			Help: "1 while the broker blocks any of warren's connections (a memory or disk alarm: publishing stops), else 0.",
		}),
		circuitOpen: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "warren_circuit_open",
			Help: "1 while the circuit breaker is open: the downstream is down, messages wait in the queue and warren probes with one at a time, else 0.",
		}),
		circuitOpenings: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "warren_circuit_openings_total",
			Help: "Times the circuit breaker opened: WARREN_CIRCUIT_FAILURES failures meaning the downstream is down within WARREN_CIRCUIT_WINDOW.",
		}),
		rateLimitWait: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "warren_rate_limit_wait_seconds_total",
			Help: "Seconds deliveries waited, held in a handler's slot, for their turn under WARREN_RATE_LIMIT, summed over the slots: rising by about WARREN_CONCURRENCY a second when the limit, not the handlers, sets the pace.",
		}),
		brokerInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "warren_broker_info",
			Help: "1 for the broker node (host:port) warren is connected to, 0 for the one it last lost; other nodes have no series.",
		}, []string{"node"}),
		copyFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warren_copy_failures_total",
			Help: "Retry and dead copies the broker did not take, by reason: unroutable (one of warren's queues is gone; warren declares them again), refused (nacked: a queue at its length limit), channel_error (the broker closed the publishing channel: 403 ACCESS_REFUSED), unconfirmed (no confirm in time, or the connection went). Each original went back to the queue after a growing delay.",
		}, []string{"reason"}),
		replies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warren_replies_total",
			Help: "Replies to requests that carry reply_to, by outcome: confirmed (the broker took it; the request was acked), unroutable (no queue of that name: the requester is gone; dropped, the request acked), invalid (the handler's headers cannot be sent; dropped, the request acked), refused (nacked: the requester's queue at its length limit) and unconfirmed (no confirm in time, or the connection went): the request was handed back.",
		}, []string{"outcome"}),
	}
	for o := Outcome(0); o < numOutcomes; o++ {
		m.messages[o] = messages.WithLabelValues(o.String())
		m.duration[o] = duration.WithLabelValues(o.String())
	}
	for _, o := range []string{replyConfirmed, replyUnroutable, replyInvalid, replyRefused, replyUnconfirmed} {
		m.replies.WithLabelValues(o)
	}
	for _, c := range []prometheus.Collector{messages, duration, retryCopies, deadCopies, handBackCopies, m.stale, m.inflight, m.inflightBytes, m.prefetch, m.connected, m.reconnects, m.consuming, m.blocked, m.circuitOpen, m.circuitOpenings, m.rateLimitWait, m.brokerInfo, m.copyFailures, m.replies} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	return m, nil
}

// copyMetrics count the copies of one kind that were confirmed or failed.
type copyMetrics struct {
	confirmed, failed prometheus.Counter
}

func newCopyMetrics(v *prometheus.CounterVec) copyMetrics {
	return copyMetrics{confirmed: v.WithLabelValues("confirmed"), failed: v.WithLabelValues("failed")}
}

// setNode records the node, host:port, that warren is connected to (up)
// or has just lost (!up). One series only: a replica's node is a fact, and
// old nodes must not pile up as series.
func (m *metrics) setNode(node string, up bool) {
	m.brokerInfo.Reset()
	if node == "" {
		return
	}
	v := 0.0
	if up {
		v = 1
	}
	m.brokerInfo.WithLabelValues(node).Set(v)
}
