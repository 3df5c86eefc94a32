package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"iter"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel/trace"

	"github.com/warren-mq/warren/broker"
	"github.com/warren-mq/warren/config"
	"github.com/warren-mq/warren/tracing"
	"github.com/warren-mq/warren/tracing/otlp"
)

// publishWindow and publishWindowBytes bound the messages warren publish
// keeps unconfirmed, and holds in memory, in number and in bytes.
const (
	publishWindow      = 256
	publishWindowBytes = 256 << 20
)

func runPublish(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("publish", flag.ContinueOnError)
	fs.SetOutput(stderr)
	routingKey := fs.String("routing-key", "", "routing key (default WARREN_QUEUE, or the first of WARREN_BINDING_KEYS with WARREN_EXCHANGE)")
	count := fs.Int("count", 1, "publish each body this many times")
	contentType := fs.String("content-type", "text/plain", "content type of the messages")
	retryFor := fs.Duration("retry-for", time.Minute, "once a connection is lost, how long to keep trying the nodes to send the unconfirmed messages again (0: give up at once)")
	declare := fs.Bool("declare", false, "declare the topology, as the worker does with the same environment, instead of checking that the queue (or WARREN_EXCHANGE) exists")
	reply := fs.Bool("reply", false, "send each body as a request (direct reply-to, a correlation id of its own) and print the body of its reply, in turn; exits 1 if a reply does not come within -timeout, or is warren's error reply")
	timeout := fs.Duration("timeout", 30*time.Second, "with -reply: how long to wait for each reply")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: warren publish [flags] [body ...]\n\nPublishes each body, or each line of stdin when there is none, to\nWARREN_EXCHANGE (or the default exchange, to WARREN_QUEUE), persistent and\nconfirmed. It only checks that the queue (or the exchange) exists, and\nleaves declaring it to the worker; -declare declares it. When its\nconnection is lost, the messages whose confirm was lost are sent again,\nwith the same message id, on another node of WARREN_AMQP_URL. Exits 1 if\nany message was not confirmed, or a line of stdin could not be read.\n\nWith -reply, each body is a request: warren publish waits for its reply\nand prints the reply's body on stdout (and a newline, unless it ends with\none), then sends the next.\n\nFlags:")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitConfig
	}
	if *timeout <= 0 {
		fmt.Fprintf(stderr, "warren publish: -timeout=%s: want more than 0\n", *timeout)
		return exitConfig
	}
	if *count < 1 {
		fmt.Fprintf(stderr, "warren publish: -count=%d: want 1 or more\n", *count)
		return exitConfig
	}
	cfg, code := loadCommand(stderr, "warren publish", "the queue to publish to")
	if code != exitOK {
		return code
	}

	key := *routingKey
	if key == "" {
		key = cfg.Queue
		if cfg.Exchange != "" && len(cfg.BindingKeys) > 0 {
			key = cfg.BindingKeys[0]
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if *retryFor < 0 {
		fmt.Fprintf(stderr, "warren publish: -retry-for=%s: want 0 or more\n", *retryFor)
		return exitConfig
	}
	stream := &broker.Stream{
		Dial:        dialer(cfg, connectionName(cfg)+"-publish").Dial,
		Window:      publishWindow,
		WindowBytes: publishWindowBytes,
		RetryFor:    *retryFor,
		Connected: func(node string, lost error) {
			if lost != nil {
				fmt.Fprintf(stderr, "warren publish: connection lost (%v); sending the unconfirmed messages again through %s\n", lost, node)
			}
		},
		Blocked: func(b amqp.Blocking) {
			if b.Active {
				fmt.Fprintf(stderr, "warren publish: the broker blocks publishing (%s); waiting until it unblocks, or a signal\n", b.Reason)
			}
		},
		Setup: func(conn *amqp.Connection) error {
			ch, err := conn.Channel()
			if err != nil {
				return fmt.Errorf("open channel: %w", err)
			}
			defer ch.Close()
			if *declare {
				topo := cfg.Topology()
				topo.Declare = true
				if err := topo.Apply(ch); err != nil {
					return fmt.Errorf("declare topology: %w", err)
				}
				return nil
			}
			return checkTarget(ch, cfg.Exchange, key)
		},
	}

	var (
		total int
		input = argBodies(fs.Args())
		lr    *lineReader
	)
	if fs.NArg() == 0 {
		lr = &lineReader{r: bufio.NewReaderSize(stdin, 64<<10), max: maxLine}
		input = lr.lines(ctx)
	}
	tp, err := otlp.New(ctx, cfg.Tracing, version)
	if err != nil {
		fmt.Fprintf(stderr, "warren publish: start tracing: %v\n", err)
		return exitFatal
	}
	defer stopTracing(tp, func(err error) { fmt.Fprintf(stderr, "warren publish: tracing: %v\n", err) })
	var tracer trace.Tracer
	if tp != nil {
		tracer = tp.TracerProvider().Tracer(tracing.ScopeName)
	}
	msgs := func(yield func(amqp.Publishing) bool) {
		for body := range input {
			for range *count {
				total++
				msg := amqp.Publishing{ContentType: *contentType, Body: body, AppId: "warren"}
				// Each message starts a trace of its own: its producer
				// span covers handing it to the stream.
				var span trace.Span
				if tracer != nil {
					span, msg.Headers = tracing.StartPublish(ctx, tracer, cfg.Exchange, key)
				}
				ok := yield(msg)
				if span != nil {
					span.End()
				}
				if !ok {
					return
				}
			}
		}
	}
	if *reply {
		err := request(ctx, stream, cfg.Exchange, key, *timeout, msgs, stdout)
		if err == nil && lr != nil {
			err = lr.err
		}
		return failed(ctx, stderr, "warren publish", err)
	}
	r, err := stream.Run(ctx, cfg.Exchange, key, msgs)
	if err == nil || total > 0 {
		// Nothing was read when no node could be reached at all.
		fmt.Fprintln(stdout, summary(r, total))
	}
	if err == nil && lr != nil {
		err = lr.err
	}
	if err == nil && r.Confirmed != total {
		err = errors.New("not every message was confirmed")
	}
	return failed(ctx, stderr, "warren publish", err)
}

// request sends each message of msgs as a request, on a connection of
// its own set up as stream's, and prints the replies (runRequests).
func request(ctx context.Context, stream *broker.Stream, exchange, key string, timeout time.Duration, msgs iter.Seq[amqp.Publishing], stdout io.Writer) error {
	conn, _, err := stream.Dial(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := stream.Setup(conn); err != nil {
		return err
	}
	return runRequests(ctx, conn, exchange, key, timeout, msgs, stdout)
}

// checkTarget checks that what warren publish sends to exists: the
// exchange, or with the default exchange, the queue named by key. It
// creates nothing: the worker declares the topology, with settings (queue
// type, retry queues) that publish's environment may not share.
func checkTarget(ch *amqp.Channel, exchange, key string) error {
	var err error
	what := fmt.Sprintf("queue %q", key)
	if exchange != "" {
		what = fmt.Sprintf("exchange %q", exchange)
		err = ch.ExchangeDeclarePassive(exchange, "", // the type is not checked
			true,  // durable
			false, // autoDelete
			false, // internal
			false, // noWait
			nil)
	} else {
		_, err = ch.QueueDeclarePassive(key,
			true,  // durable
			false, // autoDelete
			false, // exclusive
			false, // noWait
			nil)
	}
	var aerr *amqp.Error
	if errors.As(err, &aerr) && aerr.Code == amqp.NotFound {
		return fmt.Errorf("%s does not exist: start the worker, which declares it, or publish with -declare", what)
	}
	if err != nil {
		return fmt.Errorf("check %s: %w", what, err)
	}
	return nil
}

// loadCommand reads the configuration of the subcommand cmd, whose
// WARREN_QUEUE is queueWant; on failure it says why in one line on stderr
// and returns the exit code. Unknown variables are named, one line each.
func loadCommand(stderr io.Writer, cmd, queueWant string) (*config.Config, int) {
	cfg, err := config.Load()
	if err != nil {
		var cerr *config.Error
		if errors.As(err, &cerr) && cerr.Var == "WARREN_QUEUE" && cerr.Unset {
			cerr.Want = queueWant
		}
		fmt.Fprintf(stderr, "%s: %v\n", cmd, err)
		return nil, exitConfig
	}
	for _, name := range config.Unknown(os.Environ()) {
		fmt.Fprintf(stderr, "%s: unknown variable %s ignored\n", cmd, name)
	}
	return cfg, exitOK
}

// failed says on stderr, in one line, why cmd failed, and returns its exit
// code; a nil err is no failure.
func failed(ctx context.Context, stderr io.Writer, cmd string, err error) int {
	switch {
	case ctx.Err() != nil:
		fmt.Fprintf(stderr, "%s: interrupted by a signal\n", cmd)
	case err != nil:
		fmt.Fprintf(stderr, "%s: %v\n", cmd, err)
	default:
		return exitOK
	}
	return exitFatal
}

// summary says what became of the total messages read.
func summary(r broker.Result, total int) string {
	s := fmt.Sprintf("published %d of %d messages", r.Confirmed, total)
	var notes []string
	if r.Refused > 0 {
		notes = append(notes, fmt.Sprintf("%d refused by the broker", r.Refused))
	}
	switch {
	case r.Unconfirmed == 1:
		notes = append(notes, "1 unconfirmed: it may or may not have reached the queue")
	case r.Unconfirmed > 1:
		notes = append(notes, fmt.Sprintf("%d unconfirmed: they may or may not have reached the queue", r.Unconfirmed))
	}
	if len(notes) > 0 {
		s += " (" + strings.Join(notes, "; ") + ")"
	}
	return s
}

// argBodies yields the bodies given as arguments.
func argBodies(bodies []string) iter.Seq[[]byte] {
	return func(yield func([]byte) bool) {
		for _, b := range bodies {
			if !yield([]byte(b)) {
				return
			}
		}
	}
}

// maxLine is the longest line of stdin published: RabbitMQ's default
// max_message_size (128 MiB), which a broker refuses to raise past 512 MiB.
const maxLine = 128 << 20

// lineReader yields the lines of stdin, each whole, however long, up to
// max bytes. It stops at the first line it cannot read, and err then says
// which line and why.
type lineReader struct {
	r   *bufio.Reader
	max int
	n   int // lines read
	err error
}

// lines yields the lines until one cannot be read or ctx ends. Each line
// is read by a goroutine of its own, so that a signal ends the command
// even while stdin has nothing to give: a read of stdin cannot be
// interrupted, and a goroutine abandoned in one ends with the process.
func (lr *lineReader) lines(ctx context.Context) iter.Seq[[]byte] {
	type read struct {
		line []byte
		err  error
	}
	return func(yield func([]byte) bool) {
		for {
			got := make(chan read, 1)
			go func() {
				line, err := lr.next()
				got <- read{line, err}
			}()
			var r read
			select {
			case <-ctx.Done():
				return
			case r = <-got:
			}
			if r.err == io.EOF {
				return
			}
			if r.err != nil {
				lr.err = fmt.Errorf("stdin line %d: %w", lr.n, r.err)
				return
			}
			if !yield(r.line) {
				return
			}
		}
	}
}

// next returns the next line, without its line ending.
func (lr *lineReader) next() ([]byte, error) {
	lr.n++
	var line []byte
	for {
		chunk, err := lr.r.ReadSlice('\n')
		line = append(line, chunk...)
		switch {
		case err == io.EOF && len(line) == 0:
			lr.n--
			return nil, io.EOF
		case len(line) > lr.max+len("\r\n"):
			return nil, lr.tooLong()
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case err != nil && err != io.EOF:
			return nil, fmt.Errorf("read: %w; not published, nor what follows", err)
		}
		// A whole line; the last one may have no line ending.
		line = bytes.TrimSuffix(bytes.TrimSuffix(line, []byte("\n")), []byte("\r"))
		if len(line) > lr.max {
			return nil, lr.tooLong()
		}
		return line, nil
	}
}

func (lr *lineReader) tooLong() error {
	return fmt.Errorf("longer than %d bytes, the most a broker takes by default (max_message_size); not published, nor what follows", lr.max)
}
