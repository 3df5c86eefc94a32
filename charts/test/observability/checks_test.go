package observability

import (
	"math"
	"testing"
)

// facts are what the scenario did, beside its constants.
type facts struct {
	pod          string  // the worker under test
	q            string  // its queue
	node         string  // host:port it connects to: the proxy
	copyFailures float64 // warren_copy_failures_total at the end, all reasons
	reconnects   float64 // warren_reconnects_total at the end
}

// panelChecks say, by panel title, what each panel of the dashboard must
// show after the scenario. A panel without a check fails the test: a new
// panel comes with the figures it must show.
var panelChecks = map[string]func(t *testing.T, r panelResult, f facts){
	"Replicas consuming": func(t *testing.T, r panelResult, _ facts) {
		wantLast(t, r, "", 1)
	},
	"Handled in range": func(t *testing.T, r panelResult, _ facts) {
		wantLast(t, r, "", oks+flakies+1+backlog+down+tail)
	},
	"Dead-lettered in range": func(t *testing.T, r panelResult, _ facts) {
		wantLast(t, r, "", poisons+1)
	},
	"Reconnects in range": func(t *testing.T, r panelResult, f facts) {
		if f.reconnects < 1 {
			t.Errorf("warren_reconnects_total = %v after the cut, want at least 1", f.reconnects)
		}
		wantLast(t, r, "", f.reconnects)
	},
	"Copy failures in range": func(t *testing.T, r panelResult, f facts) {
		if f.copyFailures < 1 {
			t.Errorf("warren_copy_failures_total = %v after the dead-letter queue was deleted, want at least 1", f.copyFailures)
		}
		wantLast(t, r, "", f.copyFailures)
	},
	"Blocked now": func(t *testing.T, r panelResult, _ facts) {
		wantLast(t, r, "", 0)
	},
	"Throughput by outcome": func(t *testing.T, r panelResult, _ facts) {
		for _, o := range []string{"ack", "retry", "dead"} {
			if m := r.legend(t, o).max(); m <= 0 {
				t.Errorf("%s rate peaks at %v, want above 0", o, m)
			}
		}
		// The original of the refused copy went back to the queue.
		if m := r.legend(t, "requeue").max(); m <= 0 {
			t.Errorf("requeue rate peaks at %v, want above 0: the refused copy's original", m)
		}
		if m := r.legend(t, "deferred").max(); m != 0 {
			t.Errorf("deferred rate peaks at %v, want 0", m)
		}
	},
	"Handler latency": func(t *testing.T, r panelResult, _ facts) {
		// The hung attempt ran until its 8 s timeout; the others took
		// about 20 ms.
		if m := r.legend(t, "p99").max(); m < 5 {
			t.Errorf("p99 peaks at %vs, want at least 5 s: the hung attempt", m)
		}
		if m := r.legend(t, "p50").min(); m > 0.1 {
			t.Errorf("p50 is never below %vs, want a minimum under 0.1 s", m)
		}
		p50, p99 := r.legend(t, "p50"), r.legend(t, "p99")
		for i := range p50.points {
			if i < len(p99.points) && p50.points[i].T == p99.points[i].T && p50.points[i].F > p99.points[i].F {
				t.Errorf("p50 %v above p99 %v at %d", p50.points[i].F, p99.points[i].F, p50.points[i].T)
				break
			}
		}
	},
	"In flight against prefetch": func(t *testing.T, r panelResult, f facts) {
		if m := r.legend(t, f.pod+" in flight").max(); m < 1 || m > prefetch {
			t.Errorf("in flight peaks at %v, want 1 to %d", m, prefetch)
		}
		p := r.legend(t, f.pod+" prefetch")
		if p.min() != prefetch || p.max() != prefetch {
			t.Errorf("prefetch from %v to %v, want %d throughout", p.min(), p.max(), prefetch)
		}
	},
	"Retries and dead letters": func(t *testing.T, r panelResult, _ facts) {
		for _, l := range []string{"retry confirmed", "dead confirmed"} {
			if m := r.legend(t, l).max(); m <= 0 {
				t.Errorf("%s peaks at %v, want above 0", l, m)
			}
		}
		if m := r.legend(t, "stale settlements").max(); m != 0 {
			t.Errorf("stale settlements peak at %v, want 0: the link was cut with nothing in flight", m)
		}
	},
	"Readiness of each replica": func(t *testing.T, r panelResult, f facts) {
		for _, l := range []string{" consuming", " connected"} {
			s := r.legend(t, f.pod+l)
			if s.min() != 0 || s.last() != 1 {
				t.Errorf("%s from %v, ends %v, want 0 during the cut and 1 at the end", l, s.min(), s.last())
			}
		}
		if m := r.legend(t, f.pod+" up").min(); m != 1 {
			t.Errorf("up falls to %v, want 1 throughout", m)
		}
	},
	"Reconnects and broker node": func(t *testing.T, r panelResult, f facts) {
		if m := r.legend(t, f.pod+" reconnects").max(); m <= 0 {
			t.Errorf("reconnects peak at %v, want above 0", m)
		}
		s := r.legend(t, f.pod+" on "+f.node)
		if s.min() != 0 || s.last() != 1 {
			t.Errorf("node %s from %v, ends %v, want 0 when lost and 1 at the end", f.node, s.min(), s.last())
		}
	},
	"Memory": func(t *testing.T, r panelResult, f facts) {
		if m := r.legend(t, f.pod+" resident").min(); m < 1<<20 {
			t.Errorf("resident memory down to %v bytes, want above 1 MiB", m)
		}
		if m := r.legend(t, f.pod+" heap in use").min(); m <= 0 {
			t.Errorf("heap in use down to %v, want above 0", m)
		}
	},
	"Copy failures and blocked": func(t *testing.T, r panelResult, f facts) {
		if got := r.legend(t, "unroutable since start").last(); got != f.copyFailures || got < 1 {
			t.Errorf("unroutable copies end at %v, want %v (at least 1)", got, f.copyFailures)
		}
		if m := r.legend(t, f.pod+" blocked").max(); m != 0 {
			t.Errorf("blocked peaks at %v, want 0", m)
		}
	},
	"Circuit breaker": func(t *testing.T, r panelResult, f facts) {
		open := r.legend(t, f.pod+" open")
		if open.max() != 1 || open.last() != 0 {
			t.Errorf("open peaks at %v, ends %v, want 1 while the endpoint was down and 0 at the end", open.max(), open.last())
		}
		if got := r.legend(t, f.pod+" openings since start").last(); got < 1 {
			t.Errorf("openings end at %v, want at least 1: the endpoint went down", got)
		}
	},
	"Rate limit wait": func(t *testing.T, r panelResult, f facts) {
		// 28 messages at once through 4 handlers at 50 a second: the
		// handlers wait for their turns, at most all 4 at a time.
		if m := r.legend(t, f.pod+" slots waiting").max(); m <= 0 || m > 4 {
			t.Errorf("slots waiting peak at %v, want above 0 and at most the 4 handlers", m)
		}
	},
	"Queue depth (RabbitMQ exporter)": func(t *testing.T, r panelResult, f facts) {
		ready := r.legend(t, f.q+" ready")
		if ready.max() < backlog || ready.last() != 0 {
			t.Errorf("%s ready peaks at %v, ends %v, want at least the %d of the backlog and 0 at the end; series: %v", f.q, ready.max(), ready.last(), backlog, r.byRef)
		}
		if m := r.legend(t, f.q+" unacked").max(); m < 1 {
			t.Errorf("%s unacked peaks at %v, want at least 1 (the hung message)", f.q, m)
		}
		// Only the message dead-lettered after the queue was deleted
		// and declared again is there.
		if got := r.legend(t, f.q+".dead ready").last(); got != 1 {
			t.Errorf("%s.dead ready ends at %v, want 1", f.q, got)
		}
	},
}

// wantLast checks the last value of the panel's series with legend
// (a stat panel's only one when legend is empty).
func wantLast(t *testing.T, r panelResult, legend string, want float64) {
	t.Helper()
	var s series
	if legend == "" {
		var all []series
		for _, ss := range r.byRef {
			all = append(all, ss...)
		}
		if len(all) != 1 {
			t.Fatalf("panel %q has %d series, want 1", r.Title, len(all))
		}
		s = all[0]
	} else {
		s = r.legend(t, legend)
	}
	if got := s.last(); math.Abs(got-want) > 1e-9 {
		t.Errorf("panel %q shows %v, want %v", r.Title, got, want)
	}
}
