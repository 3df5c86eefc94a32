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
	"sync"
	"syscall"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap"

	"github.com/warren-mq/warren/tracing"
	"github.com/warren-mq/warren/worker"
)

// Exec limits.
const (
	// execGrace is how long a command has between SIGTERM and SIGKILL,
	// unless Exec.Grace says otherwise.
	execGrace = worker.KillGrace
	// execOutputBytes bounds how much of a command's output is kept for the
	// log; the rest is counted and dropped.
	execOutputBytes = 4096
)

// Exec is a handler that runs a command per message: the body on stdin,
// the message's properties in the environment. Exit 0 acks; an exit code
// in DeadExitCodes is dead; any other exit, a signal or the timeout
// retries.
type Exec struct {
	// Command is the command line. A plain one, words made only of
	// letters, digits and _-./=:,+@% separated by spaces, runs as it is:
	// its first word, looked up once on the PATH of Env, is the program
	// and the others its arguments, with no shell in between. So does a
	// plain one followed by redirections of standard output or error to
	// /dev/null or of one onto the other (>/dev/null, 2> /dev/null,
	// >/dev/null 2>&1, 2>&1, 1>&2): warren sets them up itself. Anything
	// else (quotes, variables, other redirections, pipes, globs, tabs)
	// runs with /bin/sh -c, and so does a plain line whose first word is
	// an assignment, a shell builtin or reserved word, or no binary or #!
	// script on that PATH: a command means what it means to sh either way.
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
	// ReplyMaxBytes bounds the answer to a request with reply_to: the
	// command's standard output, which then is the reply instead of going
	// to the log (standard error still does). A longer one makes the
	// message dead. 0 means DefaultReplyMaxBytes.
	ReplyMaxBytes int64
	// NoReply handles a request with reply_to like any message: its
	// standard output goes to the log, and no answer is sent
	// (WARREN_REPLY=false: the command answers, if it does).
	NoReply bool

	mu     sync.Mutex
	groups map[int]bool // process groups of the commands running
	killed bool         // KillAll was called: no command may run
	prog   execProgram  // how Command runs, worked out at its first run
}

// execProgram is how a command line runs: the file executed, its
// arguments and where its output goes, worked out for a Command and the
// PATH of an Env.
type execProgram struct {
	command, path string
	file          string
	argv          []string
	out           execOutputs
	// replyOut is where the outputs go for a request with reply_to:
	// standard output, before the redirections, is the reply.
	replyOut execOutputs
	// null is the null device, opened once for every command whose
	// output goes there; nil if none does (or it could not be opened:
	// os/exec then opens it for each command, and says why it cannot).
	null *os.File
}

// execSink is where one of a command's outputs goes.
type execSink uint8

const (
	sinkLog   execSink = iota // the pipe warren reads, and logs
	sinkNull                  // /dev/null
	sinkReply                 // the pipe warren reads, the reply to a request
)

// execOutputs is where a command's standard output and error go.
type execOutputs struct{ stdout, stderr execSink }

// to reports whether any output goes to sink: whether the command needs
// that pipe.
func (o execOutputs) to(sink execSink) bool { return o.stdout == sink || o.stderr == sink }

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

// program returns how Command runs: the program itself, with the
// redirections it ends with set up by warren, for a plain command line;
// else /bin/sh, both outputs to the log (or standard output to the
// reply). The answer is kept, and worked out again only if Command or the
// PATH changes.
func (e *Exec) program() execProgram {
	path := envPATH(e.Env)
	e.mu.Lock()
	defer e.mu.Unlock()
	if p := e.prog; p.argv != nil && p.command == e.Command && p.path == path {
		return p
	}
	p := execProgram{command: e.Command, path: path, file: "/bin/sh", argv: []string{"/bin/sh", "-c", e.Command},
		replyOut: execOutputs{stdout: sinkReply, stderr: sinkLog}}
	if words, out, ok := nativeCommand(e.Command); ok {
		if f, err := lookPath(words[0], path); err == nil && kernelRuns(f) {
			_, rs := splitRedirections(e.Command)
			p.file, p.argv, p.out, p.replyOut = f, words, out, applyRedirections(rs, sinkReply)
		}
	}
	if p.out.to(sinkNull) || p.replyOut.to(sinkNull) {
		if p.null = e.prog.null; p.null == nil {
			p.null, _ = os.OpenFile(os.DevNull, os.O_WRONLY, 0)
		}
	}
	e.prog = p
	return p
}

// nativeCommand returns the words of a command line warren runs without
// the shell, and where its outputs go: a plain command line (plainArgv)
// followed by none or more of the redirections of trailingRedirections.
func nativeCommand(command string) (words []string, out execOutputs, ok bool) {
	rest, out := trailingRedirections(command)
	words, ok = plainArgv(rest)
	return words, out, ok
}

// trailingRedirections takes the redirections off the end of a command
// line that warren sets up itself, and returns the line before them and
// where they send the outputs, applied from left to right as sh does:
// N>/dev/null and N> /dev/null (N 1, 2 or none, meaning 1) send an
// output to /dev/null; 2>&1 and 1>&2 (or >&2) send one where the other
// goes at that point. A redirection is a word of its own: cat 2>/dev/null
// is one, cat 2 >/dev/null is another (standard output to /dev/null, and
// 2 an argument of cat). Anything else (>>, <, 3>, >&-, a file) stays in
// the line, and plainArgv sends it to sh.
func trailingRedirections(command string) (rest string, out execOutputs) {
	rest, rs := splitRedirections(command)
	return rest, applyRedirections(rs, sinkLog)
}

// splitRedirections returns the line before the trailing redirections
// that warren sets up itself, and those, last first.
func splitRedirections(command string) (rest string, rs []redirection) {
	rest = strings.TrimRight(command, " ")
	for {
		i := strings.LastIndexByte(rest, ' ') + 1
		r, ok := redirectionWord(rest[i:])
		if !ok && rest[i:] == "/dev/null" {
			// Written with a space: N> /dev/null.
			before := strings.TrimRight(rest[:i], " ")
			j := strings.LastIndexByte(before, ' ') + 1
			if r, ok = redirectionWord(before[j:] + "/dev/null"); ok {
				rest, i = before, j
			}
		}
		if !ok {
			break
		}
		rs = append(rs, r)
		rest = strings.TrimRight(rest[:i], " ")
	}
	return rest, rs
}

// applyRedirections returns where the outputs go once rs (last first) are
// applied from left to right, as sh does, to standard output going to
// stdout and standard error to the log.
func applyRedirections(rs []redirection, stdout execSink) execOutputs {
	sinks := [3]execSink{1: stdout, 2: sinkLog} // by fd
	for _, r := range slices.Backward(rs) {
		if r.dup == 0 {
			sinks[r.fd] = sinkNull
		} else {
			sinks[r.fd] = sinks[r.dup]
		}
	}
	return execOutputs{stdout: sinks[1], stderr: sinks[2]}
}

// redirection is one that warren sets up itself: fd (1 or 2) to
// /dev/null, or when dup is not 0, onto where fd dup goes.
type redirection struct{ fd, dup int }

// redirectionWord reads a word of a command line as a redirection that
// warren sets up itself; ok is false for any other word.
func redirectionWord(word string) (r redirection, ok bool) {
	switch word {
	case ">/dev/null", "1>/dev/null":
		return redirection{fd: 1}, true
	case "2>/dev/null":
		return redirection{fd: 2}, true
	case "2>&1":
		return redirection{fd: 2, dup: 1}, true
	case "1>&2", ">&2":
		return redirection{fd: 1, dup: 2}, true
	}
	return redirection{}, false
}

// shellWords are the first words that mean something to sh other than a
// program of that name: reserved words, and builtins, but for those that
// behave as the programs of their name do.
var shellWords = []string{
	"if", "then", "else", "elif", "fi", "do", "done", "case", "esac", "while", "until", "for", "in",
	"function", "select", "time", "coproc",
	".", ":", "alias", "bg", "break", "builtin", "cd", "chdir", "command", "continue", "declare", "echo",
	"eval", "exec", "exit", "export", "fc", "fg", "getopts", "hash", "jobs", "let", "local", "pwd", "read",
	"readonly", "return", "set", "shift", "source", "times", "trap", "type", "typeset", "ulimit", "umask",
	"unalias", "unset", "wait",
}

// plainArgv returns the words of a plain command line: nothing in it
// means anything to sh (only words of letters, digits and _-./=:,+@%,
// separated by spaces), and its first word is neither an assignment nor
// one of shellWords. ok is false for any other line.
func plainArgv(command string) (words []string, ok bool) {
	if !plainWord(command) {
		return nil, false
	}
	words = strings.Fields(command)
	if len(words) == 0 || strings.Contains(words[0], "=") || slices.Contains(shellWords, words[0]) {
		return nil, false
	}
	return words, true
}

// plainWord reports whether s holds only what means nothing to sh:
// letters, digits, _-./=:,+@% and spaces.
func plainWord(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		plain := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte(" _-./=:,+@%", c) >= 0
		if !plain {
			return false
		}
	}
	return true
}

// lookPath finds the program name as sh would with path as its PATH: a
// name with a slash is itself, any other is looked for in each directory
// of path in turn. A directory that is not absolute ends the search: its
// meaning would change with warren's working directory.
func lookPath(name, path string) (string, error) {
	if strings.Contains(name, "/") {
		return exec.LookPath(name)
	}
	for _, dir := range filepath.SplitList(path) {
		if !filepath.IsAbs(dir) {
			break
		}
		if f, err := exec.LookPath(filepath.Join(dir, name)); err == nil {
			return f, nil
		}
	}
	return "", fmt.Errorf("look up %q: %w", name, exec.ErrNotFound)
}

// kernelRuns reports whether the kernel runs file itself: a binary, or a
// script with a #! line. sh runs any other executable file as a shell
// script; so does warren, through sh. A file warren may not read is left
// to sh too.
func kernelRuns(file string) bool {
	f, err := os.Open(file)
	if err != nil {
		return false
	}
	defer f.Close()
	var head [4]byte
	n, _ := io.ReadFull(f, head[:])
	return bytes.HasPrefix(head[:n], []byte("#!")) || bytes.HasPrefix(head[:n], []byte("\x7fELF"))
}

// envPATH returns the value of PATH in env; the last one wins, as in
// os/exec.
func envPATH(env []string) string {
	for _, kv := range slices.Backward(env) {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			return v
		}
	}
	return ""
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
func (e *Exec) Handle(ctx context.Context, m *worker.Message) error {
	p := e.program()
	grace := e.Grace
	if grace <= 0 {
		grace = execGrace
	}
	// Files, not readers and writers: the command reads its stdin and
	// writes its output itself, with no copying goroutines of os/exec.
	stdin, body, err := bodyPipe(m.Body)
	if err != nil {
		return fmt.Errorf("start command: %w", err)
	}
	// The output pipe, when any output goes to the log; an output sent to
	// /dev/null is left nil, which os/exec opens as the null device. For
	// a request with reply_to, standard output goes to a pipe of its own,
	// the reply, and the redirections apply from there as sh would.
	out := p.out
	if e.replies(m) {
		out = p.replyOut
	}
	var outR, outW, repR, repW *os.File
	if out.to(sinkReply) {
		if repR, repW, err = outputPipe(); err != nil {
			stdin.Close() // the writer, if any, ends with EPIPE
			body.wait()
			return fmt.Errorf("start command: %w", err)
		}
	}
	if out.to(sinkLog) {
		if outR, outW, err = outputPipe(); err != nil {
			stdin.Close()
			closeAll(repR, repW)
			body.wait()
			return fmt.Errorf("start command: %w", err)
		}
	}
	pipe := map[execSink]*os.File{sinkLog: outW, sinkReply: repW, sinkNull: p.null}
	cmd := &exec.Cmd{
		Path:  p.file,
		Args:  p.argv,
		Env:   append(append(slices.Clip(e.Env), messageEnv(m)...), tracing.Env(ctx)...), // TRACEPARENT, TRACESTATE
		Stdin: stdin,
		// Its own process group, so that a timeout reaches every process
		// it started, and a terminal's Ctrl-C does not kill work warren
		// drains.
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true},
	}
	// An *os.File, never a nil one in an interface: os/exec opens the
	// null device, for this command alone, only for a nil interface.
	if f := pipe[out.stdout]; f != nil {
		cmd.Stdout = f
	}
	if f := pipe[out.stderr]; f != nil {
		cmd.Stderr = f
	}
	err = cmd.Start()
	// The command holds its own copies of these ends.
	stdin.Close()
	closeAll(outW, repW)
	if err != nil {
		closeAll(outR, repR)
		body.wait()
		return fmt.Errorf("start command: %w", err)
	}
	pgid := cmd.Process.Pid
	e.track(pgid)
	logged := &boundedBuffer{limit: execOutputBytes}
	outDone := readInto(logged, outR)
	limit := e.ReplyMaxBytes
	if limit <= 0 {
		limit = DefaultReplyMaxBytes
	}
	// Read to its end past the limit, so that the command never blocks
	// on a full pipe: what is over is counted.
	reply := &boundedBuffer{limit: int(limit)}
	repDone := readInto(reply, repR)
	waitErr := make(chan error, 1)
	go func() { waitErr <- cmd.Wait() }()

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
	// A process the command left running outside its group (setsid) may
	// hold its output or stdin open as long as it lives: give it the
	// grace to close them, then stop reading and writing.
	deadline := time.Now().Add(grace)
	for _, r := range []*os.File{outR, repR} {
		if r != nil {
			_ = r.SetReadDeadline(deadline)
		}
	}
	body.stop(deadline)
	<-outDone
	<-repDone
	closeAll(outR, repR)
	body.wait()

	logger := e.Logger
	if logger == nil {
		logger = zap.NewNop()
	}
	if logged.Len() > 0 || logged.dropped > 0 {
		logger.Info("command output", zap.String("message_id", m.MessageID), zap.Int("pid", pgid),
			zap.ByteString("output", logged.Bytes()), zap.Int("dropped_bytes", logged.dropped))
	}
	if err != nil && reply.Len() > 0 {
		// A failed attempt sends no reply: what it wrote goes to the log,
		// as it would without reply_to.
		kept := reply.Bytes()[:min(reply.Len(), execOutputBytes)]
		logger.Info("command standard output, not sent as a reply: the command failed", zap.String("message_id", m.MessageID),
			zap.Int("pid", pgid), zap.ByteString("output", kept), zap.Int("dropped_bytes", reply.Len()-len(kept)+reply.dropped))
	}
	if err == nil {
		if !e.replies(m) {
			return nil
		}
		if reply.dropped > 0 {
			return replyTooLarge(limit)
		}
		m.Reply = &worker.Reply{Body: bytes.Clone(reply.Bytes())}
		return nil
	}
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) && ctx.Err() == nil {
		code := exitErr.ExitCode()
		if code > 0 && slices.Contains(e.DeadExitCodes, code) {
			return worker.Permanent(fmt.Errorf("command exited with dead code %d", code))
		}
		if code < 0 {
			return fmt.Errorf("command killed: %w", err)
		}
		return fmt.Errorf("command exited with code %d", code)
	}
	return err
}

// readInto reads r, if not nil, into b on a goroutine of its own, and
// returns a channel closed once it is done.
func readInto(b *boundedBuffer, r *os.File) <-chan struct{} {
	done := make(chan struct{})
	if r == nil {
		close(done)
		return done
	}
	go func() {
		defer close(done)
		b.readAll(r)
	}()
	return done
}

// closeAll closes the files that are not nil.
func closeAll(fs ...*os.File) {
	for _, f := range fs {
		if f != nil {
			f.Close()
		}
	}
}

// bodyPipe returns the read end of a pipe that holds body, for the
// command's stdin. What the pipe's buffer (64 KiB) takes is written at
// once, and the pipe closed; the rest, if any, by w while the command
// runs (nil: none), and w closes the pipe when done.
func bodyPipe(body []byte) (stdin *os.File, w *bodyWriter, err error) {
	pw, r, err := commandPipe(false)
	if err != nil {
		return nil, nil, fmt.Errorf("stdin pipe: %w", err)
	}
	n, err := writeNow(pw, body)
	if err != nil {
		r.Close()
		pw.Close()
		return nil, nil, fmt.Errorf("stdin pipe: %w", err)
	}
	if n == len(body) {
		pw.Close()
		return r, nil, nil
	}
	w = &bodyWriter{f: pw, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		// EPIPE: the command exited, or closed its stdin, without reading
		// it all. Whether that is a failure is the command's to say.
		_, _ = pw.Write(body[n:])
		pw.Close()
	}()
	return r, w, nil
}

// outputPipe returns a pipe for one of the command's outputs: r for
// warren to read, w for the command.
func outputPipe() (r, w *os.File, err error) { return commandPipe(true) }

// commandPipe returns a pipe between warren and a command: warren's end,
// which reads when warrenReads, and the command's. Only warren's end is
// in Go's poller, and in non-blocking mode: os.Pipe would put both there,
// and starting the command take its end back out (a registration, its
// removal and four fcntl calls per end, for every message).
func commandPipe(warrenReads bool) (warren, command *os.File, err error) {
	var fd [2]int // read, write
	if err := syscall.Pipe2(fd[:], syscall.O_CLOEXEC); err != nil {
		return nil, nil, os.NewSyscallError("pipe2", err)
	}
	mine, theirs := fd[1], fd[0]
	if warrenReads {
		mine, theirs = fd[0], fd[1]
	}
	// A new pipe end has no status flags to keep: set the one it needs.
	if _, _, errno := syscall.Syscall(syscall.SYS_FCNTL, uintptr(mine), syscall.F_SETFL, syscall.O_NONBLOCK); errno != 0 {
		syscall.Close(fd[0])
		syscall.Close(fd[1])
		return nil, nil, os.NewSyscallError("fcntl", errno)
	}
	// os.NewFile puts a non-blocking descriptor in the poller, and leaves
	// a blocking one out of it.
	return os.NewFile(uintptr(mine), "|warren"), os.NewFile(uintptr(theirs), "|command"), nil
}

// writeNow writes what of p fits in the pipe w without waiting.
func writeNow(w *os.File, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	rc, err := w.SyscallConn()
	if err != nil {
		return 0, err
	}
	var n int
	var werr error
	if err := rc.Write(func(fd uintptr) bool {
		n, werr = syscall.Write(int(fd), p)
		return true
	}); err != nil {
		return 0, err
	}
	if errors.Is(werr, syscall.EAGAIN) || errors.Is(werr, syscall.EINTR) {
		return 0, nil
	}
	return max(n, 0), werr
}

// bodyWriter writes the rest of a body that did not fit in the pipe.
// Its methods do nothing on nil.
type bodyWriter struct {
	f    *os.File
	done chan struct{}
}

// stop makes the writer give up at deadline.
func (w *bodyWriter) stop(deadline time.Time) {
	if w != nil {
		_ = w.f.SetWriteDeadline(deadline)
	}
}

// wait waits for the writer to end.
func (w *bodyWriter) wait() {
	if w != nil {
		<-w.done
	}
}

// messageEnv returns the variables that describe m to a command.
func messageEnv(m *worker.Message) []string {
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

// readAll reads r to its end or to its first error, as Write would take
// it, through a buffer of its own: io.Copy would allocate 32 KiB for the
// usual few bytes of output, or none at all.
func (b *boundedBuffer) readAll(r io.Reader) {
	buf := make([]byte, 512)
	for {
		n, err := r.Read(buf)
		_, _ = b.Write(buf[:n])
		if err != nil {
			return
		}
	}
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

// replies reports whether the command's standard output answers m.
func (e *Exec) replies(m *worker.Message) bool { return m.ReplyTo != "" && !e.NoReply }
