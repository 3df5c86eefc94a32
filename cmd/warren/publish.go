package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"iter"
	"os/signal"
	"strings"
	"syscall"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap"

	"github.com/warren-mq/warren/broker"
)

// publishWindow is how many messages warren publish keeps unconfirmed.
const publishWindow = 256

func runPublish(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("publish", flag.ContinueOnError)
	fs.SetOutput(stderr)
	routingKey := fs.String("routing-key", "", "routing key (default WARREN_QUEUE, or the first of WARREN_BINDING_KEYS with WARREN_EXCHANGE)")
	count := fs.Int("count", 1, "publish each body this many times")
	contentType := fs.String("content-type", "text/plain", "content type of the messages")
	retryFor := fs.Duration("retry-for", time.Minute, "once a connection is lost, how long to keep trying the nodes to send the unconfirmed messages again (0: give up at once)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: warren publish [flags] [body ...]\n\nPublishes each body, or each line of stdin when there is none, to\nWARREN_EXCHANGE (or the default exchange, to WARREN_QUEUE), persistent and\nconfirmed. When its connection is lost, the messages whose confirm was lost\nare sent again, with the same message id, on another node of\nWARREN_AMQP_URL. Exits 1 if any message was not confirmed.\n\nFlags:")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitConfig
	}
	if *count < 1 {
		fmt.Fprintf(stderr, "warren publish: -count=%d: want 1 or more\n", *count)
		return exitConfig
	}
	cfg, logger, code := load(stderr)
	if code != exitOK {
		return code
	}
	defer logger.Sync() //nolint:errcheck // nothing to do if stderr is gone

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
		Dial:     dialer(cfg, connectionName(cfg)+"-publish").Dial,
		Window:   publishWindow,
		RetryFor: *retryFor,
		Connected: func(node string, lost error) {
			if lost != nil {
				logger.Warn("connection lost; sending the unconfirmed messages again", zap.String("node", node), zap.Error(lost))
				return
			}
			logger.Debug("connected", zap.String("node", node))
		},
	}
	if cfg.Declare {
		stream.Setup = func(conn *amqp.Connection) error {
			ch, err := conn.Channel()
			if err != nil {
				return fmt.Errorf("open channel: %w", err)
			}
			defer ch.Close()
			if err := cfg.Topology().Apply(ch); err != nil {
				return fmt.Errorf("declare topology: %w", err)
			}
			return nil
		}
	}

	var total int
	msgs := func(yield func(amqp.Publishing) bool) {
		for body := range bodies(fs.Args(), stdin) {
			for range *count {
				total++
				if !yield(amqp.Publishing{ContentType: *contentType, Body: body, AppId: "warren"}) {
					return
				}
			}
		}
	}
	confirmed, err := stream.Publish(ctx, cfg.Exchange, key, msgs)
	if err == nil || total > 0 {
		// Nothing was read when no node could be reached at all.
		fmt.Fprintf(stdout, "published %d of %d messages\n", confirmed, total)
	}
	if err != nil || confirmed != total {
		logger.Error("publish", zap.Int("confirmed", confirmed), zap.Int("total", total), zap.Error(err))
		return exitFatal
	}
	return exitOK
}

// bodies yields args, or the lines of stdin when there are none.
func bodies(args []string, stdin io.Reader) iter.Seq[[]byte] {
	return func(yield func([]byte) bool) {
		if len(args) > 0 {
			for _, a := range args {
				if !yield([]byte(a)) {
					return
				}
			}
			return
		}
		sc := bufio.NewScanner(stdin)
		sc.Buffer(make([]byte, 64*1024), 16<<20)
		for sc.Scan() {
			if !yield([]byte(strings.TrimSuffix(sc.Text(), "\r"))) {
				return
			}
		}
	}
}
