package chaos

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-mq/warren/internal/brokertest"
	"github.com/warren-mq/warren/internal/warrentest"
)

// profile is how hard the suite pushes.
type profile struct {
	name string
	// messages in the queue at the start; one in poisonEvery is poison
	// (dead at its first attempt), and with a quorum queue one in
	// flakyEvery fails its first attempt (retried through a retry queue).
	messages    int
	poisonEvery int
	flakyEvery  int
	// span is about how long the faults take: the endpoint takes the
	// messages at a rate that makes the queue last that long.
	span time.Duration
	// closes of every connection, restarts of the broker's application,
	// restarts of the broker node.
	closes, appRestarts, nodeRestarts int
	// burst is the number of messages of the memory test; 0 skips it.
	burst int
}

var profiles = map[string]profile{
	// The spans are nearly twice what the faults take here (about 1 and 2
	// minutes), so that the queue does not run dry while they are
	// injected, and most messages go through them; once they are over,
	// the endpoint takes the rest at full speed.
	"short": {name: "short", messages: 3000, poisonEvery: 100, flakyEvery: 25, span: 100 * time.Second,
		closes: 5, appRestarts: 1, nodeRestarts: 1, burst: 100_000},
	"full": {name: "full", messages: 10_000, poisonEvery: 100, flakyEvery: 25, span: 200 * time.Second,
		closes: 20, appRestarts: 3, nodeRestarts: 1, burst: 100_000},
}

// settle is how long the replicas consume between two faults; see record.
const settle = 3 * time.Second

// chosen returns the profile WARREN_CHAOS names, or skips the test.
func chosen(t *testing.T) profile {
	t.Helper()
	name := os.Getenv("WARREN_CHAOS")
	p, ok := profiles[name]
	if !ok {
		t.Skipf("the fault suite runs with WARREN_CHAOS=short (CI, a few minutes: make chaos-short) or WARREN_CHAOS=full (make chaos); WARREN_CHAOS=%q", name)
	}
	return p
}

// TestChaos runs the fault suite on a RabbitMQ node of its own: the faults
// on a classic and on a quorum queue, then a burst with a slow handler.
func TestChaos(t *testing.T) {
	p := chosen(t)
	if ok, why := brokertest.CanStartNode(); !ok {
		t.Skip(why + ": the fault suite restarts a RabbitMQ node of its own")
	}
	begin := time.Now()
	bin := buildWarren(t)
	node := brokertest.StartNode(t)
	// A user of its own, with a password to look for in everything the
	// suite captures.
	var b [12]byte
	_, _ = rand.Read(b[:])
	user, password := "chaos", "chaos-"+hex.EncodeToString(b[:])
	node.Ctl(t, "add_user", user, password)
	node.Ctl(t, "set_permissions", "-p", "/", user, ".*", ".*", ".*")
	u, err := url.Parse(node.URL())
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(user, password)
	s := &suite{p: p, bin: bin, node: node, url: u.String(), password: password,
		broker: brokertest.At(u.String()), seen: &warrentest.Captures{}}
	t.Logf("profile %s; node %s up in %s", p.name, node.Name, time.Since(begin).Round(time.Second))

	for _, qt := range []string{"classic", "quorum"} {
		t.Run("faults/"+qt, func(t *testing.T) { s.faults(t, qt) })
	}
	if p.burst > 0 {
		t.Run("burst", s.burst)
	}
	t.Run("no secret in what was captured", s.noSecret)
	t.Logf("fault suite (%s) took %s", p.name, time.Since(begin).Round(time.Second))
}

// suite is what the parts of the fault suite share.
type suite struct {
	p        profile
	bin      string
	node     *brokertest.Node
	url      string // the node, as the suite's user
	password string
	broker   brokertest.Broker // the node, as the suite's user
	seen     *warrentest.Captures
	replicas []*warrentest.Process // of every part, for the secret check
}

// healed is what a fault cost.
type healed struct {
	fault   string
	backlog int           // messages in the queue when it was injected
	detect  time.Duration // until warren noticed, when that differs from heal
	heal    time.Duration // until every replica consumed again
}

// faults runs the replicas on a queue of type qt through every fault, then
// checks that nothing was lost.
func (s *suite) faults(t *testing.T, qt string) {
	begin := time.Now()
	q := "chaos-" + qt
	flaky := 0
	if qt == "quorum" {
		// Classic queues dead-letter at most once: a retry copy whose delay
		// ends while the broker stops can be lost (see the README). The
		// retries of a classic queue run only while the broker stays up.
		flaky = s.p.flakyEvery
	}
	var bodies, poison []string
	for i := range s.p.messages {
		b := fmt.Sprintf("m-%05d", i)
		switch {
		case i%s.p.poisonEvery == 7:
			b = "poison-" + b
			poison = append(poison, b)
		case flaky > 0 && i%flaky == 3:
			b = "flaky-" + b
		}
		bodies = append(bodies, b)
	}

	e := warrentest.NewEndpoint(t, warrentest.EndpointOptions{Work: 3 * time.Millisecond})
	e.Limit(float64(s.p.messages) / s.p.span.Seconds())
	urlDir := t.TempDir()
	urlFile := func(name, u string) string {
		f := filepath.Join(urlDir, name)
		if err := os.WriteFile(f, []byte(u+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return f
	}
	// replica-0's link runs through a proxy, to stall it and cut it.
	proxy := brokertest.NewProxyTo(t, s.url)
	var rs []*warrentest.Process
	for i := range 3 {
		name := fmt.Sprintf("replica-%d", i)
		u := s.url
		if i == 0 {
			u = proxy.URL()
		}
		env := []string{
			"WARREN_AMQP_URL_FILE=" + urlFile(name, u),
			"WARREN_QUEUE=" + q,
			"WARREN_QUEUE_TYPE=" + qt,
			"WARREN_HANDLER=http",
			"WARREN_HTTP_URL=" + e.URL(name),
			"WARREN_PREFETCH=20",
			"WARREN_CONCURRENCY=4",
			"WARREN_HANDLER_TIMEOUT=1s",
			"WARREN_RETRY_DELAYS=200ms,1s",
			"WARREN_MAX_ATTEMPTS=50",
			"WARREN_HEARTBEAT=1s",
			"WARREN_SHUTDOWN_TIMEOUT=10s",
			// The endpoint's outage opens the circuit (on by default);
			// probes at most 2 s apart keep the suite short once it is back.
			"WARREN_CIRCUIT_MAX_PROBE_INTERVAL=2s",
		}
		rs = append(rs, newReplica(t, name, s.bin, env, s.seen))
	}
	s.replicas = append(s.replicas, rs...)

	// The queue exists, as warren declares it, and holds every message
	// before the first replica starts.
	queues := []string{q, q + ".retry.200ms", q + ".retry.1s", q + ".dead"}
	t.Cleanup(func() { s.broker.DeleteQueues(t, queues...) })
	s.broker.Declare(t, q, amqp.Table{amqp.QueueTypeArg: qt})
	s.broker.Publish(t, q, bodies)
	t.Logf("%d messages in %s (%d poison, %d flaky) in %s", len(bodies), q, len(poison), countPrefix(bodies, "flaky-"), time.Since(begin).Round(time.Millisecond))

	for _, r := range rs {
		r.Start(t)
	}
	// every reports whether ok holds for every replica.
	every := func(ok func(*warrentest.Process) bool) func() bool {
		return func() bool {
			for _, r := range rs {
				if !ok(r) {
					return false
				}
			}
			return true
		}
	}
	allReady := every((*warrentest.Process).Ready)
	brokertest.WaitFor(t, 60*time.Second, "every replica consuming", allReady)

	var report []healed
	backlog := func() int { return s.broker.Ready(t, q) }
	// lost returns how many connections and channels each replica lost so
	// far; waitHealed waits until those of which (all by default) lost one
	// more since before, and every replica consumes again.
	lost := func() []int {
		n := make([]int, len(rs))
		for i, r := range rs {
			n[i] = connectionsLost(r)
		}
		return n
	}
	// heal waits until each replica of which (all if none) lost a
	// connection since before, then until every replica is settled.
	heal := func(what string, settled func() bool, before []int, which ...int) {
		t.Helper()
		if which == nil {
			which = []int{0, 1, 2}
		}
		brokertest.WaitFor(t, 2*time.Minute, what+" healed: connection lost, then consuming again", func() bool {
			for _, i := range which {
				if connectionsLost(rs[i]) <= before[i] {
					return false
				}
			}
			return settled()
		})
	}
	waitHealed := func(what string, before []int, which ...int) { t.Helper(); heal(what, allReady, before, which...) }
	// While the endpoint is down a replica connected again may hold back
	// with its circuit open, probing: that is as healed as it can be.
	allProbing := every((*warrentest.Process).ReadyOrCircuitOpen)
	record := func(fault string, depth int, start time.Time, detect time.Duration) {
		report = append(report, healed{fault: fault, backlog: depth, detect: detect, heal: time.Since(start)})
		if depth == 0 {
			t.Errorf("the queue was empty when the suite injected %q: the fault hit no message; make the profile's span longer", fault)
		}
		// The next fault comes once the replicas consumed a while: warren
		// counts a connection that served less than 2 s as a failed one,
		// and backs off further after it (up to 30 s).
		time.Sleep(settle)
	}

	// SIGKILL a replica while the endpoint answers some of its messages:
	// what it held goes back to the queue and is handled again.
	brokertest.WaitFor(t, 30*time.Second, "replica-1 in the middle of a batch", func() bool { return e.Busy("replica-1") > 0 })
	busy, depth, start := e.Busy("replica-1"), backlog(), time.Now()
	rs[1].Kill(t)
	rs[1].Start(t)
	brokertest.WaitFor(t, time.Minute, "replica-1 back", rs[1].Ready)
	record(fmt.Sprintf("SIGKILL replica-1 with %d requests in flight, start it again", busy), depth, start, 0)

	// A rolling update: one replica at a time stops, exits 0, starts.
	depth, start = backlog(), time.Now()
	for _, r := range rs {
		r.Stop(t)
		r.Start(t)
		brokertest.WaitFor(t, time.Minute, r.Name+" back after its restart", r.Ready)
	}
	record("roll every replica (SIGTERM, exit 0, start)", depth, start, 0)

	for i := range s.p.closes {
		before, depth, start := lost(), backlog(), time.Now()
		s.node.CloseAllConnections(t)
		waitHealed("close_all_connections", before)
		record(fmt.Sprintf("close every connection (%d of %d)", i+1, s.p.closes), depth, start, 0)
	}
	for i := range s.p.appRestarts {
		before, depth, start := lost(), backlog(), time.Now()
		s.node.StopApp(t)
		s.node.StartApp(t)
		waitHealed("stop_app/start_app", before)
		record(fmt.Sprintf("restart the broker application (%d of %d)", i+1, s.p.appRestarts), depth, start, 0)
	}
	for i := range s.p.nodeRestarts {
		before, depth, start := lost(), backlog(), time.Now()
		s.node.Stop(t)
		s.node.Start(t)
		waitHealed("broker restart", before)
		record(fmt.Sprintf("restart the broker node (%d of %d)", i+1, s.p.nodeRestarts), depth, start, 0)
	}

	// A stalled link: accepted, nothing forwarded, no close seen. Only the
	// heartbeat (1s here) tells; the process is not restarted.
	pid := rs[0].Pid()
	before, depth, start := lost(), backlog(), time.Now()
	proxy.Stall(true)
	brokertest.WaitFor(t, 30*time.Second, "replica-0 to notice its stalled link", func() bool {
		return connectionsLost(rs[0]) > before[0]
	})
	detect := time.Since(start)
	if out := warrentest.Tail(rs[0].Out.String(), 20); !strings.Contains(out, "heartbeat") && !strings.Contains(out, "timeout") {
		t.Logf("replica-0 noticed the stall without naming the heartbeat:\n%s", out)
	}
	proxy.Stall(false)
	waitHealed("stalled link", before, 0)
	record("stall replica-0's link", depth, start, detect)

	// A link cut half-way through a frame the broker sends. A few more
	// messages make sure that deliveries are under way.
	before, depth, start = lost(), backlog(), time.Now()
	cuts := proxy.MidFrameCuts()
	proxy.CutMidFrame()
	extra := make([]string, 30)
	for i := range extra {
		extra[i] = fmt.Sprintf("cut-%02d", i)
	}
	bodies = append(bodies, extra...)
	s.broker.Publish(t, q, extra)
	brokertest.WaitFor(t, 30*time.Second, "a link cut mid-frame", func() bool { return proxy.MidFrameCuts() > cuts })
	waitHealed("link cut mid-frame", before, 0)
	record("cut replica-0's link mid-frame", depth, start, 0)
	if got := rs[0].Pid(); got != pid {
		t.Errorf("replica-0 was restarted (pid %d, then %d); want it to recover on its own", pid, got)
	}

	// The endpoint fails: 503s, then requests that never end (the handler
	// timeout cuts them), while connections are closed and, on a quorum
	// queue, the broker's application restarts. Messages are retried
	// through the retry queues, none dies.
	depth, start = backlog(), time.Now()
	e.SetMode(warrentest.Fail)
	time.Sleep(2 * time.Second)
	before = lost()
	s.node.CloseAllConnections(t)
	heal("close_all_connections while the endpoint fails", allProbing, before)
	time.Sleep(time.Second)
	e.SetMode(warrentest.Hang)
	if qt == "quorum" {
		before = lost()
		s.node.StopApp(t)
		s.node.StartApp(t)
		heal("stop_app/start_app while the endpoint hangs", allProbing, before)
	}
	time.Sleep(3 * time.Second)
	e.SetMode(warrentest.Answer)
	detect = time.Since(start)
	brokertest.WaitFor(t, 2*time.Minute, "the retry queues empty", func() bool {
		return s.broker.Ready(t, q+".retry.200ms") == 0 && s.broker.Ready(t, q+".retry.1s") == 0
	})
	record("endpoint failing (503, then hanging) with closes and restarts", depth, start, detect)

	// No more faults: the endpoint takes all it gets.
	e.Limit(0)
	brokertest.WaitFor(t, 5*time.Minute, "every message handled, every queue but Q.dead empty, the endpoint idle", func() bool {
		if len(e.Missing(bodies)) > 0 || !e.Idle(2*time.Second) {
			return false
		}
		for _, name := range queues[:3] {
			if s.broker.Ready(t, name) != 0 {
				return false
			}
		}
		return true
	})
	reconnects := 0
	for _, r := range rs {
		r.Stop(t)
		reconnects += connectionsLost(r)
	}

	if m := e.Missing(bodies); len(m) > 0 {
		t.Errorf("%d messages never reached the handler (or, not poison, were never acked), e.g. %q", len(m), m[:min(5, len(m))])
	}
	for _, name := range queues[:3] {
		if n := s.broker.Ready(t, name); n != 0 {
			t.Errorf("%s holds %d messages at the end, want 0", name, n)
		}
	}
	dead := s.broker.Drain(t, q+".dead")
	deadSet := map[string]int{}
	for _, b := range dead {
		deadSet[b]++
		if !strings.HasPrefix(b, "poison-") {
			t.Errorf("%s holds %q, which should not have died", q+".dead", b)
		}
	}
	for _, b := range poison {
		if deadSet[b] == 0 {
			t.Errorf("%s lacks the poison message %q", q+".dead", b)
		}
	}
	stops := 0
	for _, r := range rs {
		stops += r.Stops()
	}
	st := e.Stats()
	var w strings.Builder
	tw := tabwriter.NewWriter(&w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "fault suite, %s queue, profile %s, %s\n", qt, s.p.name, time.Since(begin).Round(time.Second))
	fmt.Fprintf(tw, "messages\t%d (%d poison, %d flaky)\n", len(bodies), len(poison), countPrefix(bodies, "flaky-"))
	fmt.Fprintf(tw, "requests to the endpoint\t%d, %d answered 2xx, %d marked redelivered\n", st.Requests, st.OKs, st.Redelivered)
	fmt.Fprintf(tw, "lost\t%d\n", len(e.Missing(bodies)))
	fmt.Fprintf(tw, "duplicates (2xx for a message already acked)\t%d\n", st.Duplicates)
	fmt.Fprintf(tw, "in %s\t%d (%d distinct poison)\n", q+".dead", len(dead), len(deadSet))
	fmt.Fprintf(tw, "connections and channels lost, all replicas\t%d\n", reconnects)
	fmt.Fprintf(tw, "processes asked to stop that exited 0\t%d\n", stops)
	fmt.Fprintf(tw, "\nFAULT\tBACKLOG\tNOTICED\tHEALED\n")
	for _, h := range report {
		noticed := "-"
		if h.detect > 0 {
			noticed = h.detect.Round(10 * time.Millisecond).String()
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", h.fault, h.backlog, noticed, h.heal.Round(10*time.Millisecond))
	}
	tw.Flush()
	t.Log("\n" + w.String())
	if path := os.Getenv("WARREN_CHAOS_REPORT"); path != "" {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err == nil {
			fmt.Fprintln(f, w.String())
			f.Close()
		}
	}
}

func countPrefix(bodies []string, prefix string) int {
	n := 0
	for _, b := range bodies {
		if strings.HasPrefix(b, prefix) {
			n++
		}
	}
	return n
}

// burst: a queue of many messages and a slow handler; warren holds no more
// than its prefetch, so its memory stays flat however deep the queue.
func (s *suite) burst(t *testing.T) {
	q := "chaos-burst"
	t.Cleanup(func() { s.broker.DeleteQueues(t, q, q+".dead") })
	e := warrentest.NewEndpoint(t, warrentest.EndpointOptions{Work: 20 * time.Millisecond})
	urlFile := filepath.Join(t.TempDir(), "url")
	if err := os.WriteFile(urlFile, []byte(s.url), 0o600); err != nil {
		t.Fatal(err)
	}
	r := newReplica(t, "burst", s.bin, []string{
		"WARREN_AMQP_URL_FILE=" + urlFile, "WARREN_QUEUE=" + q, "WARREN_HANDLER=http", "WARREN_HTTP_URL=" + e.URL("burst"),
		"WARREN_PREFETCH=50", "WARREN_CONCURRENCY=4", "WARREN_RETRY_DELAYS=",
	}, s.seen)
	s.replicas = append(s.replicas, r)
	r.Start(t)
	brokertest.WaitFor(t, 30*time.Second, "warren consuming", r.Ready)
	bodies := make([]string, s.p.burst)
	pad := strings.Repeat("x", 200)
	for i := range bodies {
		bodies[i] = fmt.Sprintf("burst-%06d-%s", i, pad)
	}
	// A first thousand warms warren up: its steady state is the baseline.
	s.broker.Publish(t, q, bodies[:1000])
	brokertest.WaitFor(t, time.Minute, "the first messages handled", func() bool {
		return e.Stats().OKs >= 500
	})
	base := warrentest.RSS(t, r.Pid())
	start := time.Now()
	s.broker.Publish(t, q, bodies[1000:])
	published := time.Since(start)
	var peak int64
	samples := 0
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		peak = max(peak, warrentest.RSS(t, r.Pid()))
		samples++
		time.Sleep(200 * time.Millisecond)
	}
	depth := s.broker.Ready(t, q)
	oks := e.Stats().OKs
	unacked := -1
	for _, line := range strings.Split(s.node.Ctl(t, "list_queues", "name", "messages_unacknowledged", "-q"), "\n") {
		if name, n, ok := strings.Cut(strings.TrimSpace(line), "\t"); ok && name == q {
			fmt.Sscan(n, &unacked)
		}
	}
	t.Logf("burst: %d messages published in %s; warren handled %d, holds %d unacked; %d still queued; RSS %.1f MiB before, peak %.1f MiB over %d samples",
		s.p.burst, published.Round(time.Millisecond), oks, unacked, depth, float64(base)/(1<<20), float64(peak)/(1<<20), samples)
	if unacked < 0 || unacked > 50 {
		t.Errorf("the broker counts %d messages unacked by warren, want at most the prefetch, 50", unacked)
	}
	if depth < s.p.burst/2 {
		t.Errorf("only %d messages still queued: the handler was not slow enough for the test to mean anything", depth)
	}
	// The prefetch bounds what warren holds: 50 messages of ~220 bytes.
	// Allow for the runtime's own growth, far below what holding the
	// queue would take (100,000 messages: 20 MiB of bodies alone).
	if growth := peak - base; growth > 16<<20 {
		t.Errorf("warren's RSS grew by %.1f MiB during the burst (%.1f to %.1f MiB), want it flat (at most 16 MiB)",
			float64(growth)/(1<<20), float64(base)/(1<<20), float64(peak)/(1<<20))
	}
	r.Stop(t)
}

// noSecret looks for the suite's password in everything the replicas
// showed: their logs, probes, metrics, /proc command lines and
// environments (their URL is in a file), and warren's help.
func (s *suite) noSecret(t *testing.T) {
	help, _ := exec.Command(s.bin, "help").CombinedOutput()
	texts := map[string]string{"warren help": string(help)}
	for _, r := range s.replicas {
		texts[r.Name+" log"] += r.Out.String()
	}
	for k, v := range s.seen.Texts() {
		texts[k] = v
	}
	var where []string
	size := 0
	for what, text := range texts {
		size += len(text)
		if strings.Contains(text, s.password) {
			where = append(where, what)
		}
	}
	slices.Sort(where)
	if len(where) > 0 {
		t.Errorf("the broker password appears in: %s", strings.Join(where, ", "))
	}
	t.Logf("looked for the password in %d captures, %.1f MiB", len(texts), float64(size)/(1<<20))
}
