package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os/signal"
	"strconv"
	"syscall"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"go.uber.org/zap"

	"github.com/warren-mq/warren/deadletter"
)

// runDead runs "warren dead list" and "warren dead replay".
func runDead(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "warren dead: want a subcommand: list or replay")
		return exitConfig
	}
	fs := flag.NewFlagSet("dead "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	var n, limit *int
	var retryFor *time.Duration
	switch args[0] {
	case "list":
		n = fs.Int("n", 10, "show the first `N` messages")
		fs.Usage = func() {
			fmt.Fprintln(stderr, "Usage: warren dead list [-n N]\n\nShows how many messages WARREN_QUEUE.dead holds and the first N, leaving\nthem all in place.\n\nFlags:")
			fs.PrintDefaults()
		}
	case "replay":
		limit = fs.Int("limit", 0, "replay at most `N` messages (0: all there when it starts)")
		retryFor = fs.Duration("retry-for", time.Minute, "once a connection is lost, how long to keep trying the nodes to go on (0: give up at once)")
		fs.Usage = func() {
			fmt.Fprintln(stderr, "Usage: warren dead replay [-limit N]\n\nMoves messages from WARREN_QUEUE.dead back to WARREN_QUEUE, their attempts\nreset; each is removed from the dead-letter queue only once its copy is\nconfirmed. Safe while warren consumes.\n\nFlags:")
			fs.PrintDefaults()
		}
	default:
		fmt.Fprintf(stderr, "warren dead: unknown subcommand %q: want list or replay\n", args[0])
		return exitConfig
	}
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitConfig
	}
	if (n != nil && *n < 0) || (limit != nil && *limit < 0) || (retryFor != nil && *retryFor < 0) {
		fmt.Fprintln(stderr, "warren dead: counts must be 0 or more")
		return exitConfig
	}
	cfg, logger, code := load(stderr)
	if code != exitOK {
		return code
	}
	defer logger.Sync() //nolint:errcheck // nothing to do if stderr is gone

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	dial := dialer(cfg, connectionName(cfg)+"-dead").Dial
	topo := cfg.Topology()
	if limit != nil {
		moved, err := deadletter.ReplayAcross(ctx, dial, topo, *limit, *retryFor)
		fmt.Fprintf(stdout, "replayed %d messages from %s to %s\n", moved, topo.DeadQueue(), topo.Queue)
		if err != nil {
			logger.Error("replay dead messages", zap.Error(err))
			return exitFatal
		}
		return exitOK
	}
	conn, _, err := dial(ctx)
	if err != nil {
		logger.Error("connect", zap.Error(err))
		return exitFatal
	}
	defer conn.Close()
	count, entries, err := deadletter.List(ctx, conn, topo, *n)
	if err != nil {
		logger.Error("list dead messages", zap.Error(err))
		return exitFatal
	}
	printEntries(stdout, topo.DeadQueue(), count, entries)
	return exitOK
}

// previewRunes bounds the body shown per dead message.
const previewRunes = 60

func printEntries(w io.Writer, queue string, count int, entries []deadletter.Entry) {
	fmt.Fprintf(w, "%s holds %d messages\n", queue, count)
	if len(entries) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 1, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "MESSAGE ID\tDIED AT\tATTEMPTS\tROUTING KEY\tREASON\tBODY")
	for _, e := range entries {
		died := "-"
		if !e.DiedAt.IsZero() {
			died = e.DiedAt.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", orDash(e.MessageID), died, e.Attempts, orDash(e.RoutingKey),
			strconv.Quote(truncate(e.Reason, 120)), preview(e.Body))
	}
	tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func truncate(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	return string([]rune(s)[:n]) + "…"
}

// preview shows the start of a body, quoted, or its size if it is not text.
func preview(b []byte) string {
	if !utf8.Valid(b) {
		return fmt.Sprintf("(%d bytes, not UTF-8)", len(b))
	}
	return strconv.Quote(truncate(string(b), previewRunes))
}
