package bench

import (
	"errors"
	"fmt"
	"strconv"
	"time"
)

// FairOptions size the fairness scenario: replicas of warren at the
// adaptive prefetch, Concurrency handlers each, share Messages whose
// handler takes Work each.
type FairOptions struct {
	Replicas    int
	Concurrency int
	Messages    int
	Work        time.Duration
}

// Ideal is how long the messages take on every slot of the replicas,
// none idle.
func (o FairOptions) Ideal() time.Duration {
	slots := o.Replicas * o.Concurrency
	return time.Duration((o.Messages+slots-1)/slots) * o.Work
}

// Fairness is what the fairness scenario measured.
type Fairness struct {
	// AllDone is the time from the first publish to the last message
	// handled, by Replicas replicas started before.
	AllDone time.Duration
	// FirstTake is the time from the start of one more replica, once the
	// backlog is queued, to its first message.
	FirstTake time.Duration
	// Share is how many messages that replica handled, of Handled: those
	// that reached a handler from its first on.
	Share, Handled int
}

// Fair measures how warren shares slow work between replicas at its
// defaults: with the replicas running, the messages are published at
// once, and handled by srv's Slow URLs; then again, with one more replica
// started once they are queued.
func (e Env) Fair(srv *HTTPServer, o FairOptions) (Fairness, error) {
	var f Fairness
	took, err := e.fairRun(srv, o, false, &f)
	if err != nil {
		return f, err
	}
	f.AllDone = took
	_, err = e.fairRun(srv, o, true, &f)
	return f, err
}

// fairRun runs the replicas, publishes the messages and waits until all
// are handled, which it times; late: one more replica starts once they
// are queued, and what it did goes into f.
func (e Env) fairRun(srv *HTTPServer, o FairOptions, late bool, f *Fairness) (time.Duration, error) {
	q, err := e.Fill("fair", "classic", 0, 100)
	if err != nil {
		return 0, err
	}
	defer e.Delete(q, q+".dead")
	run := q // a unique prefix for the callers of this run
	start := func(i int) (*warrenProcess, error) {
		return e.startWarren(q, []string{"WARREN_HANDLER=http", "WARREN_HTTP_URL=" + srv.Slow(run+"-"+strconv.Itoa(i), o.Work),
			"WARREN_CONCURRENCY=" + strconv.Itoa(o.Concurrency), "WARREN_RETRY_DELAYS="})
	}
	var ws []*warrenProcess
	defer func() {
		for _, w := range ws {
			w.stop()
		}
	}()
	for i := range o.Replicas {
		w, err := start(i)
		if err != nil {
			return 0, err
		}
		ws = append(ws, w)
	}
	if err := waitFor(30*time.Second, "the replicas ready", func() (bool, error) {
		for _, w := range ws {
			if err := w.exitErr(); err != nil {
				return false, err
			}
			if !w.ready() {
				return false, nil
			}
		}
		return true, nil
	}); err != nil {
		return 0, err
	}
	handled := srv.Handled()
	began := time.Now()
	if err := e.PublishTo(q, o.Messages, 100); err != nil {
		return 0, err
	}
	var lateStart time.Time
	if late {
		lateStart = time.Now()
		w, err := start(o.Replicas)
		if err != nil {
			return 0, err
		}
		ws = append(ws, w)
	}
	var took time.Duration
	err = waitFor(time.Minute, "every message handled", func() (bool, error) {
		n, err := handled()
		took = time.Since(began)
		return n >= o.Messages, err
	})
	if err != nil || !late {
		return took, err
	}
	n, arrivals := srv.Caller(run + "-" + strconv.Itoa(o.Replicas))
	if len(arrivals) == 0 {
		return took, errors.New("fair: the late replica took no message")
	}
	first := arrivals[0]
	f.FirstTake, f.Share = first.Sub(lateStart), n
	// Its fair share is a quarter (with 3 others) of what started from
	// then on.
	for i := range o.Replicas + 1 {
		_, arr := srv.Caller(run + "-" + strconv.Itoa(i))
		for _, t := range arr {
			if !t.Before(first) {
				f.Handled++
			}
		}
	}
	return took, nil
}

// waitFor polls cond every pollEvery until it holds, fails, or timeout
// passes.
func waitFor(timeout time.Duration, what string, cond func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, err := cond()
		if err != nil || ok {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not within %v", what, timeout)
		}
		time.Sleep(pollEvery)
	}
}
