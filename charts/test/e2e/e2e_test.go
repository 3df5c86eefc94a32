package e2e

import (
	"context"
	"fmt"
	"os"
	"slices"
	"syscall"
	"testing"
	"time"

	"helm.sh/helm/v3/pkg/action"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/warren-mq/warren/charts/test/internal/kubelet"
	"github.com/warren-mq/warren/internal/brokertest"
)

// TestE2E runs the scenarios one after the other on one release, each
// under its own stream of messages, and prints the report.
func TestE2E(t *testing.T) {
	skipUnlessE2E(t)
	// A node of the test's own: broker-outage stops it, and the machine's
	// broker is left to whoever else uses it.
	e := setup(t, config{node: brokertest.StartNode(t)})
	t.Cleanup(func() { fmt.Fprintf(os.Stdout, "\ne2e report:\n%s\n", e) })

	scenarios := []struct {
		name string
		run  func(*env, *testing.T)
		// Messages must come back redelivered: a replica that held them
		// was killed.
		redelivers bool
	}{
		{name: "install", run: (*env).testInstall},
		{name: "scale-3-6-1", run: (*env).testScale},
		{name: "rolling-update", run: (*env).testRollingUpdate},
		{name: "sigstop", run: (*env).testSigstop, redelivers: true},
		{name: "broker-outage", run: (*env).testBrokerOutage},
		{name: "pdb-eviction", run: (*env).testEviction},
		{name: "uninstall", run: (*env).testUninstall},
	}
	for _, s := range scenarios {
		ok := t.Run(s.name, func(t *testing.T) { e.scenario(t, s.name, s.run, s.redelivers) })
		if !ok {
			// The next scenarios start from this one's end state.
			t.Fatalf("scenario %s failed; the rest are not run", s.name)
		}
	}
}

// scenario runs one under its own load: every message confirmed while it
// ran must be handled, and the queue must be left with nothing ready or
// unacked.
func (e *env) scenario(t *testing.T, name string, run func(*env, *testing.T), redelivers bool) {
	start := time.Now()
	before := len(e.kubelet.Terminations())
	ld := e.pub.start(name)
	stopped := false
	defer func() {
		if !stopped {
			ld.stop()
		}
	}()
	if name != "install" {
		if n := len(e.pods(t)); n == 0 {
			t.Fatal("no pods at the start")
		}
	}
	run(e, t)
	ld.stop()
	stopped = true
	if name == "uninstall" {
		// Nothing consumes any more: what was published meanwhile waits in
		// the queue, and the test takes it.
		t.Logf("drained %d messages left in the queue", drain(t, e.localURL, e.queue, e.ledger))
	}
	e.settle(t, name)

	tl := e.ledger.tally(name)
	restarts := 0
	for _, end := range e.kubelet.Terminations()[before:] {
		if end.Cause != "deleted" {
			restarts++
		}
	}
	e.report = append(e.report, row{name: name, took: time.Since(start), messages: tl.messages, lost: tl.lost,
		duplicates: tl.duplicates, restarts: restarts, redel: tl.redelivered})
	if tl.messages == 0 {
		t.Errorf("no message was confirmed during the scenario")
	}
	if redelivers && tl.redelivered == 0 {
		t.Errorf("no message came back redelivered: the killed replica held none")
	}
	if tl.lost > 0 {
		t.Errorf("%d of %d messages lost (confirmed, never handled), e.g. %v", tl.lost, tl.messages, tl.firstLost)
	}
}

// settle waits until every message the scenario published was handled and
// the queue holds nothing ready or unacknowledged.
func (e *env) settle(t *testing.T, name string) {
	t.Helper()
	waitFor(t, 2*time.Minute, "every confirmed message to be handled", func() (bool, string) {
		tl := e.ledger.tally(name)
		return tl.lost == 0, fmt.Sprintf("%d of %d not handled yet, e.g. %v", tl.lost, tl.messages, tl.firstLost)
	})
	waitFor(t, time.Minute, "an empty queue, nothing unacked", func() (bool, string) {
		ready, unacked := e.broker.queueCounts(t, e.queue)
		return ready == 0 && unacked == 0, fmt.Sprintf("%d ready, %d unacked", ready, unacked)
	})
}

// testInstall: helm install of the http-sidecar scenario with 3 replicas;
// every pod ready with an address of its own, the Service's endpoints on
// them, each replica's connection in the broker under its pod name.
func (e *env) testInstall(t *testing.T) {
	e.install(t)
	pods := e.waitRollout(t, 3, 3*time.Minute, nil)
	var ips []string
	for _, p := range pods {
		if p.Status.PodIP == "" || p.Status.PodIP == "127.0.0.1" {
			t.Errorf("pod %s has address %q, want one of its own", p.Name, p.Status.PodIP)
		}
		ips = append(ips, p.Status.PodIP)
	}
	waitFor(t, time.Minute, "the metrics Service's endpoints on the 3 pods", func() (bool, string) {
		got := e.endpoints(t)
		return slices.Equal(got, sorted(ips)), fmt.Sprintf("ready endpoints %v, pods %v", got, sorted(ips))
	})
	waitFor(t, time.Minute, "a broker connection named after each pod", func() (bool, string) {
		names := e.broker.connectionNames(t)
		for _, p := range pods {
			if !slices.Contains(names, p.Name) {
				return false, fmt.Sprintf("connections %v, pods %v", names, podNames(pods))
			}
		}
		return true, ""
	})
}

// endpoints are the ready addresses of the release's EndpointSlices.
func (e *env) endpoints(t *testing.T) []string {
	t.Helper()
	l, err := e.cs.DiscoveryV1().EndpointSlices(e.ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatalf("list endpoint slices: %v", err)
	}
	var out []string
	for _, s := range l.Items {
		for _, ep := range s.Endpoints {
			if ep.Conditions.Ready != nil && *ep.Conditions.Ready {
				out = append(out, ep.Addresses...)
			}
		}
	}
	return sorted(out)
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// testScale: replicaCount 3 -> 6 -> 1 by helm upgrade; the pods scaled
// away drain and exit 0.
func (e *env) testScale(t *testing.T) {
	before := podNames(e.pods(t))
	e.upgrade(t, "replicaCount=6")
	six := e.waitRollout(t, 6, 3*time.Minute, nil)
	e.upgrade(t, "replicaCount=1")
	one := e.waitRollout(t, 1, 3*time.Minute, nil)
	var gone []string
	for _, n := range append(before, podNames(six)...) {
		if n != one[0].Name && !slices.Contains(gone, n) {
			gone = append(gone, n)
		}
	}
	e.checkExits(t, gone)
}

// testRollingUpdate: back to 3 replicas, then a changed value rolls them
// with maxUnavailable 0: never fewer than 3 ready, every old pod exits 0
// within its grace.
func (e *env) testRollingUpdate(t *testing.T) {
	e.upgrade(t, "replicaCount=3")
	old := podNames(e.waitRollout(t, 3, 3*time.Minute, nil))
	e.upgrade(t, "prefetch=24")
	least := 3
	pods := e.waitRollout(t, 3, 5*time.Minute, func(pods []corev1.Pod) {
		least = min(least, readyPods(pods))
	})
	for _, p := range pods {
		if slices.Contains(old, p.Name) {
			t.Errorf("pod %s of the old revision is still there", p.Name)
		}
		for _, c := range p.Spec.Containers {
			for _, v := range c.Env {
				if c.Name == "warren" && v.Name == "WARREN_PREFETCH" && v.Value != "24" {
					t.Errorf("pod %s: WARREN_PREFETCH = %q, want the upgraded 24", p.Name, v.Value)
				}
			}
		}
	}
	if least < 3 {
		t.Errorf("ready pods fell to %d during the rollout, want never below 3 (maxUnavailable 0)", least)
	}
	e.checkExits(t, old)
}

// testSigstop: a replica's warren stopped with SIGSTOP fails its liveness
// probe; the kubelet kills and restarts it, its restart count goes up, and
// what it held goes to the others.
func (e *env) testSigstop(t *testing.T) {
	pods := e.waitRollout(t, 3, time.Minute, nil)
	victim := pods[0].Name
	pid := e.kubelet.PID(e.ns, victim, "warren")
	if pid == 0 {
		t.Fatalf("no warren process in pod %s", victim)
	}
	// Let it take deliveries first, so it holds some when it stops.
	waitFor(t, 30*time.Second, "deliveries to "+victim, func() (bool, string) {
		e.ledger.mu.Lock()
		defer e.ledger.mu.Unlock()
		return e.ledger.byPod[victim] > 0, "none yet"
	})
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGCONT) }) // if the kill never came
	waitFor(t, 2*time.Minute, "warren in "+victim+" restarted and ready", func() (bool, string) {
		p, err := e.cs.CoreV1().Pods(e.ns).Get(context.Background(), victim, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		for _, c := range p.Status.ContainerStatuses {
			if c.Name == "warren" {
				return c.RestartCount >= 1 && isReady(p), fmt.Sprintf("restartCount %d, last %+v, ready %v", c.RestartCount, c.LastTerminationState.Terminated, isReady(p))
			}
		}
		return false, "no warren container status"
	})
	var end *kubelet.Termination
	for _, x := range e.kubelet.Terminations() {
		if x.Pod == e.ns+"/"+victim && x.Container == "warren" {
			end = &x
		}
	}
	if end == nil || end.Cause != "liveness" || !end.Killed {
		t.Errorf("warren's end in %s = %+v, want a kill after a failed liveness probe", victim, end)
	}
	e.waitRollout(t, 3, time.Minute, nil)
}

// testBrokerOutage: the broker's app stopped for longer than the liveness
// probe's failure threshold; every pod turns NotReady, none is restarted,
// all are ready again once the broker is back. The broker is the test's
// own node.
func (e *env) testBrokerOutage(t *testing.T) {
	if !e.broker.own {
		t.Fatal("broker-outage stops the broker: it needs a node of the test's own, never the machine's")
	}
	pods := e.waitRollout(t, 3, time.Minute, nil)
	restarts := restartCount(pods)
	stopped := true
	t.Cleanup(func() {
		if stopped {
			e.broker.cleanup(t, "start_app")
		}
	})
	e.broker.ctl(t, "stop_app")
	down := time.Now()
	waitFor(t, time.Minute, "every pod NotReady", func() (bool, string) {
		n := readyPods(e.pods(t))
		return n == 0, fmt.Sprintf("%d ready", n)
	})
	// Held down well past what a liveness probe tied to the broker would
	// take to restart the pods: 2 s x 3 failures.
	outage := 3 * 2 * 3 * time.Second
	for time.Since(down) < outage {
		if n := restartCount(e.pods(t)); n != restarts {
			t.Fatalf("restarts went from %d to %d during the outage", restarts, n)
		}
		time.Sleep(time.Second)
	}
	e.broker.ctl(t, "start_app")
	stopped = false
	pods = e.waitRollout(t, 3, 3*time.Minute, nil)
	if n := restartCount(pods); n != restarts {
		t.Errorf("restarts went from %d to %d: the outage restarted pods", restarts, n)
	}
}

// testEviction: with the chart's PodDisruptionBudget (maxUnavailable 1),
// one eviction is granted and a second one at once is refused (429); the
// evicted pod drains and exits 0, and its replacement comes up.
func (e *env) testEviction(t *testing.T) {
	pods := e.waitRollout(t, 3, time.Minute, nil)
	ctx := context.Background()
	waitFor(t, time.Minute, "the budget to allow one disruption", func() (bool, string) {
		pdb, err := e.cs.PolicyV1().PodDisruptionBudgets(e.ns).Get(ctx, release, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		st := pdb.Status
		return st.ObservedGeneration == pdb.Generation && st.CurrentHealthy == 3 && st.DisruptionsAllowed == 1,
			fmt.Sprintf("healthy %d, allowed %d", st.CurrentHealthy, st.DisruptionsAllowed)
	})
	evict := func(name string) error {
		return e.cs.PolicyV1().Evictions(e.ns).Evict(ctx, &policyv1.Eviction{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: e.ns}})
	}
	if err := evict(pods[0].Name); err != nil {
		t.Fatalf("first eviction (within the budget): %v", err)
	}
	err := evict(pods[1].Name)
	if !apierrors.IsTooManyRequests(err) {
		t.Fatalf("second eviction = %v, want 429 Too Many Requests (the budget is used up)", err)
	}
	t.Logf("second eviction refused: %v", err)
	e.waitRollout(t, 3, 3*time.Minute, nil)
	e.checkExits(t, []string{pods[0].Name})
}

// testUninstall: helm uninstall; every pod drains and exits 0, and
// nothing of the release is left: objects, pods, sandboxes.
func (e *env) testUninstall(t *testing.T) {
	pods := podNames(e.pods(t))
	un := action.NewUninstall(e.helm(t))
	un.Timeout = time.Minute
	if _, err := un.Run(release); err != nil {
		t.Fatalf("helm uninstall: %v", err)
	}
	waitFor(t, 2*time.Minute, "every pod gone", func() (bool, string) {
		left := e.pods(t)
		return len(left) == 0 && e.kubelet.Pods() == 0, fmt.Sprintf("pods %v, %d sandboxes", podNames(left), e.kubelet.Pods())
	})
	e.checkExits(t, pods)
	waitFor(t, 30*time.Second, "no broker connection but the publisher's", func() (bool, string) {
		names := slices.DeleteFunc(e.broker.connectionNames(t), func(n string) bool { return n == publisherName })
		return len(names) == 0, fmt.Sprintf("connections %v", names)
	})
	// Nothing of the release is left; the garbage collector removes what
	// the deleted objects owned. Secrets: the broker URL's and Helm's
	// release records.
	for _, gvr := range []schema.GroupVersionResource{
		{Group: "apps", Version: "v1", Resource: "deployments"},
		{Group: "apps", Version: "v1", Resource: "replicasets"},
		{Version: "v1", Resource: "services"},
		{Version: "v1", Resource: "secrets"},
		{Version: "v1", Resource: "serviceaccounts"},
		{Group: "policy", Version: "v1", Resource: "poddisruptionbudgets"},
		{Group: "discovery.k8s.io", Version: "v1", Resource: "endpointslices"},
	} {
		waitFor(t, time.Minute, "no "+gvr.Resource+" left", func() (bool, string) {
			l, err := e.dyn.Resource(gvr).Namespace(e.ns).List(context.Background(), metav1.ListOptions{})
			if err != nil {
				return false, err.Error()
			}
			var names []string
			for _, o := range l.Items {
				// The namespace's own service account is not the release's.
				if gvr.Resource != "serviceaccounts" || o.GetName() != "default" {
					names = append(names, o.GetName())
				}
			}
			return len(names) == 0, fmt.Sprintf("left: %v", names)
		})
	}
}
