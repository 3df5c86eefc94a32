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

	"github.com/warren-mq/warren/broker"
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
	cfg, code := loadCommand(stderr, "warren dead", "the queue whose dead-letter queue (WARREN_QUEUE.dead) to use")
	if code != exitOK {
		return code
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	dial := dialer(cfg, connectionName(cfg)+"-dead").Dial
	topo := cfg.Topology()
	if limit != nil {
		r, err := deadletter.ReplayAcross(ctx, dial, topo, *limit, *retryFor)
		summary := fmt.Sprintf("replayed %d messages from %s to %s", r.Moved, topo.DeadQueue(), topo.Queue)
		if r.Lost > 0 {
			summary += fmt.Sprintf("; %s lost on the way: up to %s may be in %s twice",
				plural(r.Lost, "connection"), plural(r.Lost, "message"), topo.Queue)
		}
		if errors.Is(err, deadletter.ErrUnconfirmed) {
			summary += fmt.Sprintf(" (1 unconfirmed: its copy may or may not have reached %s; the message stays in %s)", topo.Queue, topo.DeadQueue())
		}
		fmt.Fprintln(stdout, summary)
		return failed(ctx, stderr, "warren dead replay", err)
	}
	conn, _, err := dial(ctx)
	if err != nil {
		return failed(ctx, stderr, "warren dead list", err)
	}
	closeConn := broker.CloseWhenDone(ctx, conn)
	defer closeConn() //nolint:errcheck // the listing is done
	count, entries, err := deadletter.List(ctx, conn, topo, *n)
	if err != nil {
		return failed(ctx, stderr, "warren dead list", fmt.Errorf("list dead messages: %w", err))
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

// plural returns "1 thing" or "n things".
func plural(n int, thing string) string {
	if n == 1 {
		return "1 " + thing
	}
	return fmt.Sprintf("%d %ss", n, thing)
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
