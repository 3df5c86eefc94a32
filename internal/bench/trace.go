package bench

import (
	"fmt"

	"github.com/warren-mq/warren/internal/otlptest"
)

// PartTrace is the cost of tracing: the noop drain at defaults with
// tracing off and on, beside the plain consumer in the same rounds.
const PartTrace = "trace"

// traceRows writes the rows of the noop drain at defaults with tracing
// off, and on with every message sampled and exported over OTLP/HTTP to a
// sink in this process, each against the plain consumer of its round, and
// what tracing costs per message. Each round runs plain, off, on, on,
// off, plain, so that drift in the machine's load hits all three alike.
func (e Env) traceRows(t table, o Options) error {
	sink, err := otlptest.StartCounting()
	if err != nil {
		return err
	}
	defer sink.Close()
	on := []string{"OTEL_EXPORTER_OTLP_ENDPOINT=" + sink.Endpoint("http/protobuf"), "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf",
		"OTEL_TRACES_SAMPLER=always_on"}
	for _, qt := range o.QueueTypes {
		var (
			plain, off, traced      []Result
			offRatios, onRatios     []float64
			spansBefore, onMessages = sink.Count(), 0
		)
		for range o.Rounds {
			var rs [6]Result
			for i, run := range []struct {
				who string
				env []string
			}{{"plain", nil}, {"warren", nil}, {"warren", on}, {"warren", on}, {"warren", nil}, {"plain", nil}} {
				r, err := e.drainTraced(qt, o.Messages, run.who, run.env)
				if err != nil {
					return err
				}
				rs[i] = r
			}
			plain = append(plain, rs[0], rs[5])
			off = append(off, rs[1], rs[4])
			traced = append(traced, rs[2], rs[3])
			onMessages += 2 * o.Messages
			p := rs[0].Rate + rs[5].Rate
			offRatios = append(offRatios, (rs[1].Rate+rs[4].Rate)/p)
			onRatios = append(onRatios, (rs[2].Rate+rs[3].Rate)/p)
		}
		t.ratioRow("noop drain, "+defaults.name()+", tracing off, vs plain", qt, Median(off), Median(plain), offRatios, MaxRSS(off))
		t.ratioRow("noop drain, "+defaults.name()+", tracing on (always_on, OTLP/HTTP to a local sink), vs plain", qt, Median(traced), Median(plain), onRatios, MaxRSS(traced))
		// The wall time tracing adds to each message: what it costs a
		// drain that is bound by warren's own work.
		cost := (1/Median(traced) - 1/Median(off)) * 1e6
		spans := sink.Count() - spansBefore
		fmt.Fprintf(t.tw, "tracing on vs off: %.1f µs more per message; %d of %d spans reached the sink (the SDK drops what its full queue cannot take)\t%s\t%.0f\t%.0f\t%.2fx\t-\t\n",
			cost, spans, onMessages, qt, Median(traced), Median(off), Median(traced)/Median(off))
	}
	return nil
}

// drainTraced fills a queue with n messages and drains it with who:
// warren at defaults with env added, or the plain consumer.
func (e Env) drainTraced(qt string, n int, who string, env []string) (Result, error) {
	if who == "plain" {
		return e.drain(qt, n, who, defaults)
	}
	q, err := e.Fill(who, qt, n, 100)
	if err != nil {
		return Result{}, err
	}
	defer e.Delete(q, q+".dead")
	r, err := e.drainWith(q, append([]string{"WARREN_QUEUE_TYPE=" + qt, "WARREN_HANDLER=noop", "WARREN_RETRY_DELAYS="}, env...), n)
	e.logf("warren %s at defaults, tracing env %v: %.0f msg/s", qt, env, r.Rate)
	return r, err
}
