package warrentest

import (
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// DefaultStopTimeout is how long Process.Stop waits for a process to exit
// after SIGTERM, unless ProcessConfig says otherwise: well above the
// shutdown timeouts the suites give warren.
const DefaultStopTimeout = 45 * time.Second

// ProcessConfig describes a Process.
type ProcessConfig struct {
	// Name names the process in the test's messages.
	Name string
	// Binary is the program to run (warren, from Build) and Args its
	// arguments.
	Binary string
	Args   []string
	// Env is the process's environment on top of Env(GoRace);
	// WARREN_HEALTH_ADDR is set by NewProcess.
	Env    []string
	GoRace string
	// Seen, if set, collects what the process shows besides its output:
	// its /proc command line and environment, and the bodies of the
	// /readyz and /metrics it answers, for a test that looks for a secret
	// in all of them.
	Seen *Captures
	// StopTimeout bounds Stop; 0 means DefaultStopTimeout.
	StopTimeout time.Duration
}

// Process is one warren process, as a pod of a Deployment: it keeps its
// name, health address and output over its restarts. When the test ends
// it is killed if it still runs, and if the test failed, its last lines
// are logged.
type Process struct {
	Name   string
	Health string  // base URL of its health server, http://host:port
	Out    *Buffer // every run's output

	bin         string
	args        []string
	env         []string
	seen        *Captures
	stopTimeout time.Duration

	mu    sync.Mutex
	cmd   *exec.Cmd
	done  chan struct{}
	runs  int
	stops int // processes asked to stop that exited 0
}

// NewProcess prepares a process with a health address of its own; Start
// runs it.
func NewProcess(t testing.TB, c ProcessConfig) *Process {
	t.Helper()
	addr, err := FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	p := &Process{Name: c.Name, Health: "http://" + addr, Out: &Buffer{},
		bin: c.Binary, args: c.Args, seen: c.Seen, stopTimeout: c.StopTimeout,
		env: append(append(Env(c.GoRace), c.Env...), "WARREN_HEALTH_ADDR="+addr)}
	if p.stopTimeout == 0 {
		p.stopTimeout = DefaultStopTimeout
	}
	t.Cleanup(func() {
		p.mu.Lock()
		cmd, done := p.cmd, p.done
		p.mu.Unlock()
		if cmd != nil {
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("%s said:\n%s", p.Name, Tail(p.Out.String(), 60))
		}
	})
	return p
}

// Start runs the process; it fails the test if it already runs. Each run
// begins its output with a line "--- <name> run <n>".
func (p *Process) Start(t testing.TB) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		t.Fatalf("%s already runs", p.Name)
	}
	p.runs++
	fmt.Fprintf(p.Out, "--- %s run %d\n", p.Name, p.runs)
	cmd := exec.Command(p.bin, p.args...)
	cmd.Env = p.env
	cmd.Stdout, cmd.Stderr = p.Out, p.Out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", p.Name, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	p.cmd, p.done = cmd, done
	if p.seen != nil {
		for _, f := range []string{"cmdline", "environ"} {
			if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", cmd.Process.Pid, f)); err == nil {
				p.seen.Add(p.Name+" /proc/pid/"+f, string(b))
			}
		}
	}
}

// Pid returns the process id of the running process, 0 if none runs.
func (p *Process) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// Stop sends SIGTERM and waits for the process to exit; it fails the test
// unless the process exits 0 within the stop timeout. A process stuck
// past it gets SIGQUIT, so that a Go program prints its goroutines in the
// failure.
func (p *Process) Stop(t testing.TB) {
	t.Helper()
	p.keepMetrics()
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM %s: %v", p.Name, err)
	}
	select {
	case <-done:
	case <-time.After(p.stopTimeout):
		_ = cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
		}
		t.Fatalf("%s did not exit within %s of SIGTERM; its goroutines:\n%s", p.Name, p.stopTimeout, Tail(p.Out.String(), 400))
	}
	if code := cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("%s exited %d after SIGTERM, want 0", p.Name, code)
	} else {
		p.mu.Lock()
		p.stops++
		p.mu.Unlock()
	}
	p.mu.Lock()
	p.cmd, p.done = nil, nil
	p.mu.Unlock()
}

// Stops returns how many runs exited 0 when Stop asked them to.
func (p *Process) Stops() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stops
}

// Kill sends SIGKILL and waits for the process to be gone; it fails the
// test if none runs.
func (p *Process) Kill(t testing.TB) {
	t.Helper()
	p.keepMetrics()
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.cmd, p.done = nil, nil
	p.mu.Unlock()
	if cmd == nil {
		t.Fatalf("kill %s: not running", p.Name)
	}
	_ = cmd.Process.Kill()
	<-done
}

// Get returns the status and body of GET path on the process's health
// server, 0 if it does not answer.
func (p *Process) Get(path string) (int, string) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(p.Health + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// Ready reports whether /readyz answers 200.
func (p *Process) Ready() bool {
	code, _ := p.readyz()
	return code == http.StatusOK
}

// ReadyOrCircuitOpen reports whether /readyz answers 200, or 503 only
// because the circuit breaker is open: connected, holding messages back
// from an endpoint that is down and probing it.
func (p *Process) ReadyOrCircuitOpen() bool {
	code, body := p.readyz()
	return code == http.StatusOK || strings.HasPrefix(body, "not ready: circuit open: ")
}

// readyz returns /readyz's status and body, kept among what was seen.
func (p *Process) readyz() (int, string) {
	code, body := p.Get("/readyz")
	p.seen.Add(p.Name+" /readyz", body)
	return code, body
}

// Metrics returns the process's /metrics, "" if it does not answer 200.
func (p *Process) Metrics() string {
	code, body := p.Get("/metrics")
	if code != http.StatusOK {
		return ""
	}
	p.seen.Add(p.Name+" /metrics", body)
	return body
}

// keepMetrics gives Seen the last metrics of a process about to end.
func (p *Process) keepMetrics() {
	if p.seen != nil {
		p.Metrics()
	}
}

// Captures collects texts by where they were seen; safe for concurrent
// use. Its zero value is ready to use, and a nil *Captures drops what it
// is given.
type Captures struct {
	mu    sync.Mutex
	texts map[string]string
}

// Add appends text to what was seen at what.
func (c *Captures) Add(what, text string) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.texts == nil {
		c.texts = map[string]string{}
	}
	c.texts[what] += text
}

// Texts returns a copy of what was seen, by where.
func (c *Captures) Texts() map[string]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.texts)
}

// Tail returns the last lines of s, for a failure message.
func Tail(s string, lines int) string {
	parts := strings.Split(s, "\n")
	if len(parts) > lines {
		parts = parts[len(parts)-lines:]
	}
	return strings.Join(parts, "\n")
}

// RSS returns the resident set size of process pid, in bytes.
func RSS(t testing.TB, pid int) int64 {
	t.Helper()
	return procStatus(t, pid, "VmRSS")
}

// PeakRSS returns the largest resident set size process pid has had, in
// bytes: the kernel's high-water mark, which no sampling can miss.
func PeakRSS(t testing.TB, pid int) int64 {
	t.Helper()
	return procStatus(t, pid, "VmHWM")
}

// procStatus returns a field of /proc/<pid>/status given in kB, in bytes.
func procStatus(t testing.TB, pid int, field string) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("read /proc/%d/status: %v", pid, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatalf("%s %q: %v", field, v, err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}
