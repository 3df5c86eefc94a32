package cluster

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/warren-mq/warren/internal/brokertest"
	"github.com/warren-mq/warren/internal/warrentest"
)

// profile is how hard the suite pushes.
type profile struct {
	name string
	// rate is how many messages per second the endpoint takes; a scenario
	// publishes enough for perFault of work per fault it injects, so that
	// every fault hits a backlog.
	rate     float64
	perFault time.Duration
	// replayed is the number of dead messages warren dead replay moves.
	replayed int
	// dlxTimeout, if set, is given to every node as
	// dead_letter_worker_publisher_confirm_timeout (the broker's default
	// is 3 minutes): how long a retry copy on its way back to Q waits for
	// a leader of Q that died before it is sent again.
	dlxTimeout time.Duration
}

var profiles = map[string]profile{
	"short": {name: "short", rate: 120, perFault: 15 * time.Second, replayed: 2000, dlxTimeout: 5 * time.Second},
	"full":  {name: "full", rate: 150, perFault: 40 * time.Second, replayed: 5000},
}

// chosen returns the profile WARREN_CLUSTER names, or skips the test.
func chosen(t *testing.T) profile {
	t.Helper()
	name := os.Getenv("WARREN_CLUSTER")
	p, ok := profiles[name]
	if !ok {
		t.Skipf("the cluster suite runs with WARREN_CLUSTER=short (CI) or full (make cluster-test); WARREN_CLUSTER=%q", name)
	}
	return p
}

// replicas is how many warren processes consume each queue.
const replicas = 3

// TestCluster runs warren on a three-node cluster of its own through the
// loss of any node, then checks that nothing was lost.
func TestCluster(t *testing.T) {
	p := chosen(t)
	if ok, why := brokertest.CanStartNode(); !ok {
		t.Skip(why + ": the cluster suite runs a RabbitMQ cluster of its own")
	}
	begin := time.Now()
	s := &suite{p: p, c: brokertest.StartCluster(t, 3)}
	if p.dlxTimeout == 0 {
		s.p.dlxTimeout = 3 * time.Minute // the broker's own
	}
	for _, n := range s.c.Nodes {
		s.tune(t, n)
	}
	t.Logf("profile %s; 3 nodes up and clustered in %s", p.name, time.Since(begin).Round(100*time.Millisecond))

	t.Run("leader killed", s.leaderKilled)
	t.Run("replica's node killed", s.replicaNodeKilled)
	t.Run("every node killed in turn", s.everyNodeKilled)
	t.Run("rolling restart", s.rollingRestart)
	t.Run("node cut off during retries and dead letters", s.cutOff)
	t.Run("publish fails over", s.publishFailsOver)
	t.Run("dead replay fails over", s.replayFailsOver)

	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 1, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SCENARIO\tMESSAGES\tDUPLICATES\tREDELIVERED\tRECOVERY (each fault)\tTOOK")
	s.mu.Lock()
	for _, r := range s.results {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\t%s\n", r.name, r.messages, r.dups, r.redelivered, r.recovery, r.took.Round(time.Second))
	}
	s.mu.Unlock()
	tw.Flush()
	t.Logf("cluster suite (%s) took %s\n%s", p.name, time.Since(begin).Round(time.Second), b.String())
}

// tune sets the profile's dead-letter confirm timeout on node n, when it
// has one; a node reads its defaults again when it starts.
func (s *suite) tune(t *testing.T, n *brokertest.Node) {
	t.Helper()
	if p, ok := profiles[s.p.name]; ok && p.dlxTimeout > 0 {
		n.Ctl(t, "eval", fmt.Sprintf("application:set_env(rabbit, dead_letter_worker_publisher_confirm_timeout, %d).", p.dlxTimeout.Milliseconds()))
	}
}

// restart starts node n again, tunes it and waits until it rejoined.
func (s *suite) restart(t *testing.T, n *brokertest.Node) {
	t.Helper()
	n.Start(t)
	s.tune(t, n)
	s.c.WaitRunning(t)
}

// suite is what the scenarios share.
type suite struct {
	p profile
	c *brokertest.Cluster

	mu      sync.Mutex
	results []result
}

// result is what one scenario cost.
type result struct {
	name           string
	messages, dups int
	redelivered    int
	recovery       string
	took           time.Duration
}

// run is one scenario: a queue, its replicas and their endpoint.
type run struct {
	s        *suite
	begin    time.Time
	q        string
	urls     []string // what the replicas dial: the nodes, or proxies to them
	proxies  []*brokertest.Proxy
	e        *warrentest.Endpoint
	bodies   []string
	poison   []string
	replicas []*warrentest.Process
	recovery []time.Duration
}

// start publishes a backlog for faults faults to a new quorum queue and
// starts the replicas on it. With viaProxies, every node is reached
// through a proxy of its own, to cut it off from warren.
func (s *suite) start(t *testing.T, faults int, viaProxies bool) *run {
	t.Helper()
	var b [4]byte
	_, _ = rand.Read(b[:])
	r := &run{s: s, begin: time.Now(), q: "cluster-" + hex.EncodeToString(b[:]), urls: nodeURLs(s.c)}
	t.Cleanup(func() { brokertest.At(nodeURLs(s.c)...).DeleteQueues(t, r.q, r.q+".dead", r.q+".retry.1s") })
	if viaProxies {
		r.urls = nil
		for _, u := range nodeURLs(s.c) {
			p := brokertest.NewProxyTo(t, u)
			r.proxies = append(r.proxies, p)
			r.urls = append(r.urls, p.URL())
		}
	}
	n := int(s.p.rate * (s.p.perFault * time.Duration(faults+1)).Seconds())
	for i := range n {
		body := fmt.Sprintf("m-%05d", i)
		switch {
		case i%100 == 7:
			body = "poison-" + body
			r.poison = append(r.poison, body)
		case i%25 == 3:
			body = "flaky-" + body
		}
		r.bodies = append(r.bodies, body)
	}
	r.e = warrentest.NewEndpoint(t, warrentest.EndpointOptions{Rate: s.p.rate})
	for i := range replicas {
		r.replicas = append(r.replicas, startReplica(t, fmt.Sprintf("replica-%d", i), []string{
			"WARREN_AMQP_URL=" + strings.Join(r.urls, ","),
			"WARREN_QUEUE=" + r.q,
			"WARREN_QUEUE_TYPE=quorum",
			"WARREN_HANDLER=http",
			"WARREN_HTTP_URL=" + r.e.URL(fmt.Sprint(i)),
			"WARREN_PREFETCH=8",
			"WARREN_RETRY_DELAYS=1s",
			"WARREN_MAX_ATTEMPTS=3",
			"WARREN_HEARTBEAT=2s",
			"WARREN_SHUTDOWN_TIMEOUT=10s",
		}))
	}
	r.waitReady(t, "replicas consuming")
	publish(t, nodeURLs(s.c), r.q, r.bodies)
	brokertest.WaitFor(t, time.Minute, "work under way", func() bool { return r.e.Stats().OKs >= len(r.bodies)/(faults+1)/3 })
	return r
}

func (r *run) waitReady(t *testing.T, what string) {
	t.Helper()
	brokertest.WaitFor(t, 90*time.Second, what, func() bool {
		for _, rep := range r.replicas {
			if !rep.Ready() {
				return false
			}
		}
		return true
	})
}

// fault injects a fault and waits until every replica consumes again and
// the endpoint handled messages since: the time to recover.
func (r *run) fault(t *testing.T, what string, inject func()) time.Duration {
	t.Helper()
	handled := r.e.Stats().OKs
	at := time.Now()
	inject()
	brokertest.WaitFor(t, 90*time.Second, "recovery from "+what, func() bool {
		for _, rep := range r.replicas {
			if !rep.Ready() {
				return false
			}
		}
		return r.e.Stats().OKs > handled
	})
	d := time.Since(at)
	r.recovery = append(r.recovery, d)
	t.Logf("%s: every replica consuming and messages handled again %s after", what, d.Round(10*time.Millisecond))
	return d
}

// finish waits for every message to be handled, stops the replicas and
// checks that the queues are empty but for the poison messages in Q.dead.
func (r *run) finish(t *testing.T) {
	t.Helper()
	budget := time.Duration(float64(len(r.bodies))/r.s.p.rate*float64(time.Second)) + time.Minute
	// A retry copy whose delay ended while Q's leader died comes back
	// only after the broker's dead-letter worker gives up waiting for
	// Q's confirm (dead_letter_worker_publisher_confirm_timeout): the
	// wait allows for it.
	deadline := time.Now().Add(budget + r.s.p.dlxTimeout)
	last, lastAt := -1, time.Now()
	for len(r.e.Missing(r.bodies)) > 0 && time.Now().Before(deadline) {
		if h := r.e.Stats().OKs; h != last {
			last, lastAt = h, time.Now()
		} else if time.Since(lastAt) > r.s.p.dlxTimeout+30*time.Second {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if missing := r.e.Missing(r.bodies); len(missing) > 0 {
		t.Fatalf("%d messages never handled, e.g. %q; the broker's queues: %v", len(missing), missing[:min(len(missing), 5)], r.s.c.Messages(t))
	}
	for _, rep := range r.replicas {
		rep.Stop(t)
	}
	nodes := brokertest.At(nodeURLs(r.s.c)...)
	// The queue lengths rabbitmqctl reports lag behind: take what is left.
	if left := nodes.Drain(t, r.q); len(left) > 0 {
		t.Errorf("%s holds %d messages at the end, want 0, e.g. %q", r.q, len(left), left[0])
	}
	if left := nodes.Drain(t, r.q+".retry.1s"); len(left) > 0 {
		t.Errorf("%s.retry.1s holds %d messages at the end, want 0, e.g. %q", r.q, len(left), left[0])
	}
	dead := nodes.Drain(t, r.q+".dead")
	for _, b := range dead {
		if !strings.HasPrefix(b, "poison-") {
			t.Errorf("%s.dead holds %q, which never failed for good", r.q, b)
		}
	}
	for _, b := range r.poison {
		if !slices.Contains(dead, b) {
			t.Errorf("%s.dead lacks %q", r.q, b)
		}
	}
	st := r.e.Stats()
	dups, redelivered := st.Duplicates, st.Redelivered
	var rec []string
	for _, d := range r.recovery {
		rec = append(rec, d.Round(10*time.Millisecond).String())
	}
	t.Logf("%d messages (%d poison, %d dead copies) all handled; %d handled twice or more, %d deliveries redelivered",
		len(r.bodies), len(r.poison), len(dead), dups, redelivered)
	r.s.mu.Lock()
	r.s.results = append(r.s.results, result{name: t.Name()[len("TestCluster/"):], messages: len(r.bodies), dups: dups,
		redelivered: redelivered, recovery: strings.Join(rec, " "), took: time.Since(r.begin)})
	r.s.mu.Unlock()
}

// leaderKilled kills the quorum leader's node with SIGKILL under load.
func (s *suite) leaderKilled(t *testing.T) {
	r := s.start(t, 1, false)
	var leader *brokertest.Node
	brokertest.WaitFor(t, 30*time.Second, "the queue's leader", func() bool {
		leader = s.c.Leader(t, r.q)
		return leader != nil
	})
	r.fault(t, "SIGKILL of the leader "+leader.Name, func() { leader.Kill(t) })
	brokertest.WaitFor(t, 30*time.Second, "a new leader", func() bool {
		l := s.c.Leader(t, r.q)
		return l != nil && l != leader
	})
	s.restart(t, leader)
	r.finish(t)
}

// replicaNodeKilled kills the node replica-0 is connected to: it must
// move to another node within seconds and say so in warren_broker_info.
func (s *suite) replicaNodeKilled(t *testing.T) {
	r := s.start(t, 1, false)
	rep := r.replicas[0]
	addr := node(rep)
	n := s.c.Node(addr)
	if n == nil {
		t.Fatalf("%s: warren_broker_info names %q, no node of the cluster", rep.Name, addr)
	}
	at := time.Now()
	r.fault(t, "SIGKILL of "+n.Name+", "+rep.Name+"'s node", func() { n.Kill(t) })
	brokertest.WaitFor(t, 30*time.Second, rep.Name+" on another node", func() bool {
		a := node(rep)
		return a != "" && a != addr && rep.Ready()
	})
	t.Logf("%s moved from %s to %s within %s", rep.Name, addr, node(rep), time.Since(at).Round(10*time.Millisecond))
	s.restart(t, n)
	r.finish(t)
}

// everyNodeKilled kills every node in turn with SIGKILL and starts it
// again: every replica loses its node.
func (s *suite) everyNodeKilled(t *testing.T) {
	r := s.start(t, len(s.c.Nodes), false)
	for _, n := range s.c.Nodes {
		r.fault(t, "SIGKILL of "+n.Name, func() { n.Kill(t) })
		s.restart(t, n)
	}
	for _, rep := range r.replicas {
		if losses(rep) == 0 {
			t.Errorf("%s never lost its connection: every node died once, it must have", rep.Name)
		}
	}
	r.finish(t)
}

// rollingRestart stops every node gracefully and starts it again, waiting
// for it to rejoin, as an operator's upgrade does.
func (s *suite) rollingRestart(t *testing.T) {
	r := s.start(t, len(s.c.Nodes), false)
	for _, n := range s.c.Nodes {
		r.fault(t, "rabbitmqctl stop of "+n.Name, func() { n.Stop(t) })
		s.restart(t, n)
	}
	r.finish(t)
}

// cutOff cuts the link between warren and the node replica-0 is on, while
// flaky and poison messages are copied to the retry and dead-letter
// queues: copies whose confirm is lost leave their original to the
// broker, which delivers it again.
func (s *suite) cutOff(t *testing.T) {
	r := s.start(t, 1, true)
	rep := r.replicas[0]
	addr := node(rep)
	var cut *brokertest.Proxy
	for i, u := range r.urls {
		if strings.Contains(u, "@"+addr+"/") {
			cut = r.proxies[i]
		}
	}
	if cut == nil {
		t.Fatalf("%s: warren_broker_info names %q, none of the proxies", rep.Name, addr)
	}
	r.fault(t, "node at "+addr+" cut off", func() {
		cut.Refuse(true)
		cut.Cut()
	})
	brokertest.WaitFor(t, 30*time.Second, rep.Name+" on another node", func() bool {
		a := node(rep)
		return a != "" && a != addr
	})
	// The node comes back after a while, as a healed partition does.
	handled := r.e.Stats().OKs
	brokertest.WaitFor(t, time.Minute, "more work done", func() bool { return r.e.Stats().OKs > handled+int(s.p.rate*5) })
	cut.Refuse(false)
	r.finish(t)
}

// publishFailsOver runs warren publish, reading stdin, and cuts its node
// off halfway: it must send the rest, and the unconfirmed, to another
// node, exit 0 and leave every message in the queue.
func (s *suite) publishFailsOver(t *testing.T) {
	begin := time.Now()
	r := &run{s: s, q: "cluster-publish-" + time.Now().Format("150405.000")}
	nodes := nodeURLs(s.c)
	t.Cleanup(func() { brokertest.At(nodes...).DeleteQueues(t, r.q) })
	for _, u := range nodes {
		p := brokertest.NewProxyTo(t, u)
		r.proxies = append(r.proxies, p)
		r.urls = append(r.urls, p.URL())
	}
	const total = 20000
	cmd := exec.Command(binary, "publish", "-declare", "-retry-for", "1m")
	cmd.Env = append(warrentest.Env(gorace), "WARREN_AMQP_URL="+strings.Join(r.urls, ","), "WARREN_QUEUE="+r.q, "WARREN_QUEUE_TYPE=quorum")
	out := &warrentest.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	exited := startCommand(t, cmd, out)
	write := func(from, to int) {
		var b strings.Builder
		for i := from; i < to; i++ {
			fmt.Fprintf(&b, "p-%05d\n", i)
		}
		if _, err := io.WriteString(stdin, b.String()); err != nil {
			t.Fatalf("write to warren publish: %v", err)
		}
	}
	write(0, total/2)
	brokertest.WaitFor(t, time.Minute, "half the messages in the queue", func() bool {
		return brokertest.At(nodes...).Ready(t, r.q) >= total/4
	})
	var on *brokertest.Proxy
	for _, p := range r.proxies {
		if p.Accepted() > 0 {
			on = p
		}
	}
	on.Refuse(true)
	on.Cut()
	write(total/2, total)
	stdin.Close()
	exited("warren publish", 2*time.Minute)
	if want := fmt.Sprintf("published %d of %d messages", total, total); !strings.Contains(out.String(), want) {
		t.Errorf("warren publish said %q, want %q", out, want)
	}
	if !strings.Contains(out.String(), "sending the unconfirmed messages again") {
		t.Errorf("warren publish did not say it lost its node:\n%s", out)
	}
	got := brokertest.At(nodes...).Drain(t, r.q)
	seen := map[string]int{}
	for _, b := range got {
		seen[b]++
	}
	for i := range total {
		if b := fmt.Sprintf("p-%05d", i); seen[b] == 0 {
			t.Fatalf("%s is not in the queue: a confirmed message was lost", b)
		}
	}
	t.Logf("%d messages published through the loss of a node; %d in the queue twice", total, len(got)-len(seen))
	s.mu.Lock()
	s.results = append(s.results, result{name: "publish fails over", messages: total, dups: len(got) - len(seen), took: time.Since(begin)})
	s.mu.Unlock()
}

// replayFailsOver runs warren dead replay and cuts its node off halfway:
// it must go on through another node, and move every dead message.
func (s *suite) replayFailsOver(t *testing.T) {
	begin := time.Now()
	q := "cluster-replay-" + time.Now().Format("150405.000")
	nodes := brokertest.At(nodeURLs(s.c)...)
	t.Cleanup(func() { nodes.DeleteQueues(t, q, q+".dead") })
	var (
		proxies []*brokertest.Proxy
		urls    []string
	)
	for _, u := range nodeURLs(s.c) {
		p := brokertest.NewProxyTo(t, u)
		proxies = append(proxies, p)
		urls = append(urls, p.URL())
	}
	env := append(warrentest.Env(gorace), "WARREN_AMQP_URL="+strings.Join(urls, ","), "WARREN_QUEUE="+q, "WARREN_QUEUE_TYPE=quorum", "WARREN_RETRY_DELAYS=")
	// warren publish declares Q and Q.dead, quorum, and fills Q.dead.
	var lines strings.Builder
	for i := range s.p.replayed {
		fmt.Fprintf(&lines, "d-%05d\n", i)
	}
	pub := exec.Command(binary, "publish", "-declare", "-routing-key", q+".dead")
	pub.Env = env
	pub.Stdin = strings.NewReader(lines.String())
	if out, err := pub.CombinedOutput(); err != nil {
		t.Fatalf("fill %s.dead: %v\n%s", q, err, out)
	}
	before := make([]int, len(proxies))
	for i, p := range proxies {
		before[i] = p.Accepted()
	}
	cmd := exec.Command(binary, "dead", "replay")
	cmd.Env = env
	out := &warrentest.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	exited := startCommand(t, cmd, out)
	// Up-to-date figures from a passive declaration: rabbitmqctl's for a
	// quorum queue lag by seconds, long enough for the replay to end
	// before the cut (CI saw it once: the test then proves nothing).
	brokertest.WaitFor(t, time.Minute, "replay under way", func() bool {
		return nodes.Ready(t, q) >= s.p.replayed/10
	})
	cutAt := -1
	for i, p := range proxies {
		if p.Accepted() > before[i] {
			p.Refuse(true)
			p.Cut()
			cutAt = i
		}
	}
	exited("warren dead replay", 3*time.Minute)
	moved := 0
	for i, p := range proxies {
		if i != cutAt && p.Accepted() > before[i] {
			moved++
		}
	}
	if cutAt < 0 || moved == 0 {
		t.Errorf("warren dead replay did not go on through another node (cut %d; %d others used): the test proved nothing", cutAt, moved)
	}
	if left := nodes.Drain(t, q+".dead"); len(left) > 0 {
		t.Errorf("%s.dead holds %d messages after the replay, want 0", q, len(left))
	}
	got := nodes.Drain(t, q)
	seen := map[string]int{}
	for _, b := range got {
		seen[b]++
	}
	if len(seen) != s.p.replayed {
		t.Errorf("%s holds %d distinct messages after the replay, want %d", q, len(seen), s.p.replayed)
	}
	// The count is of copies moved: a message whose ack was lost with the
	// node is moved again, counted twice, and the replay says it may be.
	var said int
	if _, err := fmt.Sscanf(out.String(), "replayed %d messages", &said); err != nil || said < s.p.replayed || said > len(got) {
		t.Errorf("warren dead replay said %q, want between %d messages replayed and the %d copies in %s", out, s.p.replayed, len(got), q)
	}
	if want := "1 connection lost on the way: up to 1 message may be in " + q + " twice"; !strings.Contains(out.String(), want) {
		t.Errorf("warren dead replay said %q, want it to say %q", out, want)
	}
	t.Logf("%d dead messages replayed through the loss of a node; %d twice; warren dead replay said %q", s.p.replayed, len(got)-len(seen), strings.TrimSpace(out.String()))
	s.mu.Lock()
	s.results = append(s.results, result{name: "dead replay fails over", messages: s.p.replayed, dups: len(got) - len(seen), took: time.Since(begin)})
	s.mu.Unlock()
}

// startCommand starts cmd, whose output goes to out, and kills it when the
// test ends if it still runs. exited waits up to d, after its node was cut
// off, for it to exit 0, and fails the test otherwise.
func startCommand(t *testing.T, cmd *exec.Cmd, out *warrentest.Buffer) (exited func(name string, d time.Duration)) {
	t.Helper()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var waitErr error
	done := make(chan struct{})
	go func() {
		waitErr = cmd.Wait()
		close(done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})
	return func(name string, d time.Duration) {
		t.Helper()
		select {
		case <-done:
			if waitErr != nil {
				t.Fatalf("%s = %v, want exit 0\n%s", name, waitErr, out)
			}
		case <-time.After(d):
			t.Fatalf("%s still runs %v after its node was cut off\n%s", name, d, out)
		}
	}
}
