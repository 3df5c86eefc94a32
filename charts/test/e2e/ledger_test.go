package e2e

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestCollectorCounts checks the accounting the KEDA scenarios rely on,
// without a cluster: a call cut short (the caller gave up, as a pod being
// killed does) and begun again elsewhere counts as begun twice and handled
// once; the messages are counted by the pod that handled them; the calls
// under way are counted by pod.
func TestCollectorCounts(t *testing.T) {
	l := newLedger()
	c := startCollector(t, "127.0.0.1:0", l)
	c.SetSlow(time.Minute)
	for _, id := range []string{"s-1", "s-2", "s" + slowMark + "3"} {
		l.confirm("s", id)
	}
	post := func(ctx context.Context, id, pod string) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url, strings.NewReader(id))
		if err != nil {
			return err
		}
		req.Header.Set("X-Pod", pod)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		return resp.Body.Close()
	}
	for _, give := range []struct{ id, pod string }{{"s-1", "pod-a"}, {"s-2", "pod-b"}, {"s-2", "pod-a"}} {
		if err := post(context.Background(), give.id, give.pod); err != nil {
			t.Fatal(err)
		}
	}

	// The slow one: cut while pod-a handles it, then handled by pod-b.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- post(ctx, "s"+slowMark+"3", "pod-a") }()
	waitFor(t, 10*time.Second, "the slow call under way on pod-a", func() (bool, string) {
		return c.InflightOn("pod-a") == 1 && c.Inflight() == 1, "not yet"
	})
	cancel()
	<-done
	waitFor(t, 10*time.Second, "the cut call to end", func() (bool, string) { return c.Inflight() == 0, "still under way" })
	c.SetSlow(0)
	if err := post(context.Background(), "s"+slowMark+"3", "pod-b"); err != nil {
		t.Fatal(err)
	}

	got := l.tally("s")
	if got.messages != 3 || got.lost != 0 || got.duplicates != 1 || got.restarted != 2 {
		t.Errorf("tally = %d messages, %d lost, %d duplicates, %d begun again; want 3, 0, 1 (s-2), 2 (s-2 and the cut one)",
			got.messages, got.lost, got.duplicates, got.restarted)
	}
	if got.byPod["pod-a"] != 2 || got.byPod["pod-b"] != 2 {
		t.Errorf("handled by pod = %v, want pod-a 2 (s-1, s-2), pod-b 2 (s-2, the slow one)", got.byPod)
	}
}
