package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	corev1 "k8s.io/api/core/v1"
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
	e := setup(t, config{cluster: []cluster.Option{cluster.WithKEDA()}})
	t.Cleanup(func() { fmt.Fprintf(os.Stdout, "\ne2e KEDA report:\n%s\n", e) })
	e.declareQueue(t)
	e.sets = append(e.sets,
		"keda.enabled=true",
		"keda.minReplicaCount=0",
		"keda.maxReplicaCount=3",
		// Seconds, not the chart's minutes, so the suite fits in CI.
		"keda.pollingInterval=2",
		"keda.cooldownPeriod=10",
	)
	scenarios := []struct {
		name string
		run  func(*env, *testing.T)
	}{
		{name: "keda-from-zero", run: (*env).testFromZero},
		{name: "keda-back-to-zero", run: (*env).testBackToZero},
	}
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

// TestKEDAManagement is keda-back-to-zero with the chart's ScaledObject
// reading the queue with protocol http from the management plugin, which
// counts the messages being handled: on a RabbitMQ node of the test's own
// with the plugin on (the machine's broker runs without it).
func TestKEDAManagement(t *testing.T) {
	if os.Getenv("WARREN_E2E_KEDA") != "1" {
		t.Skip("the KEDA scenarios run with WARREN_E2E_KEDA=1 (make e2e-keda): KEDA's first build takes about 10 minutes")
	}
	node := brokertest.StartNode(t)
	mgmt := enableManagement(t, node)
	e := setup(t, config{cluster: []cluster.Option{cluster.WithKEDA()}, node: node})
	t.Cleanup(func() { fmt.Fprintf(os.Stdout, "\ne2e KEDA (management) report:\n%s\n", e) })
	e.declareQueue(t)

	// The pods read the AMQP URL, KEDA the management API's: one Secret,
	// two keys. KEDA runs on the host, so loopback reaches the node, as
	// guest (the management API wants a user with a tag).
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "broker", Namespace: e.ns},
		StringData: map[string]string{
			"url":       e.podURL,
			"keda-http": fmt.Sprintf("http://guest:guest@%s/%s", mgmt, url.PathEscape(e.broker.vhost)),
		},
	}
	if _, err := e.cs.CoreV1().Secrets(e.ns).Create(context.Background(), secret, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.sets = append(e.sets,
		"broker.url=",
		"broker.existingSecret=broker",
		"keda.enabled=true",
		"keda.protocol=http",
		"keda.hostKey=keda-http",
		"keda.minReplicaCount=0",
		"keda.maxReplicaCount=3",
		"keda.pollingInterval=2",
		"keda.cooldownPeriod=2",
	)
	start := time.Now()
	ok := t.Run("keda-http-back-to-zero", func(t *testing.T) {
		e.install(t)
		waitFor(t, time.Minute, "the ScaledObject to be ready", func() (bool, string) {
			return e.scaledObjectReady(t)
		})
		e.backToZero(t, "keda-http-back-to-zero", true)
	})
	tl := e.ledger.tally("keda-http-back-to-zero")
	e.report = append(e.report, row{name: "keda-http-back-to-zero", took: time.Since(start), messages: tl.messages, lost: tl.lost,
		duplicates: tl.duplicates, redel: tl.redelivered})
	if !ok {
		t.Fatal("scenario keda-http-back-to-zero failed")
	}
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
	e.publishOne(t, "keda-from-zero", "keda-from-zero-000001")
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

	for i := 1; i <= messages; i++ {
		e.publishOne(t, name, fmt.Sprintf("%s%s%06d", name, slowMark, i))
	}
	scaledInBusy := 0 // samples with no replica wanted while messages were handled
	waitFor(t, 2*time.Minute, "every message handled", func() (bool, string) {
		st := tl.sample(t)
		if st.replicas == 0 && st.handling > 0 {
			scaledInBusy++
		}
		got := e.ledger.tally(name)
		return got.lost == 0, fmt.Sprintf("%s; %d of %d not handled", st, got.lost, got.messages)
	})
	tl.waitNoPod(t, 2*time.Minute, "back to no pod")
	switch {
	case scaledInBusy > 0 && busySeen:
		t.Errorf("KEDA scaled the Deployment to 0 while the pod was handling messages (%d samples), though it counts them", scaledInBusy)
	case scaledInBusy > 0:
		t.Logf("KEDA scaled the Deployment to 0 while the pod was handling messages (protocol amqp counts ready messages only); the pod drained them within its grace")
	}

	got := e.ledger.tally(name)
	if got.duplicates != 0 || got.redelivered != 0 {
		t.Errorf("%d duplicates, %d redelivered: a scale-in handed work back", got.duplicates, got.redelivered)
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

// publishOne publishes one persistent message with publisher confirms and
// counts it in the ledger once the broker confirmed it.
func (e *env) publishOne(t *testing.T, scenario, id string) {
	t.Helper()
	ch, closeConn, err := dialChannel(e.localURL)
	if err != nil {
		t.Fatalf("publish: %v", err)
	}
	defer closeConn()
	if err := ch.Confirm(false); err != nil {
		t.Fatalf("publish: confirm mode: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", e.queue, true, false,
		amqp.Publishing{DeliveryMode: amqp.Persistent, MessageId: id, Body: []byte(id)})
	if err != nil {
		t.Fatalf("publish: %v", err)
	}
	acked, err := dc.WaitContext(ctx)
	if err != nil || !acked {
		t.Fatalf("publish %s: confirmed %v, %v", id, acked, err)
	}
	e.ledger.confirm(scenario, id)
}

// timeline records the Deployment's replicas, the pods and the queue's
// ready messages each time one of them changes.
type timeline struct {
	e     *env
	start time.Time
	rows  []state
}

type state struct {
	at                   time.Duration
	replicas, pods, busy int
	ready                int
	handling             int // messages the application is handling
}

func (s state) String() string {
	return fmt.Sprintf("replicas %d, pods %d (%d ready), queue %d ready, %d being handled", s.replicas, s.pods, s.busy, s.ready, s.handling)
}

func newTimeline(e *env) *timeline { return &timeline{e: e, start: time.Now()} }

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
	if n := len(tl.rows); n == 0 || !sameState(tl.rows[n-1], st) {
		tl.rows = append(tl.rows, st)
	}
	return st
}

func sameState(a, b state) bool {
	return a.replicas == b.replicas && a.pods == b.pods && a.busy == b.busy && a.ready == b.ready && a.handling == b.handling
}

func (tl *timeline) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%8s %9s %5s %10s %12s %14s\n", "t", "replicas", "pods", "pods ready", "queue ready", "being handled")
	for _, r := range tl.rows {
		fmt.Fprintf(&b, "%8s %9d %5d %10d %12d %14d\n", r.at.Round(100*time.Millisecond), r.replicas, r.pods, r.busy, r.ready, r.handling)
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
