package worker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap"
)

// Exec limits.
const (
	// execGrace is how long a command has between SIGTERM and SIGKILL,
	// unless Exec.Grace says otherwise.
	execGrace = 5 * time.Second
	// execOutputBytes bounds how much of a command's output is kept for the
	// log; the rest is counted and dropped.
	execOutputBytes = 4096
)

// Exec is a handler that runs a shell command per message: the body on
// stdin, the message's properties in the environment. Exit 0 acks; an exit
// code in DeadExitCodes is dead; any other exit, a signal or the timeout
// retries.
type Exec struct {
	// Command is run with /bin/sh -c.
	Command string
	// DeadExitCodes are the exit codes that mean the message is bad.
	DeadExitCodes []int
	// Env is the environment the command inherits, before the message's
	// variables are added; nil means none. Pass os.Environ() filtered with
	// ExecEnv, so that warren's broker URL, TLS files and the rest of its
	// environment never reach the command.
	Env []string
	// Logger receives the command's output.
	Logger *zap.Logger
	// Grace is how long the command has to exit after SIGTERM, at its
	// timeout, before SIGKILL; 0 means 5s.
	Grace time.Duration

	mu     sync.Mutex
	groups map[int]bool // process groups of the commands running
	killed bool         // KillAll was called: no command may run
}

// KillAll kills the process groups of every command running, with
// SIGKILL and no grace, and of any command started from now on. It is
// the way out when warren must stop at once (a second signal, SIGQUIT):
// the broker hands the messages of those commands to another consumer,
// and a command left running would handle its message a second time.
func (e *Exec) KillAll() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.killed = true
	for pgid := range e.groups {
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
	}
}

// track records a command's process group, or kills it at once after
// KillAll; untrack forgets it once it is gone.
func (e *Exec) track(pgid int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.killed {
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		return
	}
	if e.groups == nil {
		e.groups = make(map[int]bool)
	}
	e.groups[pgid] = true
}

func (e *Exec) untrack(pgid int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.groups, pgid)
}

// execBaseEnv are the variables of warren's environment that every
// command gets: what programs expect to find (the search path, the home
// and user, the locale, the time zone, the temporary directory).
var execBaseEnv = []string{"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR"}

// ExecEnv returns the environment a command starts from, for Exec.Env:
// from environ, PATH, HOME, USER, LOGNAME, SHELL, LANG, LANGUAGE, LC_*, TZ
// and TMPDIR, and the variables named in pass. Anything else of warren's
// environment stays out (it may hold secrets of other containers of the
// pod), and so does every WARREN_* variable, even when named: warren's
// own settings hold the broker URL and TLS files, and the command's
// WARREN_* variables describe its message.
func ExecEnv(environ, pass []string) []string {
	var env []string
	for _, kv := range environ {
		name, _, ok := strings.Cut(kv, "=")
		if !ok || strings.HasPrefix(name, "WARREN_") {
			continue
		}
		if slices.Contains(execBaseEnv, name) || strings.HasPrefix(name, "LC_") || slices.Contains(pass, name) {
			env = append(env, kv)
		}
	}
	return env
}

// Handle runs the command for m.
func (e *Exec) Handle(ctx context.Context, m *Message) error {
	cmd := exec.Command("/bin/sh", "-c", e.Command)
	cmd.Stdin = bytes.NewReader(m.Body)
	cmd.Env = append(slices.Clip(e.Env), messageEnv(m)...)
	out := &boundedBuffer{limit: execOutputBytes}
	cmd.Stdout, cmd.Stderr = out, out
	// Its own process group, so that a timeout reaches every process it
	// started, and a terminal's Ctrl-C does not kill work warren drains.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// Wait returns only once nothing holds the command's output open. A
	// process the command left running in the background would hold it as
	// long as it lives, beyond the timeout if it left the process group:
	// after the shell exited, give the output the grace to close.
	grace := e.Grace
	if grace <= 0 {
		grace = execGrace
	}
	cmd.WaitDelay = grace
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start command: %w", err)
	}
	pgid := cmd.Process.Pid
	e.track(pgid)
	waitErr := make(chan error, 1)
	go func() { waitErr <- cmd.Wait() }()

	var err error
	select {
	case err = <-waitErr:
	case <-ctx.Done():
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		t := time.NewTimer(grace)
		select {
		case err = <-waitErr:
		case <-t.C:
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			err = <-waitErr
		}
		t.Stop()
		// What Wait says of a process killed on purpose adds nothing.
		err = fmt.Errorf("command stopped: %w", context.Cause(ctx))
	}
	// Whatever the command left running in its group goes with it.
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	e.untrack(pgid)
	if errors.Is(err, exec.ErrWaitDelay) {
		// The shell exited 0; what it left behind held the output.
		err = nil
	}

	logger := e.Logger
	if logger == nil {
		logger = zap.NewNop()
	}
	log := logger.With(zap.String("message_id", m.MessageID), zap.Int("pid", pgid))
	if out.Len() > 0 || out.dropped > 0 {
		log.Info("command output", zap.ByteString("output", out.Bytes()), zap.Int("dropped_bytes", out.dropped))
	}
	if err == nil {
		return nil
	}
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) && ctx.Err() == nil {
		code := exitErr.ExitCode()
		if code > 0 && slices.Contains(e.DeadExitCodes, code) {
			return Permanent(fmt.Errorf("command exited with dead code %d", code))
		}
		if code < 0 {
			return fmt.Errorf("command killed: %w", err)
		}
		return fmt.Errorf("command exited with code %d", code)
	}
	return err
}

// messageEnv returns the variables that describe m to a command.
func messageEnv(m *Message) []string {
	env := []string{
		"WARREN_MESSAGE_ID=" + envValue(m.MessageID),
		"WARREN_CORRELATION_ID=" + envValue(m.CorrelationID),
		"WARREN_CONTENT_TYPE=" + envValue(m.ContentType),
		"WARREN_EXCHANGE=" + envValue(m.Exchange),
		"WARREN_ROUTING_KEY=" + envValue(m.RoutingKey),
		"WARREN_REDELIVERED=" + strconv.FormatBool(m.Redelivered),
		"WARREN_ATTEMPT=" + strconv.Itoa(m.Attempt),
	}
	for k, v := range m.Headers {
		env = append(env, "WARREN_HEADER_"+envName(k)+"="+envValue(headerString(v)))
	}
	return env
}

// envValue drops the NUL bytes an environment variable cannot hold, and
// that would keep the command from starting at all.
func envValue(s string) string {
	return strings.ReplaceAll(s, "\x00", "")
}

// envName turns a header name into the tail of a variable name: upper
// case, anything but letters and digits an underscore.
func envName(k string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z':
			return r - 'a' + 'A'
		case r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
			return r
		}
		return '_'
	}, k)
}

// headerString formats an AMQP header value as text.
func headerString(v any) string {
	switch v := v.(type) {
	case string:
		return v
	case []byte:
		return string(v)
	case time.Time:
		return v.UTC().Format(time.RFC3339)
	case amqp.Decimal:
		return fmt.Sprintf("%de-%d", v.Value, v.Scale)
	}
	return fmt.Sprint(v)
}

// boundedBuffer keeps the first limit bytes written to it and counts the
// rest, so that a chatty command cannot grow warren's memory.
type boundedBuffer struct {
	// buf is not embedded: its ReadFrom, which io.Copy prefers to Write,
	// would bypass the limit.
	buf     bytes.Buffer
	limit   int
	dropped int
}

func (b *boundedBuffer) Write(p []byte) (int, error) {
	n := len(p)
	if room := b.limit - b.buf.Len(); room < len(p) {
		b.dropped += len(p) - max(room, 0)
		p = p[:max(room, 0)]
	}
	b.buf.Write(p)
	return n, nil
}

// Len returns the number of bytes kept.
func (b *boundedBuffer) Len() int { return b.buf.Len() }

// Bytes returns the bytes kept.
func (b *boundedBuffer) Bytes() []byte { return b.buf.Bytes() }
