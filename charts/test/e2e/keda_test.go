package e2e

import (
	"context"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/warren-mq/warren/charts/test/internal/cluster"
	"github.com/warren-mq/warren/internal/brokertest"
)

var scaledObjects = schema.GroupVersionResource{Group: "keda.sh", Version: "v1alpha1", Resource: "scaledobjects"}

// TestKEDA runs the chart's ScaledObject (keda.enabled=true) against the
// real KEDA operator and metrics adapter: the Deployment follows the
// queue, from zero and back.
func TestKEDA(t *testing.T) {
	if os.Getenv("WARREN_E2E_KEDA") != "1" {
		t.Skip("the KEDA scenarios run with WARREN_E2E_KEDA=1 (make e2e-keda): KEDA's first build takes about 10 minutes")
	}
	skipUnlessE2E(t)
	// A node of the test's own, as every scenario that could disturb a
	// broker has; without the management plugin, which amqp does not need.
	e := setup(t, config{cluster: []cluster.Option{cluster.WithKEDA()}, node: brokertest.StartNode(t)})
	t.Cleanup(func() { fmt.Fprintf(os.Stdout, "\ne2e KEDA report:\n%s\n", e) })
	e.declareQueue(t)
	e.sets = append(e.sets,
		"keda.enabled=true",
		// The chart's opt-in to what AMQP counts (ready messages only): no
		// management plugin needed.
		"keda.protocol=amqp",
		"keda.minReplicaCount=0",
		"keda.maxReplicaCount=3",
		// Seconds, not the chart's minutes, so the suite fits in CI.
		"keda.pollingInterval=2",
		"keda.cooldownPeriod=10",
	)
	scenarios := []kedaScenario{
		{name: "keda-from-zero", run: (*env).testFromZero},
		{name: "keda-back-to-zero", run: (*env).testBackToZero},
	}
	e.runKEDA(t, scenarios)
}

// TestKEDAManagement runs the chart's ScaledObject with its default
// protocol, http, which reads the queue from the management plugin and
// counts the messages being handled: on a RabbitMQ node of the test's own
// with the plugin on (the machine's broker runs without it). Scenarios:
// keda-http-back-to-zero (keda-back-to-zero, where KEDA must not scale the
// busy pod away), then keda-out (a backlog of slow messages: out to
// maxReplicaCount, every new pod takes work, back to zero without cutting
// a call).
func TestKEDAManagement(t *testing.T) {
	if os.Getenv("WARREN_E2E_KEDA") != "1" {
		t.Skip("the KEDA scenarios run with WARREN_E2E_KEDA=1 (make e2e-keda): KEDA's first build takes about 10 minutes")
	}
	skipUnlessE2E(t)
	node := brokertest.StartNode(t)
	mgmt := enableManagement(t, node)
	e := setup(t, config{cluster: []cluster.Option{cluster.WithKEDA()}, node: node})
	t.Cleanup(func() { fmt.Fprintf(os.Stdout, "\ne2e KEDA (management) report:\n%s\n", e) })
	e.declareQueue(t)

	// The pods read the AMQP URL, KEDA the management API's, both from the
	// chart's Secret. KEDA runs on the host, so loopback reaches the node,
	// as guest (the management API wants a user with a tag).
	e.sets = append(e.sets,
		"keda.enabled=true",
		"keda.managementUrl="+fmt.Sprintf("http://guest:guest@%s/%s", mgmt, url.PathEscape(e.broker.vhost)),
		"keda.minReplicaCount=0",
		"keda.maxReplicaCount=3",
		"keda.pollingInterval=2",
		"keda.cooldownPeriod=2",
	)
	scenarios := []kedaScenario{
		{name: "keda-http-back-to-zero", run: func(e *env, t *testing.T) {
			e.install(t)
			waitFor(t, time.Minute, "the ScaledObject to be ready", func() (bool, string) {
				return e.scaledObjectReady(t)
			})
			e.backToZero(t, "keda-http-back-to-zero", true)
		}},
		{name: "keda-out", run: (*env).testOut},
	}
	e.runKEDA(t, scenarios)
}

// enableManagement turns the management plugin on in a running node,
// listening on loopback at a port of its own, and returns its address.
func enableManagement(t *testing.T, node *brokertest.Node) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	// What rabbitmq-plugins enable --online does, with the listener set
	// first: the node's enabled_plugins file, then rabbit_plugins:ensure.
	node.Ctl(t, "eval", fmt.Sprintf(`{ok, F} = application:get_env(rabbit, enabled_plugins_file),
		ok = file:write_file(F, <<"[rabbitmq_management].">>),
		application:set_env(rabbitmq_management, tcp_config, [{port, %d}, {ip, "127.0.0.1"}]),
		rabbit_plugins:ensure(F).`, port))
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	waitFor(t, time.Minute, "the management API", func() (bool, string) {
		resp, err := http.Get("http://guest:guest@" + addr + "/api/overview")
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, resp.Status
	})
	return addr
}

// testFromZero: installed with minReplicaCount 0, KEDA takes the
// Deployment to no pod; one message published wakes a pod, which handles
// it; the cooldown after the queue is empty takes it back to no pod, which
// exits 0 within its grace.
func (e *env) testFromZero(t *testing.T) {
	tl := newTimeline(e)
	defer func() { t.Logf("replicas and queue over time:\n%s", tl) }()

	e.install(t)
	waitFor(t, time.Minute, "the ScaledObject to be ready", func() (bool, string) {
		return e.scaledObjectReady(t)
	})
	tl.waitNoPod(t, time.Minute, "no pod (minReplicaCount 0, an empty queue)")
	// Whatever ran before KEDA scaled the Deployment in is gone; what
	// follows is the scale from zero.
	before := e.endedPods()

	published := time.Now()
	e.publish(t, "keda-from-zero", "keda-from-zero-000001")
	waitFor(t, 2*time.Minute, "a pod to start and handle the message", func() (bool, string) {
		st := tl.sample(t)
		got := e.ledger.tally("keda-from-zero")
		return got.lost == 0, fmt.Sprintf("%s; %d of %d not handled", st, got.lost, got.messages)
	})
	took := time.Since(published)
	t.Logf("published to handled from zero pods: %v (polling interval 2 s plus start-up)", took.Round(100*time.Millisecond))

	var woken []string
	for _, p := range e.pods(t) {
		woken = append(woken, p.Name)
	}
	if len(woken) != 1 {
		t.Errorf("%d pods woke for one message (%v), want 1", len(woken), woken)
	}
	tl.waitNoPod(t, 2*time.Minute, "back to no pod after the cooldown")
	e.checkScaledToZero(t, before)
	if got := e.ledger.tally("keda-from-zero"); got.duplicates != 0 {
		t.Errorf("%d duplicates, want none", got.duplicates)
	}
}

// testBackToZero: from no pod, a few messages whose handling takes longer
// than the cooldown wake a pod, which takes them all at once: the queue
// shows nothing ready while they are handled. The Deployment goes back to
// no pod; whenever KEDA takes it there, no message is handed back or
// handled twice, the pod exits 0 within its grace, and the replicas do
// not go up again (no up-down-up loop). The timeline shows whether KEDA
// scaled the pod away while it was busy: with protocol amqp KEDA counts
// ready messages only.
func (e *env) testBackToZero(t *testing.T) {
	e.backToZero(t, "keda-back-to-zero", false)
}

// backToZero is testBackToZero under the scenario name; with busySeen,
// KEDA sees the messages being handled (protocol http), and a scale-in
// while they are is a failure.
func (e *env) backToZero(t *testing.T, name string, busySeen bool) {
	const (
		messages = 4               // fewer than the chart's concurrency: all handled at once
		handling = 8 * time.Second // longer than the cooldown below
	)
	// A short cooldown, so that a busy pod's queue looks idle for longer
	// than it.
	e.upgrade(t, "keda.cooldownPeriod=2")
	e.collector.SetSlow(handling)
	defer e.collector.SetSlow(0)
	tl := newTimeline(e)
	defer func() { t.Logf("replicas and queue over time:\n%s", tl) }()
	tl.waitNoPod(t, time.Minute, "no pod at the start")
	before := e.endedPods()

	e.publish(t, name, slowIDs(name, messages)...)
	tl.waitHandled(t, 2*time.Minute, name)
	tl.waitNoPod(t, 2*time.Minute, "back to no pod")
	e.checkBackToZero(t, tl, name, busySeen, before)
}

// testOut: from no pod, a backlog of slow messages, many more than a pod
// handles at once. KEDA wakes a pod and the HPA takes the Deployment to
// maxReplicaCount; every pod that starts takes a share of the backlog
// (adaptive prefetch keeps a slow handler's window at concurrency + 1, the
// rest stays in the queue for the others); the last calls run longer than
// the cooldown, and the Deployment goes back to no pod only once they are
// done: no call cut and begun again, no message lost, no rise from zero
// after it.
func (e *env) testOut(t *testing.T) {
	const (
		name     = "keda-out"
		messages = 48
		handling = 5 * time.Second // longer than the cooldown (2 s)
		most     = 4
	)
	// Two calls a pod; a target of 2 messages a pod, so that 48 ask for
	// all 4 pods.
	e.upgrade(t, "concurrency=2", "prefetch=", fmt.Sprintf("keda.maxReplicaCount=%d", most), "keda.queueLength=2")
	e.collector.SetSlow(handling)
	defer e.collector.SetSlow(0)
	tl := newTimeline(e)
	defer func() { t.Logf("replicas and queue over time:\n%s", tl) }()
	tl.waitNoPod(t, time.Minute, "no pod at the start")
	before := e.endedPods()

	published := time.Now()
	e.publish(t, name, slowIDs(name, messages)...)
	tl.waitHandled(t, 3*time.Minute, name)
	t.Logf("%d messages of %v each handled in %v", messages, handling, time.Since(published).Round(100*time.Millisecond))
	tl.waitNoPod(t, 2*time.Minute, "back to no pod")

	if tl.peak != most {
		t.Errorf("the replicas peaked at %d, want maxReplicaCount %d", tl.peak, most)
	}
	got := e.ledger.tally(name)
	t.Logf("messages handled by pod: %v; %d duplicates, %d redelivered, %d calls begun again", got.byPod, got.duplicates, got.redelivered, got.restarted)
	if len(tl.seen) != tl.peak {
		t.Errorf("%d pods ran (%v), want %d: one per replica, none replaced", len(tl.seen), slices.Sorted(maps.Keys(tl.seen)), tl.peak)
	}
	for pod := range tl.seen {
		if got.byPod[pod] == 0 {
			t.Errorf("pod %s handled no message: it started after the backlog was taken", pod)
		}
	}
	e.checkBackToZero(t, tl, name, true, before)
}

// slowIDs are n message ids of the scenario that the collector takes its
// slow time to answer.
func slowIDs(name string, n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("%s%s%06d", name, slowMark, i+1)
	}
	return ids
}

// waitHandled samples the timeline until every message of the scenario
// was handled.
func (tl *timeline) waitHandled(t *testing.T, timeout time.Duration, name string) {
	t.Helper()
	waitFor(t, timeout, "every message handled", func() (bool, string) {
		st := tl.sample(t)
		got := tl.e.ledger.tally(name)
		return got.lost == 0, fmt.Sprintf("%s; %d of %d not handled", st, got.lost, got.messages)
	})
}

// checkBackToZero checks, once no pod is left, what a scale-in must not
// have done during the scenario: scale the busy Deployment to zero (a
// failure with busySeen, where KEDA counts the messages being handled,
// logged otherwise), stop a pod while its application handled a message,
// hand a message back or have it handled twice, or rise from zero again
// (the up-down-up loop); and that the pods exited 0 within their grace
// and the queue is empty.
func (e *env) checkBackToZero(t *testing.T, tl *timeline, name string, busySeen bool, before map[string]bool) {
	t.Helper()
	switch {
	case tl.zeroBusy > 0 && busySeen:
		t.Errorf("KEDA scaled the Deployment to 0 while the pods were handling messages (%d samples), though it counts them", tl.zeroBusy)
	case tl.zeroBusy > 0:
		t.Logf("KEDA scaled the Deployment to 0 while the pod was handling messages (protocol amqp counts ready messages only); the pod drained them within its grace")
	}
	if tl.leavingBusy > 0 && busySeen {
		t.Errorf("a pod was being deleted while its application handled a message (%d samples)", tl.leavingBusy)
	}
	got := e.ledger.tally(name)
	if got.duplicates != 0 || got.redelivered != 0 || got.restarted != 0 {
		t.Errorf("%d duplicates, %d redelivered, %d calls begun again: a scale-in handed work back", got.duplicates, got.redelivered, got.restarted)
	}
	rises := 0
	for i := 1; i < len(tl.rows); i++ {
		if tl.rows[i-1].replicas == 0 && tl.rows[i].replicas > 0 {
			rises++
		}
	}
	if rises != 1 {
		t.Errorf("the replicas rose from 0 %d times, want once (no up-down-up loop)", rises)
	}
	e.checkScaledToZero(t, before)
}

// endedPods are the pods (namespace/name) with a container ended so far.
func (e *env) endedPods() map[string]bool {
	ended := map[string]bool{}
	for _, end := range e.kubelet.Terminations() {
		ended[end.Pod] = true
	}
	return ended
}

// checkScaledToZero checks, once no pod is left, that every pod that ended
// since before exited 0 within its grace, and that the queue holds nothing
// ready or unacknowledged.
func (e *env) checkScaledToZero(t *testing.T, before map[string]bool) {
	t.Helper()
	var gone []string
	for _, end := range e.kubelet.Terminations() {
		name := strings.TrimPrefix(end.Pod, e.ns+"/")
		if !before[end.Pod] && !slices.Contains(gone, name) {
			gone = append(gone, name)
		}
	}
	e.checkExits(t, gone)
	ready, unacked := e.broker.queueCounts(t, e.queue)
	if ready != 0 || unacked != 0 {
		t.Errorf("queue: %d ready, %d unacked at the end, want none", ready, unacked)
	}
}

// waitNoPod waits until the Deployment wants no replica and no pod is
// left, in the API or in the kubelet.
func (tl *timeline) waitNoPod(t *testing.T, timeout time.Duration, what string) {
	t.Helper()
	waitFor(t, timeout, what, func() (bool, string) {
		st := tl.sample(t)
		return st.replicas == 0 && st.pods == 0 && tl.e.kubelet.Pods() == 0, st.String()
	})
}

// scaledObjectReady reports the chart's ScaledObject's Ready condition.
func (e *env) scaledObjectReady(t *testing.T) (bool, string) {
	t.Helper()
	so, err := e.dyn.Resource(scaledObjects).Namespace(e.ns).Get(context.Background(), release, metav1.GetOptions{})
	if err != nil {
		return false, err.Error()
	}
	conds, _, _ := unstructured.NestedSlice(so.Object, "status", "conditions")
	for _, c := range conds {
		m, _ := c.(map[string]any)
		if m["type"] == "Ready" {
			return m["status"] == "True", fmt.Sprintf("Ready %v: %v %v", m["status"], m["reason"], m["message"])
		}
	}
	return false, "no Ready condition yet"
}

// declareQueue declares the queue as warren declares a classic one, as the
// producer's side would before the first pod exists: with no pod, nothing
// else declares it, and KEDA's scaler reads its length by a passive
// declare.
func (e *env) declareQueue(t *testing.T) {
	t.Helper()
	ch, closeConn, err := dialChannel(e.localURL)
	if err != nil {
		t.Fatalf("declare queue: %v", err)
	}
	defer closeConn()
	if _, err := ch.QueueDeclare(e.queue, true, false, false, false, amqp.Table{amqp.QueueTypeArg: amqp.QueueTypeClassic}); err != nil {
		t.Fatalf("declare queue %s: %v", e.queue, err)
	}
}

// publish publishes persistent messages, one per id, with publisher
// confirms, and counts each in the ledger once the broker confirmed it.
func (e *env) publish(t *testing.T, scenario string, ids ...string) {
	t.Helper()
	ch, closeConn, err := dialChannel(e.localURL)
	if err != nil {
		t.Fatalf("publish: %v", err)
	}
	defer closeConn()
	if err := ch.Confirm(false); err != nil {
		t.Fatalf("publish: confirm mode: %v", err)
	}
	for _, id := range ids {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", e.queue, true, false,
			amqp.Publishing{DeliveryMode: amqp.Persistent, MessageId: id, Body: []byte(id)})
		if err != nil {
			cancel()
			t.Fatalf("publish: %v", err)
		}
		acked, err := dc.WaitContext(ctx)
		cancel()
		if err != nil || !acked {
			t.Fatalf("publish %s: confirmed %v, %v", id, acked, err)
		}
		e.ledger.confirm(scenario, id)
	}
}

// timeline records the Deployment's replicas, the pods and the queue's
// ready messages each time one of them changes.
type timeline struct {
	e     *env
	start time.Time
	rows  []state
	// What the samples saw beyond the rows: the most replicas, every pod,
	// samples with no replica wanted while messages were handled, and
	// samples with a pod being deleted while its application handled one.
	peak                  int
	seen                  map[string]bool
	zeroBusy, leavingBusy int
}

type state struct {
	at                   time.Duration
	replicas, pods, busy int
	ready                int
	handling             int // messages the application is handling
	leaving              int // of those, on pods being deleted
}

func (s state) String() string {
	return fmt.Sprintf("replicas %d, pods %d (%d ready), queue %d ready, %d being handled (%d on pods being deleted)",
		s.replicas, s.pods, s.busy, s.ready, s.handling, s.leaving)
}

func newTimeline(e *env) *timeline {
	return &timeline{e: e, start: time.Now(), seen: map[string]bool{}}
}

// sample reads the state now, and records it if it changed.
func (tl *timeline) sample(t *testing.T) state {
	t.Helper()
	st := state{at: time.Since(tl.start)}
	d, err := tl.e.cs.AppsV1().Deployments(tl.e.ns).Get(context.Background(), release, metav1.GetOptions{})
	if err == nil && d.Spec.Replicas != nil {
		st.replicas = int(*d.Spec.Replicas)
	}
	pods := tl.e.pods(t)
	st.pods = len(pods)
	st.busy = readyPods(pods)
	st.ready = tl.e.queueReady(t)
	st.handling = tl.e.collector.Inflight()
	for _, p := range pods {
		tl.seen[p.Name] = true
		if p.DeletionTimestamp != nil {
			st.leaving += tl.e.collector.InflightOn(p.Name)
		}
	}
	tl.peak = max(tl.peak, st.replicas)
	if st.replicas == 0 && st.handling > 0 {
		tl.zeroBusy++
	}
	if st.leaving > 0 {
		tl.leavingBusy++
	}
	if n := len(tl.rows); n == 0 || tl.rows[n-1].changed(st) {
		tl.rows = append(tl.rows, st)
	}
	return st
}

// changed reports whether o differs from s in anything but its time.
func (s state) changed(o state) bool {
	s.at, o.at = 0, 0
	return s != o
}

func (tl *timeline) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%8s %9s %5s %10s %12s %14s %16s\n", "t", "replicas", "pods", "pods ready", "queue ready", "being handled", "on leaving pods")
	for _, r := range tl.rows {
		fmt.Fprintf(&b, "%8s %9d %5d %10d %12d %14d %16d\n", r.at.Round(100*time.Millisecond), r.replicas, r.pods, r.busy, r.ready, r.handling, r.leaving)
	}
	return b.String()
}

// queueReady is the queue's ready count by a passive declare, what KEDA's
// amqp protocol reads too; -1 if it cannot be read.
func (e *env) queueReady(t *testing.T) int {
	t.Helper()
	ch, closeConn, err := dialChannel(e.localURL)
	if err != nil {
		return -1
	}
	defer closeConn()
	q, err := ch.QueueDeclarePassive(e.queue, true, false, false, false, nil)
	if err != nil {
		return -1
	}
	return q.Messages
}

// dialChannel opens a connection and a channel on it; closeConn closes
// both.
func dialChannel(url string) (ch *amqp.Channel, closeConn func(), err error) {
	conn, err := amqp.Dial(url)
	if err != nil {
		return nil, nil, fmt.Errorf("dial: %w", err)
	}
	ch, err = conn.Channel()
	if err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("channel: %w", err)
	}
	return ch, func() { conn.Close() }, nil
}

// kedaScenario is one scenario of a KEDA suite; each starts from the end
// state of the one before.
type kedaScenario struct {
	name string
	run  func(*env, *testing.T)
}

// runKEDA runs scenarios in turn, each counted in the suite's report, and
// stops at the first that fails.
func (e *env) runKEDA(t *testing.T, scenarios []kedaScenario) {
	t.Helper()
	for _, s := range scenarios {
		start := time.Now()
		ok := t.Run(s.name, func(t *testing.T) { s.run(e, t) })
		tl := e.ledger.tally(s.name)
		e.report = append(e.report, row{name: s.name, took: time.Since(start), messages: tl.messages, lost: tl.lost,
			duplicates: tl.duplicates, redel: tl.redelivered})
		if !ok {
			t.Fatalf("scenario %s failed; the rest are not run", s.name)
		}
	}
}
