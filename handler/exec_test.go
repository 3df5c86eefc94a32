package handler

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/warren-mq/warren/internal/brokertest"
	"github.com/warren-mq/warren/worker"
)

// verifyNoLeaks checks, once the test and its cleanups are done, that no
// goroutine outlived it. Call it first, so that its cleanup runs last.
func verifyNoLeaks(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
}

// execEnv is the environment the commands of these tests start from.
func execEnv(kv ...string) []string {
	return append([]string{"PATH=" + os.Getenv("PATH")}, kv...)
}

func newExec(t *testing.T, command string, kv ...string) (*Exec, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	return &Exec{Command: command, Env: execEnv(kv...), Logger: zap.New(core)}, logs
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read what the command wrote: %v", err)
	}
	return string(b)
}

func TestExecPassesBodyOnStdin(t *testing.T) {
	verifyNoLeaks(t)
	all := make([]byte, 256)
	for i := range all {
		all[i] = byte(i)
	}
	for _, tt := range []struct {
		name string
		give []byte
	}{
		{"text", []byte("hello, world\n")},
		{"empty", nil},
		{"no newline", []byte("last line")},
		{"every byte", all},
		{"1 MiB", bytes.Repeat([]byte("0123456789abcdef"), 1<<16)},
		{"5 MiB", bytes.Repeat([]byte("0123456789abcdef"), 5<<16)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			// A directory whose name is a plain word, for the command
			// without the shell.
			dir, err := os.MkdirTemp("", "warren-exec-")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(dir) })
			shell, plain := filepath.Join(dir, "shell"), filepath.Join(dir, "plain")
			for _, c := range []struct{ command, out string }{
				{`cat > "$OUT_FILE"`, shell},
				{"tee " + plain, plain},
			} {
				command, out := c.command, c.out
				e, _ := newExec(t, command, "OUT_FILE="+out)
				if err := e.Handle(context.Background(), &worker.Message{Body: tt.give}); err != nil {
					t.Fatalf("Handle(%q, %d bytes) = %v, want nil", command, len(tt.give), err)
				}
				if got := readFile(t, out); got != string(tt.give) {
					t.Errorf("%q read %d bytes %.40q, want the %d bytes of the body %.40q", command, len(got), got, len(tt.give), tt.give)
				}
			}
		})
	}
}

func TestExecExitCodes(t *testing.T) {
	verifyNoLeaks(t)
	for _, tt := range []struct {
		give     string
		dead     []int
		want     worker.Outcome
		wantText string
	}{
		{"exit 0", []int{3}, worker.Ack, ""},
		{"true", nil, worker.Ack, ""},
		{"exit 3", []int{3}, worker.Dead, "command exited with dead code 3"},
		{"exit 75", []int{3, 75}, worker.Dead, "command exited with dead code 75"},
		{"exit 4", []int{3}, worker.Retry, "command exited with code 4"},
		{"exit 3", nil, worker.Retry, "command exited with code 3"},
		{"exit 1", []int{3}, worker.Retry, "command exited with code 1"},
		{"/nonexistent/command", []int{3}, worker.Retry, "command exited with code 127"},
		{"kill -9 $$", []int{3}, worker.Retry, "command killed: signal: killed"},
		{"kill -TERM $$", []int{3}, worker.Retry, "command killed: signal: terminated"},
	} {
		e, _ := newExec(t, tt.give)
		e.DeadExitCodes = tt.dead
		err := e.Handle(context.Background(), &worker.Message{Body: []byte("x")})
		if got := worker.OutcomeOf(err); got != tt.want {
			t.Errorf("Handle(%q) with dead codes %v = %v (%v), want %v", tt.give, tt.dead, err, got, tt.want)
		}
		if err != nil && err.Error() != tt.wantText {
			t.Errorf("Handle(%q) with dead codes %v = %q, want %q", tt.give, tt.dead, err, tt.wantText)
		}
	}
}

// TestExecNilEnv: a nil Env gives the command only the message's
// variables, not warren's environment.
func TestExecNilEnv(t *testing.T) {
	verifyNoLeaks(t)
	t.Setenv("WARREN_TEST_INHERITED", "leaked")
	out := filepath.Join(t.TempDir(), "env")
	e := &Exec{Command: "env > '" + out + "'", Logger: zap.NewNop()}
	if err := e.Handle(context.Background(), &worker.Message{MessageID: "m-1"}); err != nil {
		t.Fatalf("Handle(env) with a nil Env = %v, want nil", err)
	}
	got := readFile(t, out)
	if strings.Contains(got, "WARREN_TEST_INHERITED") || !strings.Contains(got, "WARREN_MESSAGE_ID=m-1") {
		t.Errorf("command with a nil Env saw:\n%s\nwant the message's variables and nothing of warren's", got)
	}
}

// envOf runs env for m and returns the variables the command saw.
func envOf(t *testing.T, e *Exec, m *worker.Message) map[string]string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "env")
	e.Command = `env > "$OUT_FILE"`
	e.Env = append(slices.Clip(e.Env), "OUT_FILE="+out)
	if err := e.Handle(context.Background(), m); err != nil {
		t.Fatalf("Handle(env) = %v, want nil", err)
	}
	vars := map[string]string{}
	for _, line := range strings.Split(readFile(t, out), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			vars[k] = v
		}
	}
	return vars
}

func TestExecEnvironment(t *testing.T) {
	verifyNoLeaks(t)
	ts := time.Date(2025, 3, 1, 12, 0, 0, 0, time.FixedZone("CET", 3600))
	e, _ := newExec(t, "", "WARREN_EXCHANGE=from-the-config", "KEEP=me")
	got := envOf(t, e, &worker.Message{
		Body:          []byte("{}"),
		MessageID:     "m-1",
		CorrelationID: "c-1",
		ContentType:   "application/json",
		Exchange:      "orders",
		RoutingKey:    "orders.created",
		Redelivered:   true,
		Headers: amqp.Table{
			"x-tenant":   "acme",
			"Trace.Id":   "abc 123",
			"attempts":   int32(3),
			"big":        int64(1) << 40,
			"urgent":     true,
			"ratio":      1.5,
			"raw":        []byte("bytes"),
			"sent":       ts,
			"price":      amqp.Decimal{Scale: 2, Value: 1999},
			"x-death-ün": "x",
		},
	})
	for _, tt := range []struct {
		give string
		want string
	}{
		{"WARREN_MESSAGE_ID", "m-1"},
		{"WARREN_CORRELATION_ID", "c-1"},
		{"WARREN_CONTENT_TYPE", "application/json"},
		{"WARREN_EXCHANGE", "orders"}, // the message's, not warren's own variable
		{"WARREN_ROUTING_KEY", "orders.created"},
		{"WARREN_REDELIVERED", "true"},
		{"WARREN_HEADER_X_TENANT", "acme"},
		{"WARREN_HEADER_TRACE_ID", "abc 123"},
		{"WARREN_HEADER_ATTEMPTS", "3"},
		{"WARREN_HEADER_BIG", "1099511627776"},
		{"WARREN_HEADER_URGENT", "true"},
		{"WARREN_HEADER_RATIO", "1.5"},
		{"WARREN_HEADER_RAW", "bytes"},
		{"WARREN_HEADER_SENT", "2025-03-01T11:00:00Z"},
		{"WARREN_HEADER_PRICE", "1999e-2"},
		{"WARREN_HEADER_X_DEATH__N", "x"}, // ü is two bytes, one rune: one underscore
		{"KEEP", "me"},
	} {
		if v, ok := got[tt.give]; !ok || v != tt.want {
			t.Errorf("command saw %s=%q (set: %v), want %q", tt.give, v, ok, tt.want)
		}
	}

	got = envOf(t, e, &worker.Message{})
	if got["WARREN_REDELIVERED"] != "false" {
		t.Errorf("command saw WARREN_REDELIVERED=%q for a first delivery, want false", got["WARREN_REDELIVERED"])
	}
}

// TestExecEnvironmentWithNUL: AMQP strings and byte arrays may hold NUL,
// which no environment variable can. Such a message must still run, not
// fail to start on every delivery.
func TestExecEnvironmentWithNUL(t *testing.T) {
	verifyNoLeaks(t)
	e, _ := newExec(t, "")
	got := envOf(t, e, &worker.Message{
		MessageID: "m\x00-1",
		Headers:   amqp.Table{"bin": []byte{'a', 0, 'b'}},
	})
	if got["WARREN_MESSAGE_ID"] != "m-1" || got["WARREN_HEADER_BIN"] != "ab" {
		t.Errorf("command saw WARREN_MESSAGE_ID=%q, WARREN_HEADER_BIN=%q, want m-1 and ab, without the NULs",
			got["WARREN_MESSAGE_ID"], got["WARREN_HEADER_BIN"])
	}
}

func TestExecEnv(t *testing.T) {
	warren := []string{
		"PATH=/bin", "HOME=/root", "LANG=C.UTF-8", "LC_ALL=C", "TZ=UTC", "TMPDIR=/tmp",
		"WARREN_AMQP_URL=amqp://u:secret@h/", "WARREN_AMQP_URL_FILE=/run/secrets/url",
		"WARREN_TLS_CA_FILE=/run/tls/ca.pem", "WARREN_TLS_KEY_FILE=/run/tls/key.pem", "WARREN_QUEUE=q",
		"DATABASE_PASSWORD=hunter2", "AWS_SECRET_ACCESS_KEY=x", "KUBERNETES_SERVICE_HOST=10.0.0.1",
		"API_TOKEN=t0ken", "MY_WARREN_AMQP_URL=x", "NOEQUALS",
	}
	base := []string{"PATH=/bin", "HOME=/root", "LANG=C.UTF-8", "LC_ALL=C", "TZ=UTC", "TMPDIR=/tmp"}
	for _, tt := range []struct {
		name string
		give []string // names passed on
		want []string
	}{
		{"nothing to pass", nil, base},
		{"a name passed", []string{"API_TOKEN"}, append(slices.Clone(base), "API_TOKEN=t0ken")},
		{"names passed in any order", []string{"MY_WARREN_AMQP_URL", "API_TOKEN"}, append(slices.Clone(base), "API_TOKEN=t0ken", "MY_WARREN_AMQP_URL=x")},
		{"warren's own never", []string{"WARREN_AMQP_URL", "WARREN_TLS_KEY_FILE", "WARREN_QUEUE"}, base},
		{"a missing name", []string{"ABSENT"}, base},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := slices.Clone(warren)
			if got := ExecEnv(warren, tt.give); !slices.Equal(got, tt.want) {
				t.Errorf("ExecEnv(warren's environment, %q) = %q, want %q", tt.give, got, tt.want)
			}
			if !slices.Equal(warren, before) {
				t.Errorf("ExecEnv changed its argument to %q", warren)
			}
		})
	}
	if got := ExecEnv(nil, []string{"PATH"}); got != nil {
		t.Errorf("ExecEnv(nil) = %q, want nil", got)
	}
}

// TestExecSecretsDoNotReachCommand runs a command the way warren does, with
// the broker URL, TLS files and another program's secret in its own
// environment.
func TestExecSecretsDoNotReachCommand(t *testing.T) {
	verifyNoLeaks(t)
	t.Setenv("WARREN_AMQP_URL", "amqp://u:s3cret@h/")
	t.Setenv("WARREN_AMQP_URL_FILE", "/run/secrets/url")
	t.Setenv("WARREN_TLS_KEY_FILE", "/run/tls/s3cret-key.pem")
	t.Setenv("WARREN_EXEC_ENV", "PASSED_ON")
	t.Setenv("PASSED_ON", "yes")
	t.Setenv("SIDECAR_TOKEN", "s3cret-token")
	e, _ := newExec(t, "")
	e.Env = ExecEnv(os.Environ(), []string{"PASSED_ON"})
	got := envOf(t, e, &worker.Message{MessageID: "m-1"})
	for k, v := range got {
		if strings.Contains(v, "s3cret") || k == "SIDECAR_TOKEN" || k == "WARREN_EXEC_ENV" {
			t.Errorf("command saw %s=%q, want it kept from the command", k, v)
		}
		if strings.HasPrefix(k, "WARREN_") && !strings.HasPrefix(k, "WARREN_HEADER_") && !slices.Contains(messageVars, k) {
			t.Errorf("command saw %s=%q, want only the message's WARREN_* variables", k, v)
		}
	}
	for _, name := range []string{"PATH", "PASSED_ON"} {
		if got[name] != os.Getenv(name) {
			t.Errorf("command saw %s=%q, want %q", name, got[name], os.Getenv(name))
		}
	}
	if got["WARREN_MESSAGE_ID"] != "m-1" {
		t.Errorf("command saw WARREN_MESSAGE_ID=%q, want m-1", got["WARREN_MESSAGE_ID"])
	}
}

// messageVars are the variables that describe a message to a command,
// besides one WARREN_HEADER_* per header.
var messageVars = []string{"WARREN_MESSAGE_ID", "WARREN_CORRELATION_ID", "WARREN_CONTENT_TYPE",
	"WARREN_EXCHANGE", "WARREN_ROUTING_KEY", "WARREN_REDELIVERED", "WARREN_ATTEMPT"}

// processGone reports whether pid has exited: no such process, or a
// zombie nobody reaped yet, or the pid now belongs to another program.
func processGone(pid int, comm string) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return true
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// pid (comm) state ...
	open, end := bytes.IndexByte(stat, '('), bytes.LastIndexByte(stat, ')')
	if open < 0 || end < 0 || end+2 >= len(stat) {
		return false
	}
	if string(stat[open+1:end]) != comm {
		return true
	}
	state := stat[end+2]
	return state == 'Z' || state == 'X'
}

// readPID waits for the command to write a pid to path.
func readPID(t *testing.T, path string) int {
	t.Helper()
	var pid int
	brokertest.WaitFor(t, 10*time.Second, "the command to write "+path, func() bool {
		b, _ := os.ReadFile(path)
		n, err := strconv.Atoi(strings.TrimSpace(string(b)))
		pid = n
		return err == nil && n > 0
	})
	return pid
}

// TestExecStops covers how a command ends when it runs too long or leaves
// processes behind.
func TestExecStops(t *testing.T) {
	verifyNoLeaks(t)
	const grace = time.Second
	cases := []struct {
		name    string
		command string
		body    []byte
		timeout time.Duration
		// wantErr: the handler retries because it was stopped; otherwise
		// it acks.
		wantErr bool
		min     time.Duration // Handle takes at least this long
		max     time.Duration // and returns within this
		// survivor: the process is in a session of its own, beyond reach;
		// the test kills it.
		survivor bool
	}{
		{
			name:    "timeout kills the process group",
			command: `sleep 300 & echo $! > "$PIDFILE"; wait`,
			timeout: 300 * time.Millisecond, wantErr: true,
			max: 5 * time.Second,
		},
		{
			name:    "SIGTERM ignored: SIGKILL after the grace",
			command: `trap '' TERM; sleep 300 & echo $! > "$PIDFILE"; wait`,
			timeout: 300 * time.Millisecond, wantErr: true,
			min: grace, max: grace + 5*time.Second,
		},
		{
			name:    "background job killed when the command exits",
			command: `sleep 300 & echo $! > "$PIDFILE"; exit 0`,
			timeout: 30 * time.Second,
			max:     grace + 5*time.Second,
		},
		{
			name:    "background job in another session does not hang the handler",
			command: `setsid sleep 300 & echo $! > "$PIDFILE"`,
			timeout: 30 * time.Second,
			max:     grace + 5*time.Second, survivor: true,
		},
		{
			name: "background job in another session holding stdin does not hang the handler",
			// An asynchronous job's stdin is /dev/null unless it is
			// handed the command's through another descriptor.
			command: `exec 3<&0; setsid sleep 300 <&3 3<&- >/dev/null 2>&1 & echo $! > "$PIDFILE"`,
			body:    bytes.Repeat([]byte("x"), 5<<20),
			timeout: 30 * time.Second,
			max:     grace + 5*time.Second, survivor: true,
		},
		{
			name:    "background job in another session, timeout",
			command: `setsid sleep 300 & echo $! > "$PIDFILE"; wait`,
			timeout: 300 * time.Millisecond, wantErr: true,
			max: 2*grace + 5*time.Second, survivor: true,
		},
	}
	// The cases wait for timers of several seconds: start them all at
	// once, then judge each.
	type result struct {
		err  error
		took time.Duration
	}
	dones := make([]chan result, len(cases))
	pidFiles := make([]string, len(cases))
	for i, tt := range cases {
		pidFiles[i] = filepath.Join(t.TempDir(), "pid")
		e, _ := newExec(t, tt.command, "PIDFILE="+pidFiles[i])
		e.Grace = grace
		ctx, cancel := context.WithTimeout(context.Background(), tt.timeout)
		t.Cleanup(cancel)
		dones[i] = make(chan result, 1)
		go func() {
			begin := time.Now()
			err := e.Handle(ctx, &worker.Message{MessageID: "slow", Body: tt.body})
			dones[i] <- result{err, time.Since(begin)}
		}()
	}
	for i, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			pid := readPID(t, pidFiles[i])
			returned := false
			t.Cleanup(func() {
				if !processGone(pid, "sleep") {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
				if !returned {
					<-dones[i] // Handle returns once nothing holds the command's output
				}
			})
			var r result
			select {
			case r = <-dones[i]:
				returned = true
			case <-time.After(tt.max + 10*time.Second):
				t.Fatalf("Handle(%q) with a %v timeout did not return within %v", tt.command, tt.timeout, tt.max+10*time.Second)
			}
			if r.took < tt.min || r.took > tt.max {
				t.Errorf("Handle(%q) with a %v timeout took %v, want from %v to %v", tt.command, tt.timeout, r.took, tt.min, tt.max)
			}
			switch err := r.err; {
			case tt.wantErr && err == nil:
				t.Errorf("Handle(%q) = nil after the %v timeout, want an error", tt.command, tt.timeout)
			case tt.wantErr && (worker.IsPermanent(err) || !errors.Is(err, context.DeadlineExceeded)):
				t.Errorf("Handle(%q) = %v, want a retry that names the deadline", tt.command, err)
			case !tt.wantErr && err != nil:
				t.Errorf("Handle(%q) = %v, want nil: the command exited 0", tt.command, err)
			}
			if !tt.survivor {
				brokertest.WaitFor(t, 5*time.Second, fmt.Sprintf("the command's child %d to be gone", pid), func() bool {
					return processGone(pid, "sleep")
				})
			}
		})
	}
}

func TestExecLogsBoundedOutput(t *testing.T) {
	verifyNoLeaks(t)
	const mib = 1 << 20
	for _, tt := range []struct {
		name        string
		give        string
		wantOutput  string // the first bytes of the output field
		wantLen     int
		wantDropped int
	}{
		{"stdout and stderr", `echo out; echo err >&2; exit 4`, "out\nerr\n", 8, 0},
		{"1 MiB", `head -c 1048576 /dev/zero | tr '\0' a`, "aaaa", execOutputBytes, mib - execOutputBytes},
		{"1 MiB on stderr", `head -c 1048576 /dev/zero | tr '\0' b >&2`, "bbbb", execOutputBytes, mib - execOutputBytes},
		{"silent", `true`, "", 0, -1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e, logs := newExec(t, tt.give)
			_ = e.Handle(context.Background(), &worker.Message{MessageID: "m-7"})
			entries := logs.FilterMessage("command output").All()
			if tt.wantDropped < 0 {
				if len(entries) != 0 {
					t.Errorf("Handle(%q) logged %d outputs, want none for a silent command", tt.give, len(entries))
				}
				return
			}
			if len(entries) != 1 {
				t.Fatalf("Handle(%q) logged %d outputs, want 1", tt.give, len(entries))
			}
			fields := entries[0].ContextMap()
			out, _ := fields["output"].(string)
			if len(out) != tt.wantLen || !strings.HasPrefix(out, tt.wantOutput) {
				t.Errorf("Handle(%q) logged output of %d bytes %.20q, want %d bytes starting %q", tt.give, len(out), out, tt.wantLen, tt.wantOutput)
			}
			if got := fields["dropped_bytes"]; got != int64(tt.wantDropped) {
				t.Errorf("Handle(%q) logged dropped_bytes=%v, want %d", tt.give, got, tt.wantDropped)
			}
			if got := fields["message_id"]; got != "m-7" {
				t.Errorf("Handle(%q) logged message_id=%v, want m-7", tt.give, got)
			}
		})
	}
}

func TestBoundedBuffer(t *testing.T) {
	b := &boundedBuffer{limit: 10}
	for _, tt := range []struct {
		give        string
		wantKept    string
		wantDropped int
	}{
		{"12345", "12345", 0},
		{"6789", "123456789", 0},
		{"abc", "123456789a", 2},
		{"", "123456789a", 2},
		{"defg", "123456789a", 6},
	} {
		n, err := b.Write([]byte(tt.give))
		if n != len(tt.give) || err != nil {
			t.Errorf("Write(%q) = %d, %v, want %d, nil: the writer must never block the command", tt.give, n, err, len(tt.give))
		}
		if string(b.Bytes()) != tt.wantKept || b.Len() != len(tt.wantKept) || b.dropped != tt.wantDropped {
			t.Errorf("after Write(%q): kept %q, dropped %d, want %q, %d", tt.give, b.Bytes(), b.dropped, tt.wantKept, tt.wantDropped)
		}
	}

	// os/exec fills it with io.Copy, which prefers a ReaderFrom to Write.
	b = &boundedBuffer{limit: 10}
	n, err := io.Copy(b, strings.NewReader(strings.Repeat("x", 1000)))
	if n != 1000 || err != nil || b.Len() != 10 || b.dropped != 990 {
		t.Errorf("io.Copy(1000 bytes) = %d, %v; kept %d, dropped %d; want 1000, nil; kept 10, dropped 990", n, err, b.Len(), b.dropped)
	}
}

// TestExecKillAll: KillAll ends every running command's process group at
// once, without the grace a timeout gives, and no command runs after it.
func TestExecKillAll(t *testing.T) {
	verifyNoLeaks(t)
	dir := t.TempDir()
	e, _ := newExec(t, fmt.Sprintf(`sleep 30 & echo $! > %[1]s/"$WARREN_MESSAGE_ID".pid; wait; touch %[1]s/"$WARREN_MESSAGE_ID".done`, dir))
	e.Grace = time.Minute
	errs := make(chan error, 2)
	for _, id := range []string{"a", "b"} {
		go func() { errs <- e.Handle(context.Background(), &worker.Message{MessageID: id}) }()
	}
	pids := []int{readPID(t, filepath.Join(dir, "a.pid")), readPID(t, filepath.Join(dir, "b.pid"))}
	start := time.Now()
	e.KillAll()
	for range 2 {
		select {
		case err := <-errs:
			if err == nil {
				t.Errorf("Handle() of a killed command = nil, want an error")
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Handle() still running 10s after KillAll")
		}
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("commands ended %v after KillAll, want at once (no grace)", took)
	}
	// SIGKILL is delivered, not waited for: give the kernel a moment.
	brokertest.WaitFor(t, 2*time.Second, "the commands' background processes gone", func() bool {
		return processGone(pids[0], "sleep") && processGone(pids[1], "sleep")
	})
	if err := e.Handle(context.Background(), &worker.Message{MessageID: "c"}); err == nil {
		t.Errorf("Handle() after KillAll = nil, want an error: no command may run")
	}
	if done, _ := filepath.Glob(filepath.Join(dir, "*.done")); len(done) != 0 {
		t.Errorf("%d commands finished, want none", len(done))
	}
}

func TestPlainArgv(t *testing.T) {
	for _, tt := range []struct {
		give string
		want []string // nil: through the shell
	}{
		{"cat", []string{"cat"}},
		{"true", []string{"true"}},
		{"  gzip -d  -c ", []string{"gzip", "-d", "-c"}},
		{"python3 /app/handler.py --mode=fast -n 3,4 +x @file 50% a:b", []string{"python3", "/app/handler.py", "--mode=fast", "-n", "3,4", "+x", "@file", "50%", "a:b"}},
		{"./bin/handle_message", []string{"./bin/handle_message"}},
		{"", nil},
		{"   ", nil},
		{"cat >/dev/null", nil},
		{"cat | wc -c", nil},
		{"a; b", nil},
		{"a && b", nil},
		{"echo $HOME", nil},
		{"ls ~", nil},
		{"ls *.txt", nil},
		{"ls file?", nil},
		{"ls [ab]", nil},
		{"echo 'quoted'", nil},
		{`echo "quoted"`, nil},
		{`echo a\ b`, nil},
		{"echo `date`", nil},
		{"sleep 1 &", nil},
		{"(cd /tmp)", nil},
		{"{ true; }", nil},
		{"! true", nil},
		{"cat #comment", nil},
		{"a\tb", nil},
		{"a\nb", nil},
		{"handlé", nil},
		{"FOO=bar cmd", nil}, // an assignment for cmd
		{"exit 3", nil},      // builtins and reserved words are the shell's
		{"cd /tmp", nil},
		{"echo -e x", nil}, // the builtin's options are not the program's
		{"exec sleep 600", nil},
		{". ./env.sh", nil},
		{"if", nil},
		{"time sleep 1", nil},
		{"printf %s: a b", []string{"printf", "%s:", "a", "b"}},
	} {
		got, ok := plainArgv(tt.give)
		if !slices.Equal(got, tt.want) || ok != (tt.want != nil) {
			t.Errorf("plainArgv(%q) = %q, %v, want %q, %v", tt.give, got, ok, tt.want, tt.want != nil)
		}
		if !ok {
			continue
		}
		// sh makes the same words of it.
		out, err := exec.Command("/bin/sh", "-c", `set -- `+tt.give+`; printf '%s\n' "$@"`).Output()
		if words := strings.Fields(string(out)); err != nil || !slices.Equal(words, got) {
			t.Errorf("sh made %q (%v) of %q, plainArgv %q", words, err, tt.give, got)
		}
	}
}

// TestNativeCommand: which command lines warren runs without the shell,
// with their words, and where their trailing redirections send the
// outputs; every other line goes to sh.
func TestNativeCommand(t *testing.T) {
	log, null := sinkLog, sinkNull
	for _, tt := range []struct {
		give           string
		want           []string // nil: through the shell
		stdout, stderr execSink
	}{
		{"cat", []string{"cat"}, log, log},
		{"cat >/dev/null", []string{"cat"}, null, log},
		{"cat > /dev/null", []string{"cat"}, null, log},
		{"cat 1>/dev/null", []string{"cat"}, null, log},
		{"cat 1>  /dev/null  ", []string{"cat"}, null, log},
		{"cat 2>/dev/null", []string{"cat"}, log, null},
		{"cat 2> /dev/null", []string{"cat"}, log, null},
		{"cat >/dev/null 2>&1", []string{"cat"}, null, null},
		{"cat > /dev/null 2>&1", []string{"cat"}, null, null},
		{"cat >/dev/null 2>/dev/null", []string{"cat"}, null, null},
		{"cat 2>&1 >/dev/null", []string{"cat"}, null, log}, // stderr where stdout was: the log
		{"cat 2>&1", []string{"cat"}, log, log},
		{"cat 2>/dev/null 1>&2", []string{"cat"}, null, null},
		{"cat 1>&2 2>/dev/null", []string{"cat"}, log, null},
		{"cat >&2", []string{"cat"}, log, log},
		{"gzip -d -c /dev/null >/dev/null", []string{"gzip", "-d", "-c", "/dev/null"}, null, log},
		{"cat /dev/null", []string{"cat", "/dev/null"}, log, log},
		{"cat 2 >/dev/null", []string{"cat", "2"}, null, log}, // 2 is an argument
		{"cat 2 > /dev/null", []string{"cat", "2"}, null, log},
		{">/dev/null", nil, log, log},
		{"> /dev/null", nil, log, log},
		{">/dev/null cat", nil, log, log},
		{"cat >/dev/null x", nil, log, log},
		{"cat >>/dev/null", nil, log, log},
		{"cat >/tmp/out", nil, log, log},
		{"cat 3>/dev/null", nil, log, log},
		{"cat 2>&-", nil, log, log},
		{"cat &>/dev/null", nil, log, log}, // sh: cat in the background
		{"cat >/dev/null&", nil, log, log},
		{"cat </dev/null", nil, log, log},
		{"cat x>/dev/null", nil, log, log},
		{"cat x> /dev/null", nil, log, log},
		{"cat | cat >/dev/null", nil, log, log},
		{"echo x >/dev/null", nil, log, log}, // a builtin
		{"FOO=1 cat >/dev/null", nil, log, log},
		{"cat\t>/dev/null", nil, log, log},
	} {
		got, out, ok := nativeCommand(tt.give)
		if !slices.Equal(got, tt.want) || ok != (tt.want != nil) {
			t.Errorf("nativeCommand(%q) = %q, %v, want %q, %v", tt.give, got, ok, tt.want, tt.want != nil)
			continue
		}
		if ok && (out != execOutputs{stdout: tt.stdout, stderr: tt.stderr}) {
			t.Errorf("nativeCommand(%q) outputs = %+v, want %+v", tt.give, out, execOutputs{tt.stdout, tt.stderr})
		}
	}
}

// TestExecRedirectsAsShWould: a command whose redirections warren sets up
// itself runs without sh, and what it writes reaches the log exactly as
// when sh sets them up: what goes to /dev/null is not logged, 2>&1 and
// 1>&2 merge, in order.
func TestExecRedirectsAsShWould(t *testing.T) {
	verifyNoLeaks(t)
	bin := t.TempDir()
	if err := os.WriteFile(filepath.Join(bin, "emit"), []byte("#!/bin/sh\necho out1\necho err1 >&2\necho out2\necho err2 >&2\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	path := "PATH=" + bin + ":" + os.Getenv("PATH")
	for _, redirections := range []string{
		"", ">/dev/null", "> /dev/null", "1>/dev/null", "2>/dev/null", "2> /dev/null",
		">/dev/null 2>&1", "2>&1", "2>&1 >/dev/null", "1>&2", ">/dev/null 2>/dev/null",
	} {
		command := "emit " + redirections
		sh := exec.Command("/bin/sh", "-c", command)
		sh.Env = []string{path}
		var want bytes.Buffer
		sh.Stdout, sh.Stderr = &want, &want // one pipe: the order is kept
		if err := sh.Run(); err != nil {
			t.Fatalf("sh -c %q: %v", command, err)
		}

		e, logs := newExec(t, command)
		e.Env = []string{path}
		if p := e.program(); p.file == "/bin/sh" {
			t.Errorf("Handle(%q) runs through sh, want without", command)
		}
		if err := e.Handle(context.Background(), &worker.Message{MessageID: "m-1"}); err != nil {
			t.Fatalf("Handle(%q) = %v, want nil", command, err)
		}
		var got string
		if logged := logs.FilterMessage("command output").All(); len(logged) > 0 {
			got = outputOf(t, logs)
		}
		if got != want.String() {
			t.Errorf("Handle(%q) logged %q, sh's output %q", command, got, want.String())
		}
	}
}

// outputOf returns the output the command logged.
func outputOf(t *testing.T, logs *observer.ObservedLogs) string {
	t.Helper()
	entries := logs.FilterMessage("command output").All()
	if len(entries) != 1 {
		t.Fatalf("command logged %d outputs, want 1", len(entries))
	}
	out, _ := entries[0].ContextMap()["output"].(string)
	return out
}

// TestExecPlainCommandRunsWithoutTheShell: a command with no shell syntax
// runs as it is, its words its arguments, looked up on the PATH of its own
// environment; it sees exactly that environment (sh would add PWD).
func TestExecPlainCommandRunsWithoutTheShell(t *testing.T) {
	verifyNoLeaks(t)
	bin := t.TempDir()
	script := filepath.Join(bin, "handle-it")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho \"handled $*\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		give string
		env  []string
		want string // the output, or its lines sorted when wantLines
		// wantLines: the output's lines, in any order
		wantLines bool
	}{
		{"env", execEnv("KEEP=me"), strings.Join(slices.Sorted(slices.Values([]string{
			"PATH=" + os.Getenv("PATH"), "KEEP=me", "WARREN_MESSAGE_ID=m-1", "WARREN_ATTEMPT=0", "WARREN_REDELIVERED=false",
			"WARREN_CORRELATION_ID=", "WARREN_CONTENT_TYPE=", "WARREN_EXCHANGE=", "WARREN_ROUTING_KEY="})), "\n"), true},
		{"printf %s: a  b   c", execEnv(), "a:b:c:", false},
		{"handle-it one  two", []string{"PATH=/nonexistent:" + bin}, "handled one two\n", false},
	} {
		e, logs := newExec(t, tt.give)
		e.Env = tt.env
		if err := e.Handle(context.Background(), &worker.Message{MessageID: "m-1"}); err != nil {
			t.Fatalf("Handle(%q) = %v, want nil", tt.give, err)
		}
		got := outputOf(t, logs)
		if tt.wantLines {
			got = strings.Join(slices.Sorted(slices.Values(strings.Split(strings.TrimSpace(got), "\n"))), "\n")
		}
		if got != tt.want {
			t.Errorf("Handle(%q) output:\n%s\nwant:\n%s", tt.give, got, tt.want)
		}
	}
}

// TestExecBodyNotRead: a command that exits, or runs on, without reading
// its stdin neither fails nor hangs, whatever the size of the body.
func TestExecBodyNotRead(t *testing.T) {
	verifyNoLeaks(t)
	big := bytes.Repeat([]byte("0123456789abcdef"), 5<<16) // 5 MiB
	for _, tt := range []struct {
		give string
		body []byte
	}{
		{"true", []byte("x")},
		{"true", big},
		{"exit 0", big},
		{"sleep 0.5", big},
		{"exec 0<&-; sleep 0.5", big},
		{"head -c 10", big},
	} {
		e, _ := newExec(t, tt.give)
		done := make(chan error, 1)
		go func() { done <- e.Handle(context.Background(), &worker.Message{Body: tt.body}) }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Handle(%q) of %d bytes = %v, want nil", tt.give, len(tt.body), err)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("Handle(%q) of %d bytes still running after 20s", tt.give, len(tt.body))
		}
	}
}

// TestExecScriptWithoutShebang: sh runs an executable file that the
// kernel cannot (no #! line, not a binary) as a shell script, and so must
// a plain command naming one.
func TestExecScriptWithoutShebang(t *testing.T) {
	verifyNoLeaks(t)
	bin := t.TempDir()
	if err := os.WriteFile(filepath.Join(bin, "handle-it"), []byte("echo \"handled $*\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	e, logs := newExec(t, "handle-it one two")
	e.Env = []string{"PATH=" + bin + ":" + os.Getenv("PATH")}
	if err := e.Handle(context.Background(), &worker.Message{MessageID: "m-1"}); err != nil {
		t.Fatalf("Handle(%q) = %v, want nil", e.Command, err)
	}
	if got, want := outputOf(t, logs), "handled one two\n"; got != want {
		t.Errorf("Handle(%q) output %q, want %q", e.Command, got, want)
	}
}

// TestExecPlainCommandIsStopped: a command run without the shell is
// stopped as one run through it is: at its timeout, and by KillAll.
func TestExecPlainCommandIsStopped(t *testing.T) {
	verifyNoLeaks(t)
	e, _ := newExec(t, "sleep 300")
	e.Grace = time.Minute // SIGTERM alone must end it
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := e.Handle(ctx, &worker.Message{MessageID: "slow"})
	if took := time.Since(start); took > 10*time.Second || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Handle(%q) with a 300ms timeout = %v after %v, want the deadline within 10s", e.Command, err, took)
	}

	errs := make(chan error, 2)
	for _, id := range []string{"a", "b"} {
		go func() { errs <- e.Handle(context.Background(), &worker.Message{MessageID: id}) }()
	}
	brokertest.WaitFor(t, 10*time.Second, "2 commands running", func() bool {
		e.mu.Lock()
		defer e.mu.Unlock()
		return len(e.groups) == 2
	})
	e.KillAll()
	for range 2 {
		select {
		case err := <-errs:
			if err == nil || !strings.Contains(err.Error(), "killed") {
				t.Errorf("Handle(%q) after KillAll = %v, want it killed", e.Command, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("Handle(%q) still running 10s after KillAll", e.Command)
		}
	}
}

// TestExecCommandGetsBlockingFiles: the command's standard input, output
// and error are in blocking mode whatever they are (the body's pipe, the
// log's, the reply's, the null device), as a shell would give them: a
// command that reads or writes one in non-blocking mode would fail with
// EAGAIN where it should wait. warren's own ends of the pipes are
// non-blocking; the command's never are.
func TestExecCommandGetsBlockingFiles(t *testing.T) {
	verifyNoLeaks(t)
	const show = "cat /proc/self/fdinfo/0 /proc/self/fdinfo/1 /proc/self/fdinfo/2"
	for _, tt := range []struct {
		name, command, replyTo string
	}{
		{"pipes to the log", show, ""},
		{"standard error to /dev/null", show + " 2>/dev/null", ""},
		{"standard output the reply", show, "cb"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e, logs := newExec(t, tt.command, "PATH="+os.Getenv("PATH"))
			m := &worker.Message{MessageID: "m-1", Body: []byte("body"), ReplyTo: tt.replyTo}
			if err := e.Handle(context.Background(), m); err != nil {
				t.Fatalf("Handle(%q) = %v, want nil", tt.command, err)
			}
			var out string
			if tt.replyTo != "" {
				out = string(m.Reply.Body)
			} else {
				out = outputOf(t, logs)
			}
			var flags []string
			for line := range strings.Lines(out) {
				if v, ok := strings.CutPrefix(line, "flags:"); ok {
					flags = append(flags, strings.TrimSpace(v))
				}
			}
			if len(flags) != 3 {
				t.Fatalf("the command printed %d flags lines, want 3:\n%s", len(flags), out)
			}
			for fd, f := range flags {
				v, err := strconv.ParseUint(f, 8, 32)
				if err != nil {
					t.Fatalf("flags of fd %d: %q: %v", fd, f, err)
				}
				if v&syscall.O_NONBLOCK != 0 {
					t.Errorf("the command's fd %d is non-blocking (flags %s)", fd, f)
				}
			}
		})
	}
}
