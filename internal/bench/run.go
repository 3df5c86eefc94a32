package bench

import (
	"context"
	"fmt"
	"io"
	"os/exec"
	"slices"
	"strconv"
	"text/tabwriter"
	"time"
)

// Options size a run.
type Options struct {
	Messages   int // per drain of the main comparison
	Tutorial   int // per drain of the prefetch-1 reference, which is slow
	Handler    int // per run of the HTTP and exec comparisons
	ExecN      int // per run of the exec comparison
	QueueTypes []string
	Rounds     int // of plain, warren, warren, plain per drain setting
}

// setting is one warren configuration of the drain comparison.
type setting struct{ prefetch, concurrency int }

var settings = []setting{{200, 4}, {200, 16}, {1000, 32}}

// Run measures everything and writes the table to out.
func Run(ctx context.Context, e Env, o Options, out io.Writer) error {
	tw := tabwriter.NewWriter(out, 1, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\tqueue\twarren msg/s\treference msg/s\tratio\twarren peak RSS\t")
	row := func(name, qt string, w, ref float64, rss int64) {
		r := "-"
		if ref > 0 {
			r = fmt.Sprintf("%.2fx", w/ref)
		}
		fmt.Fprintf(tw, "%s\t%s\t%.0f\t%.0f\t%s\t%s\t\n", name, qt, w, ref, r, mib(rss))
	}
	// ratioRow reports the median of the rounds' ratios, and their range:
	// each round's ratio compares runs made side by side, which drift in
	// the machine's load hits alike.
	ratioRow := func(name, qt string, w, ref float64, ratios []float64, rss int64) {
		lo, hi := slices.Min(ratios), slices.Max(ratios)
		fmt.Fprintf(tw, "%s\t%s\t%.0f\t%.0f\t%.2fx (%.2f-%.2f)\t%s\t\n", name, qt, w, ref, median(ratios), lo, hi, mib(rss))
	}
	for _, qt := range o.QueueTypes {
		// The reference of the noop drains: a plain consumer, prefetch 200,
		// acking multiple every 50. Each round runs plain, warren, warren,
		// plain, so that drift in the broker hits both alike.
		for _, s := range settings {
			var plain, warren []Result
			var ratios []float64
			for range o.Rounds {
				var p, w float64
				for _, who := range []string{"plain", "warren", "warren", "plain"} {
					r, err := e.drain(qt, o.Messages, who, s)
					if err != nil {
						return err
					}
					if who == "plain" {
						plain, p = append(plain, r), p+r.Rate
					} else {
						warren, w = append(warren, r), w+r.Rate
					}
				}
				ratios = append(ratios, w/p)
			}
			ratioRow(fmt.Sprintf("noop drain, prefetch %d, concurrency %d, vs plain (prefetch 200, ack every 50)", s.prefetch, s.concurrency),
				qt, Median(warren), Median(plain), ratios, MaxRSS(warren))
		}
		// The consumer users switch from: the pika tutorial's.
		var tut []Result
		for range 2 {
			q, err := e.Fill("tutorial", qt, o.Tutorial, 100)
			if err != nil {
				return err
			}
			r, err := e.PlainDrain(q, o.Tutorial, 1, 1)
			e.Delete(q)
			if err != nil {
				return err
			}
			tut = append(tut, r)
		}
		var wr []Result
		for range 2 {
			r, err := e.drain(qt, o.Messages, "warren", settings[1])
			if err != nil {
				return err
			}
			wr = append(wr, r)
		}
		row("noop drain, prefetch 200, concurrency 16, vs the tutorial (prefetch 1, ack each)", qt, Median(wr), Median(tut), MaxRSS(wr))
		tw.Flush()
	}

	// HTTP handler against a bare client loop, no broker in the loop.
	srv, err := StartHTTP()
	if err != nil {
		return err
	}
	defer srv.Close()
	q, err := e.Fill("http", "classic", o.Handler, 100)
	if err != nil {
		return err
	}
	wh, err := e.Warren(q, []string{"WARREN_HANDLER=http", "WARREN_HTTP_URL=" + srv.URL,
		"WARREN_PREFETCH=200", "WARREN_CONCURRENCY=16", "WARREN_RETRY_DELAYS="}, o.Handler, srv.Handled())
	e.Delete(q, q+".dead")
	if err != nil {
		return err
	}
	bare, err := BareHTTP(srv.URL, o.Handler, 100, 16)
	if err != nil {
		return err
	}
	row("http handler (local server, 204 at once), concurrency 16, vs a bare Go client loop", "classic", wh.Rate, bare.Rate, wh.PeakRSS)
	// The consumer a user would write instead: no broker-free shortcut.
	q, err = e.Fill("http", "classic", o.Handler, 100)
	if err != nil {
		return err
	}
	ph, err := e.PlainHTTP(q, srv.URL, o.Handler, 200, 16)
	e.Delete(q)
	if err != nil {
		return err
	}
	row("http handler, concurrency 16, vs a plain consumer posting each message (prefetch 200, 16 goroutines, ack each)", "classic", wh.Rate, ph.Rate, wh.PeakRSS)

	// Exec handler running cat >/dev/null (through sh: it redirects)
	// against amqp-consume running cat itself, with no shell: issue 13's
	// reference.
	if _, err := exec.LookPath("amqp-consume"); err == nil {
		const command = "cat >/dev/null"
		q, err := e.Fill("exec", "classic", o.ExecN, 100)
		if err != nil {
			return err
		}
		ac, err := e.AMQPConsume(q, o.ExecN, "cat")
		e.Delete(q)
		if err != nil {
			return err
		}
		q, err = e.Fill("exec", "classic", o.ExecN, 100)
		if err != nil {
			return err
		}
		we, err := e.drainWith(q, []string{"WARREN_HANDLER=exec", "WARREN_EXEC_COMMAND=" + command,
			"WARREN_PREFETCH=16", "WARREN_CONCURRENCY=4", "WARREN_RETRY_DELAYS="}, o.ExecN)
		e.Delete(q, q+".dead")
		if err != nil {
			return err
		}
		row("exec handler (cat >/dev/null), concurrency 4, vs amqp-consume running cat", "classic", we.Rate, ac.Rate, we.PeakRSS)
	} else {
		fmt.Fprintln(tw, "exec handler vs amqp-consume\t-\tskipped: amqp-consume not installed (Debian amqp-tools)\t\t\t\t")
	}

	// warren publish, persistent and confirmed.
	q, err = e.Fill("publish", "classic", 0, 100)
	if err != nil {
		return err
	}
	pub, err := e.Publish(q, o.Messages)
	e.Delete(q, q+".dead")
	if err != nil {
		return err
	}
	row("warren publish -count, confirmed, 100 B", "classic", pub.Rate, 0, 0)
	tw.Flush()

	// Latency at a steady rate well below capacity: publish to handler.
	fmt.Fprintln(out)
	lw := tabwriter.NewWriter(out, 1, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(lw, "latency at 1000 msg/s, publish to handler\tqueue\tp50\tp99\t")
	for _, qt := range o.QueueTypes {
		w, p, err := e.latency(ctx, qt, srv)
		if err != nil {
			return err
		}
		fmt.Fprintf(lw, "warren (http handler, prefetch 200, concurrency 16)\t%s\t%s\t%s\t\n", qt, Percentile(w, 50).Round(10*time.Microsecond), Percentile(w, 99).Round(10*time.Microsecond))
		fmt.Fprintf(lw, "plain consumer (prefetch 200, ack each)\t%s\t%s\t%s\t\n", qt, Percentile(p, 50).Round(10*time.Microsecond), Percentile(p, 99).Round(10*time.Microsecond))
	}
	return lw.Flush()
}

// drain fills a queue with n messages and drains it with who.
func (e Env) drain(qt string, n int, who string, s setting) (Result, error) {
	q, err := e.Fill(who, qt, n, 100)
	if err != nil {
		return Result{}, err
	}
	defer e.Delete(q, q+".dead")
	if who == "plain" {
		r, err := e.PlainDrain(q, n, 200, 50)
		e.logf("%s %s: %.0f msg/s", who, qt, r.Rate)
		return r, err
	}
	r, err := e.drainWith(q, []string{"WARREN_QUEUE_TYPE=" + qt, "WARREN_HANDLER=noop",
		"WARREN_PREFETCH=" + strconv.Itoa(s.prefetch), "WARREN_CONCURRENCY=" + strconv.Itoa(s.concurrency),
		"WARREN_RETRY_DELAYS="}, n)
	e.logf("warren %s prefetch %d concurrency %d: %.0f msg/s, peak RSS %s", qt, s.prefetch, s.concurrency, r.Rate, mib(r.PeakRSS))
	return r, err
}

// drainWith runs warren with env on q, filled with n messages, until it
// has drained it.
func (e Env) drainWith(q string, env []string, n int) (Result, error) {
	progress, stop, err := e.Drained(q, n)
	if err != nil {
		return Result{}, err
	}
	defer stop()
	return e.Warren(q, env, n, progress)
}

// latency runs warren and a plain consumer, one after the other, on a
// queue fed at a steady rate, and returns their latencies.
func (e Env) latency(ctx context.Context, qt string, srv *HTTPServer) (warren, plain []time.Duration, err error) {
	const rate, n = 1000, 5000
	q, err := e.Fill("latency", qt, 0, 100)
	if err != nil {
		return nil, nil, err
	}
	defer e.Delete(q, q+".dead")
	env := []string{"WARREN_QUEUE_TYPE=" + qt, "WARREN_HANDLER=http", "WARREN_HTTP_URL=" + srv.URL,
		"WARREN_PREFETCH=200", "WARREN_CONCURRENCY=16", "WARREN_RETRY_DELAYS="}
	srv.Latencies()
	handled := srv.Handled()
	errc := make(chan error, 1)
	go func() { errc <- e.Paced(ctx, q, rate, n) }()
	if _, err := e.Warren(q, env, n, handled); err != nil {
		<-errc
		return nil, nil, err
	}
	if err := <-errc; err != nil {
		return nil, nil, err
	}
	warren = srv.Latencies()

	type res struct {
		lat []time.Duration
		err error
	}
	pc := make(chan res, 1)
	go func() {
		l, err := e.PlainLatency(ctx, q, 200, n)
		pc <- res{l, err}
	}()
	err = e.Paced(ctx, q, rate, n)
	r := <-pc
	if err == nil {
		err = r.err
	}
	return warren, r.lat, err
}

func mib(b int64) string {
	if b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
}
