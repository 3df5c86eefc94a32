package warrentest_test

import (
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/warren-mq/warren/internal/brokertest"
	"github.com/warren-mq/warren/internal/warrentest"
)

// childEnv, set, makes the test binary stand in for warren: see child.
const childEnv = "WARRENTEST_CHILD"

func TestMain(m *testing.M) {
	if how := os.Getenv(childEnv); how != "" {
		child(how)
		return
	}
	goleak.VerifyTestMain(m)
}

// child is a stand-in for warren, run by the tests of Process: it serves
// /readyz and /metrics on WARREN_HEALTH_ADDR, says which WARREN_
// variables it got, and on SIGTERM exits with the code WARRENTEST_EXIT
// names; with how "ignore-term" it ignores SIGTERM.
func child(how string) {
	var names []string
	for _, kv := range os.Environ() {
		if name, _, _ := strings.Cut(kv, "="); strings.HasPrefix(name, "WARREN_") {
			names = append(names, name)
		}
	}
	fmt.Printf("child up with %s\n", strings.Join(names, " "))
	term := make(chan os.Signal, 1)
	if how == "ignore-term" {
		signal.Ignore(syscall.SIGTERM)
	} else {
		signal.Notify(term, syscall.SIGTERM)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") })
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "warren_reconnects_total 3\n") })
	go func() { _ = http.ListenAndServe(os.Getenv("WARREN_HEALTH_ADDR"), mux) }()
	<-term
	code, _ := strconv.Atoi(os.Getenv("WARRENTEST_EXIT"))
	fmt.Printf("child exits %d\n", code)
	os.Exit(code)
}

// recorder stands in for a test whose failure is what a test expects: it
// records failures, logs and cleanups instead of passing them on.
type recorder struct {
	testing.TB // the real test, for what recorder does not record

	mu       sync.Mutex
	failures []string
	logs     []string
	cleanups []func()
}

func (r *recorder) Helper() {}

func (r *recorder) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.failures = append(r.failures, fmt.Sprintf(format, args...))
}

func (r *recorder) Fatalf(format string, args ...any) {
	r.Errorf(format, args...)
	runtime.Goexit()
}

func (r *recorder) Logf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.logs = append(r.logs, fmt.Sprintf(format, args...))
}

func (r *recorder) Failed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.failures) > 0
}

func (r *recorder) Cleanup(f func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cleanups = append(r.cleanups, f)
}

// record runs f as a test of its own, to its end (a Fatalf included), then
// its cleanups, last first, and returns what it recorded.
func record(t *testing.T, f func(tb testing.TB)) *recorder {
	r := &recorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		f(r)
	}()
	<-done
	for i := len(r.cleanups) - 1; i >= 0; i-- {
		r.cleanups[i]()
	}
	return r
}

func newChild(tb testing.TB, how string, exit int, seen *warrentest.Captures) *warrentest.Process {
	return warrentest.NewProcess(tb, warrentest.ProcessConfig{
		Name:        "child",
		Binary:      os.Args[0],
		Env:         []string{childEnv + "=" + how, "WARRENTEST_EXIT=" + strconv.Itoa(exit), "WARREN_GIVEN=1"},
		Seen:        seen,
		StopTimeout: 5 * time.Second,
	})
}

// TestProcessRunsStopsAndRestarts: a process gets only the WARREN_
// variables its test gives it and a health address of its own, keeps its
// output over its runs, shows what it showed to Seen, and stops on SIGTERM
// with exit 0.
func TestProcessRunsStopsAndRestarts(t *testing.T) {
	t.Setenv("WARREN_FROM_THE_TEST_ENV", "leaks")
	seen := &warrentest.Captures{}
	p := newChild(t, "serve", 0, seen)
	if p.Pid() != 0 {
		t.Errorf("Pid() = %d before Start, want 0", p.Pid())
	}
	for run := 1; run <= 2; run++ {
		p.Start(t)
		brokertest.WaitFor(t, 30*time.Second, "the child ready", p.Ready)
		if code, body := p.Get("/readyz"); code != http.StatusOK || body != "ok" {
			t.Errorf("Get(/readyz) = %d, %q; want 200, ok", code, body)
		}
		if got, want := p.Metrics(), "warren_reconnects_total 3\n"; got != want {
			t.Errorf("Metrics() = %q, want %q", got, want)
		}
		p.Stop(t)
		if p.Pid() != 0 {
			t.Errorf("Pid() = %d after Stop, want 0", p.Pid())
		}
		if got := p.Stops(); got != run {
			t.Errorf("Stops() = %d after %d runs, want %d", got, run, run)
		}
	}
	out := p.Out.String()
	for _, want := range []string{"--- child run 1\n", "--- child run 2\n", "child up with ", "WARREN_GIVEN", "WARREN_HEALTH_ADDR", "child exits 0"} {
		if !strings.Contains(out, want) {
			t.Errorf("the child's output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "WARREN_FROM_THE_TEST_ENV") {
		t.Errorf("the child got a WARREN_ variable of the test's own environment:\n%s", out)
	}
	texts := seen.Texts()
	for what, want := range map[string]string{
		"child /readyz":           "ok",
		"child /metrics":          "warren_reconnects_total",
		"child /proc/pid/environ": "WARREN_GIVEN=1",
		"child /proc/pid/cmdline": os.Args[0],
	} {
		if !strings.Contains(texts[what], want) {
			t.Errorf("Seen[%q] = %q, want it to hold %q", what, texts[what], want)
		}
	}

	p.Start(t)
	pid := p.Pid()
	p.Kill(t)
	if err := syscall.Kill(pid, 0); err == nil {
		t.Errorf("process %d still runs after Kill", pid)
	}
}

// TestProcessStopWantsExit0: a process that exits 3 on SIGTERM fails the
// test, which then shows the process's last lines.
func TestProcessStopWantsExit0(t *testing.T) {
	r := record(t, func(tb testing.TB) {
		p := newChild(tb, "serve", 3, nil)
		p.Start(tb)
		brokertest.WaitFor(t, 30*time.Second, "the child ready", p.Ready)
		p.Stop(tb)
		if p.Stops() != 0 {
			t.Errorf("Stops() = %d after an exit 3, want 0", p.Stops())
		}
	})
	if want := "child exited 3 after SIGTERM, want 0"; !slices.Contains(r.failures, want) {
		t.Errorf("failures = %q, want %q", r.failures, want)
	}
	if len(r.logs) != 1 || !strings.HasPrefix(r.logs[0], "child said:\n") || !strings.Contains(r.logs[0], "child exits 3") {
		t.Errorf("logs after the failure = %q, want the child's last lines", r.logs)
	}
}

// TestProcessStopHasADeadline: a process that ignores SIGTERM fails the
// test after StopTimeout, with its goroutines.
func TestProcessStopHasADeadline(t *testing.T) {
	start := time.Now()
	r := record(t, func(tb testing.TB) {
		p := newChild(tb, "ignore-term", 0, nil)
		p.Start(tb)
		brokertest.WaitFor(t, 30*time.Second, "the child ready", p.Ready)
		p.Stop(tb)
		t.Error("Stop returned after a process that ignores SIGTERM")
	})
	if len(r.failures) != 1 || !strings.HasPrefix(r.failures[0], "child did not exit within 5s of SIGTERM; its goroutines:") ||
		!strings.Contains(r.failures[0], "goroutine ") {
		t.Errorf("failures = %q, want one that says the child did not exit, with its goroutines", r.failures)
	}
	if took := time.Since(start); took > time.Minute {
		t.Errorf("Stop of a process that ignores SIGTERM took %s with StopTimeout 5s", took)
	}
}

func TestTail(t *testing.T) {
	tests := []struct {
		give  string
		lines int
		want  string
	}{
		{give: "a\nb\nc", lines: 2, want: "b\nc"},
		{give: "a\nb\nc", lines: 5, want: "a\nb\nc"},
		{give: "a\nb\nc\n", lines: 2, want: "c\n"},
		{give: "", lines: 3, want: ""},
	}
	for _, tt := range tests {
		if got := warrentest.Tail(tt.give, tt.lines); got != tt.want {
			t.Errorf("Tail(%q, %d) = %q, want %q", tt.give, tt.lines, got, tt.want)
		}
	}
}

func TestRSS(t *testing.T) {
	rss := warrentest.RSS(t, os.Getpid())
	if rss < 1<<20 {
		t.Errorf("RSS(this process) = %d bytes, want at least 1 MiB", rss)
	}
	if peak := warrentest.PeakRSS(t, os.Getpid()); peak < rss {
		t.Errorf("PeakRSS(this process) = %d bytes, want at least its RSS, %d", peak, rss)
	}
}
