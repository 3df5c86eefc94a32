// Package observability proves the chart's Grafana dashboard and its
// PrometheusRule alerts with Prometheus itself: the real warren binary
// runs a short scenario against a RabbitMQ node (successes, retries, dead
// letters, a copy the broker refused, a hung handler, a cut link, its
// endpoint down, all under a rate limit), its
// /metrics and the node's are scraped every second into Prometheus's TSDB,
// and every panel's queries and every alert are evaluated by Prometheus's
// PromQL engine and rule manager. It is a module of its own, so that
// neither the daemon's go.mod nor the chart tests' gain
// github.com/prometheus/prometheus.
package observability

import (
	"context"
	"flag"
	"fmt"
	"math"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/util/teststorage"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-mq/warren/internal/brokertest"
	"github.com/warren-mq/warren/internal/warrentest"
)

// update writes the picture of the dashboard, docs/dashboard.svg, from the
// run (go test -run TestDashboardAndAlerts -update).
var update = flag.Bool("update", false, "write docs/dashboard.svg from this run")

const (
	repoRoot   = "../../.."
	namespace  = "obs"
	scrapeStep = time.Second
	// rateInterval is Grafana's $__rate_interval for a 1 s scrape: four
	// scrape intervals.
	rateInterval = 4 * scrapeStep
	// alertSlack is how long after its phase an alert may first fire: its
	// for (2 s in the test's values) and a rate's window catching up.
	alertSlack = 5 * scrapeStep
)

// The scenario's figures: what the panels must show.
const (
	oks      = 20 // answered 2xx at once
	flakies  = 5  // 503 on their first attempt, then 2xx: one retry each
	poisons  = 3  // 422: dead at once
	backlog  = 10 // published while warren is cut off
	down     = 10 // published while the endpoint is down: they wait for it
	tail     = 5  // published after the endpoint is back
	prefetch = 10
	// rateLimit paces the worker under test: 28 messages at once wait for
	// their turns for half a second, and the rate limit panel shows it.
	rateLimit = 50
)

// phase is a stretch of the scenario, drawn on the picture.
type phase struct {
	name     string
	from, to time.Time
}

func TestDashboardAndAlerts(t *testing.T) {
	if testing.Short() {
		t.Skip("runs warren and a RabbitMQ node for about a minute")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	root, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	bin, err := warrentest.Build(t.TempDir(), "./cmd/warren", []string{"CGO_ENABLED=0"}, "-C", root, "-trimpath")
	if err != nil {
		t.Fatal(err)
	}

	// The node: RabbitMQ's own metrics per queue, refreshed every second.
	nodes := brokertest.NewNodes(t)
	nodes.EnablePlugins(t, "rabbitmq_prometheus")
	promAddr, err := warrentest.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	node := nodes.Start(t, "obs",
		"prometheus.tcp.ip = 127.0.0.1",
		"prometheus.tcp.port = "+promAddr[strings.LastIndex(promAddr, ":")+1:],
		"prometheus.return_per_object_metrics = true",
		"collect_statistics_interval = 1000")
	proxy := brokertest.NewProxyTo(t, node.URL())
	onNode := brokertest.At(node.URL())
	q := brokertest.Name(t) // the node goes with the test

	// The worker under test reaches the node through the proxy, which cuts
	// it off; a healthy one works the machine's broker beside it.
	epA := warrentest.NewEndpoint(t, warrentest.EndpointOptions{Work: 20 * time.Millisecond})
	a := warrentest.NewProcess(t, warrentest.ProcessConfig{Name: "obs-0", Binary: bin, Env: []string{
		"WARREN_AMQP_URL=" + proxy.URL(), "WARREN_QUEUE=" + q,
		"WARREN_HANDLER=http", "WARREN_HTTP_URL=" + epA.URL("a"),
		fmt.Sprint("WARREN_PREFETCH=", prefetch), "WARREN_CONCURRENCY=4",
		"WARREN_RETRY_DELAYS=300ms", "WARREN_MAX_ATTEMPTS=3", "WARREN_HANDLER_TIMEOUT=8s",
		// Probes at most a second apart: the circuit closes soon after
		// the endpoint is back.
		"WARREN_CIRCUIT_MAX_PROBE_INTERVAL=1s", fmt.Sprint("WARREN_RATE_LIMIT=", rateLimit),
	}})
	qHealthy := brokertest.Queue(t)
	epB := warrentest.NewEndpoint(t, warrentest.EndpointOptions{Work: 10 * time.Millisecond})
	b := warrentest.NewProcess(t, warrentest.ProcessConfig{Name: "healthy-0", Binary: bin, Env: []string{
		"WARREN_AMQP_URL=" + brokertest.URL(), "WARREN_QUEUE=" + qHealthy,
		"WARREN_HANDLER=http", "WARREN_HTTP_URL=" + epB.URL("b"), "WARREN_RETRY_DELAYS=1s",
	}})
	a.Start(t)
	b.Start(t)
	brokertest.WaitFor(t, 30*time.Second, "both workers ready", func() bool { return a.Ready() && b.Ready() })

	db := teststorage.New(t)
	engine := promql.NewEngine(promql.EngineOpts{
		MaxSamples: 50_000_000, Timeout: time.Minute, LookbackDelta: 5 * time.Minute,
		EnableAtModifier: true, EnableNegativeOffset: true, Parser: parser.NewParser(parser.Options{}),
	})
	ev := evaluator{engine: engine, db: db}
	jobA, jobB := "obs-metrics", "healthy-metrics" // the metrics Services' names, as the chart renders them
	pod := func(p *warrentest.Process, job string) target {
		host := strings.TrimPrefix(p.Health, "http://")
		return target{url: p.Health + "/metrics", labels: labels.FromStrings(
			"job", job, "namespace", namespace, "pod", p.Name, "instance", host)}
	}
	sc := newScraper(db.DB, pod(a, jobA), pod(b, jobB), target{url: "http://" + promAddr + "/metrics",
		labels: labels.FromStrings("job", "rabbitmq", "namespace", "messaging", "instance", promAddr)})
	scrapeCtx, stopScrape := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { sc.run(scrapeCtx, scrapeStep) })
	// On any way out, the scraper and the publisher below stop first.
	defer func() { cancel(); wg.Wait() }()

	// seen evaluates expr over what was scraped so far: the scenario waits
	// for what the dashboard will show.
	seen := func(expr string) float64 {
		_, last := sc.span()
		if last.IsZero() {
			return math.NaN()
		}
		v, err := ev.instant(ctx, expr, last)
		if err != nil {
			t.Fatal(err)
		}
		if len(v) != 1 {
			return math.NaN()
		}
		return v[0].last()
	}
	outcome := func(o string) string {
		return fmt.Sprintf(`warren_messages_total{job=%q, outcome=%q}`, jobA, o)
	}
	waitSeen := func(what, expr string, want func(float64) bool) {
		t.Helper()
		brokertest.WaitFor(t, 40*time.Second, what+" in the scrapes", func() bool { return want(seen(expr)) })
	}
	is := func(n float64) func(float64) bool { return func(v float64) bool { return v == n } }
	atLeast := func(n float64) func(float64) bool { return func(v float64) bool { return v >= n } }
	brokertest.WaitFor(t, 20*time.Second, "the first scrapes", func() bool { return seen(`up{job="`+jobA+`"}`) == 1 })

	// The healthy worker gets a message every quarter second throughout.
	trickleCtx, stopTrickle := context.WithCancel(ctx)
	conn := brokertest.Dial(t)
	tch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	var trickled int
	wg.Go(func() {
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-trickleCtx.Done():
				return
			case <-tick.C:
			}
			if tch.PublishWithContext(trickleCtx, "", qHealthy, false, false, amqp.Publishing{Body: []byte(fmt.Sprint("ok-healthy-", trickled))}) == nil {
				trickled++
			}
		}
	})

	var phases []phase
	begin := func(name string) func() {
		p := phase{name: name, from: time.Now()}
		return func() { p.to = time.Now(); phases = append(phases, p) }
	}

	// Traffic: successes, retries, dead letters.
	end := begin("traffic")
	onNode.Publish(t, q, brokertest.Bodies("ok", oks))
	onNode.Publish(t, q, brokertest.Bodies("flaky", flakies))
	onNode.Publish(t, q, brokertest.Bodies("poison", poisons))
	waitSeen("all acked", outcome("ack"), is(oks+flakies))
	waitSeen("the poison dead", outcome("dead"), is(poisons))
	end()

	// A copy refused: the dead-letter queue deleted under warren.
	end = begin("refused")
	onNode.DeleteQueues(t, q+".dead")
	onNode.Publish(t, q, []string{"poison-after-delete"})
	waitSeen("a copy failure", fmt.Sprintf(`sum(warren_copy_failures_total{job=%q})`, jobA), atLeast(1))
	waitSeen("its dead copy", outcome("dead"), is(poisons+1))
	end()

	// A hung handler: in flight and nothing settled until its timeout.
	end = begin("stuck")
	epA.SetMode(warrentest.Hang)
	onNode.Publish(t, q, []string{"stuck-1"})
	brokertest.WaitFor(t, 10*time.Second, "the endpoint holding the message", func() bool { return epA.Busy("a") == 1 })
	epA.SetMode(warrentest.Answer)
	waitSeen("the stuck message retried and acked", outcome("ack"), is(oks+flakies+1))
	end()

	// A cut link: not connected, not ready, a backlog in the queue.
	waitSeen("nothing in flight", fmt.Sprintf(`warren_inflight_messages{job=%q}`, jobA), is(0))
	end = begin("cut")
	proxy.Refuse(true)
	proxy.Cut()
	waitSeen("warren disconnected", fmt.Sprintf(`warren_connected{job=%q}`, jobA), is(0))
	onNode.Publish(t, q, brokertest.Bodies("backlog", backlog))
	waitSeen("the backlog in RabbitMQ's metrics", fmt.Sprintf(`rabbitmq_queue_messages_ready{queue=%q}`, q), is(backlog))
	waitSeen("5 s of scrapes disconnected", fmt.Sprintf(`max_over_time(warren_connected{job=%q}[5s])`, jobA), is(0))
	proxy.Refuse(false)
	waitSeen("consuming again", fmt.Sprintf(`warren_consuming{job=%q}`, jobA), is(1))
	waitSeen("the backlog acked", outcome("ack"), is(oks+flakies+1+backlog))
	end()

	// The endpoint down: the circuit opens and the messages wait in the
	// queue, untried, until a probe finds the endpoint back.
	end = begin("down")
	epA.SetMode(warrentest.Fail)
	onNode.Publish(t, q, brokertest.Bodies("down", down))
	waitSeen("the circuit open", fmt.Sprintf(`warren_circuit_open{job=%q}`, jobA), is(1))
	waitSeen("5 s of scrapes with the circuit open", fmt.Sprintf(`min_over_time(warren_circuit_open{job=%q}[5s])`, jobA), is(1))
	epA.SetMode(warrentest.Answer)
	waitSeen("the circuit closed", fmt.Sprintf(`warren_circuit_open{job=%q}`, jobA), is(0))
	waitSeen("the messages of the outage acked", outcome("ack"), is(oks+flakies+1+backlog+down))
	end()

	// The tail: back to work.
	end = begin("tail")
	onNode.Publish(t, q, brokertest.Bodies("tail", tail))
	waitSeen("the tail acked", outcome("ack"), is(oks+flakies+1+backlog+down+tail))
	waitSeen("the queue empty in RabbitMQ's metrics", fmt.Sprintf(`rabbitmq_queue_messages_ready{queue=%q}`, q), is(0))
	// A few quiet scrapes: the panels' last points show the calm.
	quiet := sc.rounds() + 3
	brokertest.WaitFor(t, 10*time.Second, "three more scrapes", func() bool { return sc.rounds() >= quiet })
	end()
	stopTrickle()
	waitSeen("the healthy worker's messages acked", fmt.Sprintf(`warren_messages_total{job=%q, outcome="ack"}`, jobB), atLeast(20))
	stopScrape()
	wg.Wait()
	if len(sc.errors) > 0 {
		t.Fatalf("the TSDB refused samples: %v", sc.errors)
	}
	from, to := sc.span()
	t.Logf("scraped %s every %s; phases: %s", to.Sub(from).Round(time.Second), scrapeStep, phaseList(phases, from))

	t.Run("dashboard", func(t *testing.T) {
		panels, vars := readDashboard(t)
		values := map[string]string{
			"datasource":      "prometheus",
			"namespace":       namespace,
			"job":             regexp.QuoteMeta(jobA),
			"queue":           strings.ReplaceAll(regexp.QuoteMeta(q), `\`, `\\`), // as Grafana escapes a regex for PromQL
			"__rate_interval": fmt.Sprint(rateInterval),
			"__interval":      fmt.Sprint(scrapeStep),
			// The whole run: the first scrape is in the range.
			"__range": fmt.Sprintf("%ds", int(to.Sub(from).Seconds())+1),
		}
		for _, v := range vars {
			if _, ok := values[v.Name]; !ok {
				t.Errorf("the dashboard's variable %q has no value in the test", v.Name)
			}
		}
		checkVariables(ctx, t, ev, vars, values, map[string]string{"namespace": namespace, "job": jobA, "queue": q}, to)
		// Grafana's steps end at the range's end: the last scrape is a point.
		start := to.Add(-time.Duration(math.Ceil(float64(to.Sub(from))/float64(scrapeStep))) * scrapeStep)
		results := evaluatePanels(ctx, t, ev, panels, values, start, to, scrapeStep)
		u, err := url.Parse(proxy.URL())
		if err != nil {
			t.Fatal(err)
		}
		f := facts{pod: a.Name, q: q, node: u.Host,
			copyFailures: seen(fmt.Sprintf(`sum(warren_copy_failures_total{job=%q})`, jobA)),
			reconnects:   seen(fmt.Sprintf(`sum(warren_reconnects_total{job=%q})`, jobA))}
		checked := map[string]bool{}
		for _, r := range results {
			check, ok := panelChecks[r.Title]
			if !ok {
				t.Errorf("panel %q has no check: say in panelChecks what the scenario makes it show", r.Title)
				continue
			}
			checked[r.Title] = true
			t.Run(r.Title, func(t *testing.T) { check(t, r, f) })
		}
		for title := range panelChecks {
			if !checked[title] {
				t.Errorf("panelChecks has %q, which the dashboard lacks", title)
			}
		}
		if *update {
			svg := drawDashboard(results, phases, start, to, strings.NewReplacer(q, "orders", a.Name, "orders-0"))
			out := filepath.Join(repoRoot, "docs", "dashboard.svg")
			if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(out, svg, 0o644); err != nil {
				t.Fatal(err)
			}
			t.Logf("wrote %s", out)
		}
	})

	t.Run("alerts", func(t *testing.T) {
		short := []string{
			"metrics.prometheusRule.enabled=true",
			"broker.url=amqp://guest:guest@rabbitmq:5672/",
			"metrics.prometheusRule.deadLetters.window=10s",
			"metrics.prometheusRule.notConnected.for=2s",
			"metrics.prometheusRule.handlerErrors.for=2s",
			"metrics.prometheusRule.messagesStuck.window=4s",
			"metrics.prometheusRule.messagesStuck.for=2s",
			"metrics.prometheusRule.notReady.for=2s",
			"metrics.prometheusRule.copyFailures.window=3s",
			"metrics.prometheusRule.copyFailures.for=0s",
			"metrics.prometheusRule.circuitOpen.for=3s",
		}
		files := []string{
			renderRules(t, namespace, append([]string{"fullnameOverride=obs", "queue.name=" + q}, short...)...),
			renderRules(t, namespace, append([]string{"fullnameOverride=healthy", "queue.name=" + qHealthy}, short...)...),
		}
		got := evaluateRules(ctx, t, engine, db, from, to, scrapeStep, files...)
		t.Logf("fired: %v", got.keys())
		byName := map[string]phase{}
		for _, p := range phases {
			byName[p.name] = p
		}
		for _, tt := range []struct {
			alert string
			phase string // fires in it, and never before it starts
		}{
			{"WarrenDeadLetters", "traffic"},
			{"WarrenHandlerErrors", "traffic"},
			{"WarrenCopyFailures", "refused"},
			{"WarrenMessagesStuck", "stuck"},
			{"WarrenNotConnected", "cut"},
			{"WarrenNotReady", "cut"},
			{"WarrenCircuitOpen", "down"},
		} {
			p := byName[tt.phase]
			times := got[tt.alert+" "+jobA]
			first, fired := got.first(tt.alert + " " + jobA)
			switch {
			case !fired:
				t.Errorf("%s never fired, want it in the %s phase (%s)", tt.alert, tt.phase, phaseList([]phase{p}, from))
			case first.Before(p.from):
				t.Errorf("%s fired at %s, before the %s phase began at %s", tt.alert, first.Sub(from).Round(time.Second), tt.phase, p.from.Sub(from).Round(time.Second))
			case first.After(p.to.Add(alertSlack)):
				t.Errorf("%s first fired at %s, after the %s phase (%s)", tt.alert, first.Sub(from).Round(time.Second), tt.phase, phaseList([]phase{p}, from))
			default:
				t.Logf("%s fired from %s, %d evaluations (%s phase %s)", tt.alert, first.Sub(from).Round(time.Second), len(times), tt.phase, phaseList([]phase{p}, from))
			}
		}
		for _, k := range got.keys() {
			if strings.HasSuffix(k, " "+jobB) {
				t.Errorf("%s fired for the healthy worker at %s", k, got[k][0].Sub(from).Round(time.Second))
			}
		}
		if n := seen(fmt.Sprintf(`count(warren_messages_total{job=%q})`, jobB)); n == 0 || math.IsNaN(n) {
			t.Errorf("the healthy worker has no series: its silence proves nothing")
		}
	})
}

// phaseList writes phases as name from-to, in seconds from start.
func phaseList(ps []phase, start time.Time) string {
	var out []string
	for _, p := range ps {
		out = append(out, fmt.Sprintf("%s %s-%s", p.name, p.from.Sub(start).Round(time.Second), p.to.Sub(start).Round(time.Second)))
	}
	return strings.Join(out, ", ")
}
