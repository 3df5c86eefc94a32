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

	"github.com/warren-mq/warren/internal/slowlink"
	"github.com/warren-mq/warren/worker"
)

// Options size a run.
type Options struct {
	Messages   int // per drain of the main comparison
	Tutorial   int // per drain of the prefetch-1 reference, which is slow
	Handler    int // per run of the HTTP and exec comparisons
	ExecN      int // per run of the exec comparison
	FairN      int // messages of the fairness scenario
	QueueTypes []string
	Only       []string // the parts to run (Part*); none: all
	Rounds     int      // of plain, warren, warren, plain per drain setting
}

// setting is one warren configuration of the drain comparison; 0 leaves
// a variable unset, to warren's default.
type setting struct{ prefetch, concurrency int }

// defaults is warren as a new user runs it: the adaptive prefetch and the
// default concurrency.
var defaults = setting{}

var settings = []setting{defaults, {200, 4}, {200, 16}, {1000, 32}}

// name says how warren was run.
func (s setting) name() string {
	if s == defaults {
		return "at defaults (adaptive prefetch, default concurrency)"
	}
	return fmt.Sprintf("prefetch %d, concurrency %d", s.prefetch, s.concurrency)
}

// env sets the variables of s.
func (s setting) env() []string {
	var env []string
	if s.prefetch > 0 {
		env = append(env, "WARREN_PREFETCH="+strconv.Itoa(s.prefetch))
	}
	if s.concurrency > 0 {
		env = append(env, "WARREN_CONCURRENCY="+strconv.Itoa(s.concurrency))
	}
	return env
}

// rounds runs ref, w, w, ref n times and returns the results and each
// round's ratio of w's rate to ref's: drift in the machine's load hits
// both alike.
func rounds(n int, ref, w func() (Result, error)) (refs, ws []Result, ratios []float64, err error) {
	for range n {
		var p, q float64
		for i, run := range []func() (Result, error){ref, w, w, ref} {
			r, err := run()
			if err != nil {
				return nil, nil, nil, err
			}
			if i == 0 || i == 3 {
				refs, p = append(refs, r), p+r.Rate
			} else {
				ws, q = append(ws, r), q+r.Rate
			}
		}
		ratios = append(ratios, q/p)
	}
	return refs, ws, ratios, nil
}

// Parts of a run, in their order: Options.Only picks some.
const (
	PartDrains   = "drains"   // the noop drains against the plain consumer and the tutorial's
	PartDefaults = "defaults" // of those, only at warren's defaults and at prefetch 200, concurrency 4, against the plain consumer
	PartLink     = "link"     // the drain at defaults against the tutorial's, over a link with a round trip like a network's
	PartHTTP     = "http"
	PartExec     = "exec"
	PartFair     = "fair"
	PartPublish  = "publish"
	PartLatency  = "latency"
)

var parts = []string{PartDrains, PartDefaults, PartLink, PartTrace, PartHTTP, PartExec, PartFair, PartPublish, PartLatency}

// Run measures the parts of o and writes the table to out.
func Run(ctx context.Context, e Env, o Options, out io.Writer) error {
	t := table{tabwriter.NewWriter(out, 1, 0, 2, ' ', tabwriter.AlignRight)}
	fmt.Fprintln(t.tw, "scenario\tqueue\twarren msg/s\treference msg/s\tratio\twarren peak RSS\t")
	srv, err := StartHTTP()
	if err != nil {
		return err
	}
	defer srv.Close()
	for _, part := range parts {
		if !o.runs(part) {
			continue
		}
		var err error
		switch part {
		case PartDrains:
			err = e.drains(t, o, settings, true)
		case PartDefaults:
			if !o.runs(PartDrains) {
				err = e.drains(t, o, settings[:2], false)
			}
		case PartLink:
			err = e.linkRows(t, o)
		case PartTrace:
			err = e.traceRows(t, o)
		case PartHTTP:
			err = e.httpRows(t, o, srv)
		case PartExec:
			err = e.execRows(t, o)
		case PartFair:
			err = e.fairRows(t, o, srv)
		case PartPublish:
			err = e.publishRow(t, o)
		case PartLatency:
			if err = t.tw.Flush(); err == nil {
				fmt.Fprintln(out)
				err = e.latencyTable(ctx, out, o, srv)
			}
		}
		if err != nil {
			return err
		}
		if err := t.tw.Flush(); err != nil {
			return err
		}
	}
	return nil
}

// runs reports whether the run includes part.
func (o Options) runs(part string) bool {
	return len(o.Only) == 0 || slices.Contains(o.Only, part)
}

// table is the benchmark's table.
type table struct{ tw *tabwriter.Writer }

// row writes a row of one measure each, and their ratio.
func (t table) row(name, qt string, w, ref float64, rss int64) {
	r := "-"
	if ref > 0 {
		r = fmt.Sprintf("%.2fx", w/ref)
	}
	fmt.Fprintf(t.tw, "%s\t%s\t%.0f\t%.0f\t%s\t%s\t\n", name, qt, w, ref, r, mib(rss))
}

// ratioRow reports the median of the rounds' ratios, and their range:
// each round's ratio compares runs made side by side, which drift in the
// machine's load hits alike.
func (t table) ratioRow(name, qt string, w, ref float64, ratios []float64, rss int64) {
	lo, hi := slices.Min(ratios), slices.Max(ratios)
	fmt.Fprintf(t.tw, "%s\t%s\t%.0f\t%.0f\t%.2fx (%.2f-%.2f)\t%s\t\n", name, qt, w, ref, median(ratios), lo, hi, mib(rss))
}

// drains writes the rows of the noop drains of each setting against the
// plain consumer, and with tutorial, against the tutorial's.
func (e Env) drains(t table, o Options, settings []setting, tutorial bool) error {
	for _, qt := range o.QueueTypes {
		// The reference of the noop drains: a plain consumer, prefetch 200,
		// acking multiple every 50. Each round runs plain, warren, warren,
		// plain, so that drift in the broker hits both alike.
		var atDefaults []Result
		plainOf := map[setting][]Result{}
		for _, s := range settings {
			plain, warren, ratios, err := rounds(o.Rounds,
				func() (Result, error) { return e.drain(qt, o.Messages, "plain", s) },
				func() (Result, error) { return e.drain(qt, o.Messages, "warren", s) })
			if err != nil {
				return err
			}
			if s == defaults {
				atDefaults = warren
			}
			plainOf[s] = plain
			t.ratioRow("noop drain, "+s.name()+", vs plain (prefetch 200, ack every 50)",
				qt, Median(warren), Median(plain), ratios, MaxRSS(warren))
		}
		if !tutorial {
			continue
		}
		// The consumer users switch from: the pika tutorial's.
		tut, err := e.tutorialRuns(qt, o.Tutorial, func(q string) (Result, error) { return e.PlainDrain(q, o.Tutorial, 1, 1) })
		if err != nil {
			return err
		}
		var wr []Result
		for range 2 {
			r, err := e.drain(qt, o.Messages, "warren", setting{200, 16})
			if err != nil {
				return err
			}
			wr = append(wr, r)
		}
		t.row("noop drain, prefetch 200, concurrency 16, vs the tutorial (prefetch 1, ack each)", qt, Median(wr), Median(tut), MaxRSS(wr))
		t.row("noop drain, "+defaults.name()+", vs the tutorial", qt, Median(atDefaults), Median(tut), MaxRSS(atDefaults))
		t.row("the plain consumer itself, vs the tutorial, the same run", qt, Median(plainOf[defaults]), Median(tut), 0)
		// The same loop as its users run it: the tutorial's worker.py,
		// in Python with pika.
		python := PikaPython()
		if python == "" {
			fmt.Fprintln(t.tw, "noop drain vs the pika tutorial's worker.py\t"+qt+"\tskipped: python3 with pika not installed (Debian python3-pika)\t\t\t\t")
			continue
		}
		pika, err := e.tutorialRuns(qt, o.Tutorial, func(q string) (Result, error) { return e.PikaTutorial(python, q, o.Tutorial) })
		if err != nil {
			return err
		}
		t.row("noop drain, "+defaults.name()+", vs the pika tutorial's worker.py (Python, prefetch 1, ack each)", qt, Median(atDefaults), Median(pika), MaxRSS(atDefaults))
		t.row("the same loop in Go (the tutorial row's reference), vs the pika tutorial's worker.py", qt, Median(tut), Median(pika), 0)
		if err := t.tw.Flush(); err != nil {
			return err
		}
	}
	return nil
}

// linkDelay is the least the link delays each way. A sleep that short
// takes about a millisecond when the process is idle (Go's timers wait
// in epoll, in milliseconds), so the tutorial's round trip is about
// 3 ms, as between zones; the row reports the one measured. On loopback
// it is about 0.1 ms.
const linkDelay = 200 * time.Microsecond

// linkRows writes the rows of the drains through a slow link: warren at its
// defaults and the plain consumer against the tutorial's consumer, all
// three paying the same round trip. Rounds run tutorial, warren, warren,
// tutorial; the tutorial drains a quarter as many messages, at a round
// trip each.
func (e Env) linkRows(t table, o Options) error {
	linkURL, closeLink, err := e.startLink()
	if err != nil {
		return err
	}
	defer closeLink()
	le := e
	le.URL = linkURL
	n := max(o.Tutorial/4, 1)
	for _, qt := range o.QueueTypes {
		tut, wr, ratios, err := rounds(o.Rounds,
			func() (Result, error) {
				q, err := le.Fill("link-tutorial", qt, n, 100)
				if err != nil {
					return Result{}, err
				}
				defer le.Delete(q)
				return le.PlainDrain(q, n, 1, 1)
			},
			func() (Result, error) { return le.drain(qt, o.Messages, "warren", defaults) })
		if err != nil {
			return err
		}
		var plain []Result
		for range 2 {
			r, err := le.drain(qt, o.Messages, "plain", defaults)
			if err != nil {
				return err
			}
			plain = append(plain, r)
		}
		rtt := time.Duration(float64(time.Second) / Median(tut))
		name := fmt.Sprintf("over a link of %v each way (the tutorial's round trip: %v)", linkDelay, rtt.Round(10*time.Microsecond))
		t.ratioRow("noop drain, "+defaults.name()+", vs the tutorial (prefetch 1, ack each), "+name, qt, Median(wr), Median(tut), ratios, MaxRSS(wr))
		t.row("the plain consumer (prefetch 200, ack every 50), vs the tutorial, the same link", qt, Median(plain), Median(tut), 0)
		if err := t.tw.Flush(); err != nil {
			return err
		}
	}
	return nil
}

// startLink starts the link of the link part, in a process of its own
// when e.LinkCommand says how: in the benchmark's process the link
// would hand the plain consumer and the tutorial their bytes on the
// scheduler they run on, and warren, a process apart, its bytes through
// the kernel.
func (e Env) startLink() (url string, closeLink func(), err error) {
	if len(e.LinkCommand) == 0 {
		l, err := slowlink.Start(e.URL, linkDelay)
		if err != nil {
			return "", nil, err
		}
		return l.URL(), l.Close, nil
	}
	args := append(e.LinkCommand[1:len(e.LinkCommand):len(e.LinkCommand)], "-broker", e.URL, "-delay", linkDelay.String())
	p, err := slowlink.StartProcess(e.LinkCommand[0], args...)
	if err != nil {
		return "", nil, err
	}
	return p.URL(), p.Close, nil
}

// tutorialRuns runs consume twice, each time on a queue of type qt filled
// with n messages: the tutorial's consumers are slow, and two runs of
// them are what a row has.
func (e Env) tutorialRuns(qt string, n int, consume func(q string) (Result, error)) ([]Result, error) {
	var rs []Result
	for range 2 {
		q, err := e.Fill("tutorial", qt, n, 100)
		if err != nil {
			return nil, err
		}
		r, err := consume(q)
		e.Delete(q)
		if err != nil {
			return nil, err
		}
		rs = append(rs, r)
	}
	return rs, nil
}

// httpRows writes the rows of the HTTP handler.
func (e Env) httpRows(t table, o Options, srv *HTTPServer) error {
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
	t.row("http handler (local server, 204 at once), concurrency 16, vs a bare Go client loop", "classic", wh.Rate, bare.Rate, wh.PeakRSS)
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
	t.row("http handler, concurrency 16, vs a plain consumer posting each message (prefetch 200, 16 goroutines, ack each)", "classic", wh.Rate, ph.Rate, wh.PeakRSS)
	return nil
}

// execRows writes the row of the exec handler at defaults running
// cat >/dev/null (without sh: warren sets the redirection up) against
// amqp-consume running cat itself, with no shell: issue 13's reference.
func (e Env) execRows(t table, o Options) error {
	if _, err := exec.LookPath("amqp-consume"); err != nil {
		fmt.Fprintln(t.tw, "exec handler vs amqp-consume\t-\tskipped: amqp-consume not installed (Debian amqp-tools)\t\t\t\t")
		return nil
	}
	const command = "cat >/dev/null"
	ac, we, ratios, err := rounds(o.Rounds,
		func() (Result, error) {
			q, err := e.Fill("exec", "classic", o.ExecN, 100)
			if err != nil {
				return Result{}, err
			}
			defer e.Delete(q)
			return e.AMQPConsume(q, o.ExecN, "cat")
		},
		func() (Result, error) {
			q, err := e.Fill("exec", "classic", o.ExecN, 100)
			if err != nil {
				return Result{}, err
			}
			defer e.Delete(q, q+".dead")
			return e.drainWith(q, []string{"WARREN_HANDLER=exec", "WARREN_EXEC_COMMAND=" + command, "WARREN_RETRY_DELAYS="}, o.ExecN)
		})
	if err != nil {
		return err
	}
	t.ratioRow("exec handler ("+command+") at defaults, vs amqp-consume running cat", "classic", Median(we), Median(ac), ratios, MaxRSS(we))
	// What the machine gives: amqp-consume starts one command at a time,
	// warren as many as its default concurrency, and process starts need
	// not scale with the CPUs as CPU-bound work does.
	one, side, ratios, err := rounds(o.Rounds,
		func() (Result, error) { return BareExec(o.ExecN, 100, 1, "cat") },
		func() (Result, error) { return BareExec(o.ExecN, 100, worker.DefaultConcurrency, "cat") })
	if err != nil {
		return fmt.Errorf("bare exec: %w", err)
	}
	t.ratioRow(fmt.Sprintf("cat started by a bare Go loop (no broker), %d at a time, vs one at a time: what commands side by side gain here", worker.DefaultConcurrency), "-", Median(side), Median(one), ratios, 0)
	return nil
}

// fairRows writes the rows of the fairness scenario: replicas share a
// backlog of slow work, and one started late takes its part.
func (e Env) fairRows(t table, o Options, srv *HTTPServer) error {
	fo := FairOptions{Replicas: 3, Concurrency: 4, Messages: o.FairN, Work: 500 * time.Millisecond}
	f, err := e.Fair(srv, fo)
	if err != nil {
		return err
	}
	fmt.Fprintf(t.tw, "fair share at adaptive prefetch: %d replicas x concurrency %d, %d messages of %v: all done in %.2f s, ideal %.2f s\tclassic\t-\t-\t%.2fx the ideal\t-\t\n",
		fo.Replicas, fo.Concurrency, fo.Messages, fo.Work, f.AllDone.Seconds(), fo.Ideal().Seconds(), f.AllDone.Seconds()/fo.Ideal().Seconds())
	fmt.Fprintf(t.tw, "fair share: a replica more started once they are queued: its first message after %.2f s; it did %d of the %d handled from then (fair: %.0f)\tclassic\t-\t-\t-\t-\t\n",
		f.FirstTake.Seconds(), f.Share, f.Handled, float64(f.Handled)/float64(fo.Replicas+1))
	return nil
}

// publishRow writes the row of warren publish, persistent and confirmed.
func (e Env) publishRow(t table, o Options) error {
	q, err := e.Fill("publish", "classic", 0, 100)
	if err != nil {
		return err
	}
	pub, err := e.Publish(q, o.Messages)
	e.Delete(q, q+".dead")
	if err != nil {
		return err
	}
	t.row("warren publish -count, confirmed, 100 B", "classic", pub.Rate, 0, 0)
	return nil
}

// latencyTable writes the latencies at a steady rate well below capacity,
// publish to handler.
func (e Env) latencyTable(ctx context.Context, out io.Writer, o Options, srv *HTTPServer) error {
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
	r, err := e.drainWith(q, append([]string{"WARREN_QUEUE_TYPE=" + qt, "WARREN_HANDLER=noop", "WARREN_RETRY_DELAYS="}, s.env()...), n)
	e.logf("warren %s %s: %.0f msg/s, peak RSS %s", qt, s.name(), r.Rate, mib(r.PeakRSS))
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
