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
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: warren publish [flags] [body ...]\n\nPublishes each body, or each line of stdin when there is none, to\nWARREN_EXCHANGE (or the default exchange, to WARREN_QUEUE), persistent and\nconfirmed. Exits 1 if any message was not confirmed.\n\nFlags:")
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
	conn, node, err := dialer(cfg, connectionName(cfg)+"-publish").Dial(ctx)
	if err != nil {
		logger.Error("connect", zap.Error(err))
		return exitFatal
	}
	defer conn.Close()
	logger.Debug("connected", zap.String("node", node))
	if cfg.Declare {
		ch, err := conn.Channel()
		if err != nil {
			logger.Error("open channel", zap.Error(err))
			return exitFatal
		}
		if err := cfg.Topology().Apply(ch); err != nil {
			logger.Error("declare topology", zap.Error(err))
			return exitFatal
		}
		ch.Close()
	}
	p, err := broker.NewPublisher(conn)
	if err != nil {
		logger.Error("open publisher", zap.Error(err))
		return exitFatal
	}
	defer p.Close()

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
	confirmed, err := p.PublishAll(ctx, cfg.Exchange, key, publishWindow, msgs)
	fmt.Fprintf(stdout, "published %d of %d messages\n", confirmed, total)
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
