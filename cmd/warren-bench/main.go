// Command warren-bench measures warren against reference consumers on the
// local broker and prints one table ("make bench").
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/warren-mq/warren/internal/bench"
	"github.com/warren-mq/warren/internal/slowlink"
)

func main() { os.Exit(run()) }

func run() int {
	if len(os.Args) > 1 && os.Args[1] == "link" {
		return serveLink(os.Args[2:])
	}
	binary := flag.String("warren", "bin/warren", "the warren binary to measure")
	n := flag.Int("n", 100_000, "messages per drain")
	quick := flag.Bool("quick", false, "a short run, to check that the benchmark works")
	types := flag.String("queue-types", "classic,quorum", "queue types to drain")
	verbose := flag.Bool("v", false, "log each run")
	rounds := flag.Int("rounds", 3, "rounds of reference, warren, warren, reference per drain setting and for exec")
	only := flag.String("only", "", "parts to run, comma-separated: drains, defaults (the drains at warren's defaults and at prefetch 200, concurrency 4, only), link (the drain at defaults against the tutorial's over a link that delays each direction, a round trip of a few ms), trace (the drain at defaults with tracing off and on), http, exec, fair, publish, latency; empty: all")
	flag.Parse()

	url := os.Getenv("WARREN_TEST_AMQP_URL")
	if url == "" {
		url = "amqp://guest:guest@localhost:5672/"
	}
	e := bench.Env{URL: url, Binary: *binary}
	if self, err := os.Executable(); err == nil {
		e.LinkCommand = []string{self, "link"}
	}
	if *verbose {
		e.Log = os.Stderr
	}
	o := bench.Options{Messages: *n, Tutorial: *n / 5, Handler: *n / 5, ExecN: 2000, FairN: 60, QueueTypes: strings.Split(*types, ","), Rounds: max(*rounds, 1)}
	if *quick {
		o = bench.Options{Messages: 5000, Tutorial: 1000, Handler: 2000, ExecN: 200, FairN: 60, QueueTypes: o.QueueTypes, Rounds: 1}
	}
	if *only != "" {
		o.Only = strings.Split(*only, ",")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	fmt.Printf("warren-bench %s: %d CPUs (CPU-bound loops on all of them at once: %.2fx one alone), %s, %d messages of 100 B per drain\n\n",
		time.Now().UTC().Format("2006-01-02"), runtime.NumCPU(), bench.CPUScaling(time.Second), runtime.Version(), o.Messages)
	if err := bench.Run(ctx, e, o, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "warren-bench:", err)
		return 1
	}
	return 0
}

// serveLink runs the link of the link part, started by the benchmark as
// "warren-bench link -broker URL -delay D": it prints its URL and serves
// until its standard input ends.
func serveLink(args []string) int {
	fs := flag.NewFlagSet("link", flag.ContinueOnError)
	broker := fs.String("broker", "", "the broker's URL")
	delay := fs.Duration("delay", 0, "the least delay in each direction")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if err := slowlink.Serve(*broker, *delay, os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "warren-bench link:", err)
		return 1
	}
	return 0
}
