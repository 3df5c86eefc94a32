package warrentest_test

import (
	"context"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/warren-mq/warren/internal/brokertest"
	"github.com/warren-mq/warren/internal/warrentest"
)

// post sends body to url as warren's HTTP handler does, with the attempt
// and redelivered headers, and returns the status (0 if none came).
func post(t *testing.T, ctx context.Context, url, body, attempt string, redelivered bool) int {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Warren-Attempt", attempt)
	if redelivered {
		req.Header.Set("X-Warren-Redelivered", "true")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

func TestEndpointAnswers(t *testing.T) {
	tests := []struct {
		give    string
		attempt string
		mode    warrentest.Mode
		want    int
	}{
		{give: "m-1", attempt: "1", want: http.StatusNoContent},
		{give: "poison-m-2", attempt: "1", want: http.StatusUnprocessableEntity},
		{give: "flaky-m-3", attempt: "1", want: http.StatusServiceUnavailable},
		{give: "flaky-m-3", attempt: "2", want: http.StatusNoContent},
		{give: "m-4", attempt: "1", mode: warrentest.Fail, want: http.StatusServiceUnavailable},
		{give: "m-4", attempt: "2", mode: warrentest.Answer, want: http.StatusNoContent},
	}
	e := warrentest.NewEndpoint(t, warrentest.EndpointOptions{Work: time.Millisecond})
	for _, tt := range tests {
		e.SetMode(tt.mode)
		if got := post(t, context.Background(), e.URL("r"), tt.give, tt.attempt, false); got != tt.want {
			t.Errorf("POST %q attempt %s in mode %d = %d, want %d", tt.give, tt.attempt, tt.mode, got, tt.want)
		}
	}
}

func TestEndpointCounts(t *testing.T) {
	e := warrentest.NewEndpoint(t, warrentest.EndpointOptions{})
	ctx := context.Background()
	post(t, ctx, e.URL("a"), "m-1", "1", false)
	post(t, ctx, e.URL("a"), "m-1", "1", true) // handled twice
	post(t, ctx, e.URL("b"), "flaky-m-2", "1", false)
	post(t, ctx, e.URL("b"), "poison-m-3", "1", false)

	want := warrentest.EndpointStats{Requests: 4, OKs: 2, Redelivered: 1, Duplicates: 1}
	if got := e.Stats(); got != want {
		t.Errorf("Stats() = %+v, want %+v", got, want)
	}
	// flaky-m-2 got only its 503; poison-m-3 counts once received;
	// m-never never came.
	all := []string{"m-1", "flaky-m-2", "poison-m-3", "poison-m-never", "m-never"}
	if got, want := e.Missing(all), []string{"flaky-m-2", "poison-m-never", "m-never"}; !slices.Equal(got, want) {
		t.Errorf("Missing(%q) = %q, want %q", all, got, want)
	}
}

// TestEndpointHangsUntilTheClientGivesUp: in Hang mode a request gets no
// answer, is counted busy meanwhile, and leaves when its client gives up.
func TestEndpointHangsUntilTheClientGivesUp(t *testing.T) {
	e := warrentest.NewEndpoint(t, warrentest.EndpointOptions{})
	e.SetMode(warrentest.Hang)
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan int, 1)
	go func() { got <- post(t, ctx, e.URL("r"), "m-1", "1", false) }()
	brokertest.WaitFor(t, 10*time.Second, "the request in hand", func() bool { return e.Busy("r") == 1 })
	if e.Idle(0) {
		t.Error("Idle(0) = true with a request in hand, want false")
	}
	cancel()
	if code := <-got; code != 0 {
		t.Errorf("a hanging request got %d, want no answer", code)
	}
	brokertest.WaitFor(t, 10*time.Second, "the request gone", func() bool { return e.Busy("r") == 0 })
	if s := e.Stats(); s.OKs != 0 {
		t.Errorf("Stats().OKs = %d after a hanging request, want 0", s.OKs)
	}
}

// TestEndpointLimit: a limited endpoint answers one request at a time,
// at most rate a second; lifting the limit lets them all through at once.
// Only lower bounds on time: a loaded machine makes it slower, never
// faster.
func TestEndpointLimit(t *testing.T) {
	tests := []struct {
		give    warrentest.EndpointOptions
		limit   float64 // set after the start, if not 0
		n       int
		wantMin time.Duration
	}{
		{give: warrentest.EndpointOptions{Rate: 20}, n: 6, wantMin: 250 * time.Millisecond},
		{give: warrentest.EndpointOptions{Work: time.Millisecond}, limit: 20, n: 6, wantMin: 250 * time.Millisecond},
	}
	for _, tt := range tests {
		e := warrentest.NewEndpoint(t, tt.give)
		if tt.limit > 0 {
			e.Limit(tt.limit)
		}
		start := time.Now()
		var wg sync.WaitGroup
		for i := range tt.n {
			wg.Go(func() { post(t, context.Background(), e.URL("r"), "m-"+string(rune('a'+i)), "1", false) })
		}
		wg.Wait()
		if took := time.Since(start); took < tt.wantMin {
			t.Errorf("%d requests to an endpoint limited to 20/s (%+v, Limit(%v)) took %s, want at least %s", tt.n, tt.give, tt.limit, took, tt.wantMin)
		}
		if s := e.Stats(); s.OKs != tt.n {
			t.Errorf("Stats().OKs = %d, want %d", s.OKs, tt.n)
		}
	}
}

func TestEndpointLimitLifted(t *testing.T) {
	e := warrentest.NewEndpoint(t, warrentest.EndpointOptions{Rate: 0.5}) // one every 2 s
	e.Limit(0)
	// Still limited, the four would take 6 s and more.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() { post(t, ctx, e.URL("r"), "m-"+string(rune('a'+i)), "1", false) })
	}
	wg.Wait()
	if s := e.Stats(); s.OKs != 4 {
		t.Errorf("Stats().OKs = %d after Limit(0), want 4 within 5 s", s.OKs)
	}
	if !e.Idle(0) {
		t.Error("Idle(0) = false with every request answered, want true")
	}
}
