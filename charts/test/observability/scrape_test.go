package observability

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/textparse"
	"github.com/prometheus/prometheus/model/value"
	"github.com/prometheus/prometheus/tsdb"
)

// target is one scrape target: its URL and the labels that Prometheus's
// service discovery and the ServiceMonitor give its series.
type target struct {
	url    string
	labels labels.Labels // job, instance, namespace, pod
}

// scraper scrapes its targets into a TSDB the way Prometheus does: each
// series gets the target's labels and the scrape's timestamp, each target
// an up sample, and a series gone since the last scrape a staleness
// marker.
type scraper struct {
	db      *tsdb.DB
	targets []target
	client  *http.Client

	mu     sync.Mutex
	last   map[string]map[uint64]labels.Labels // series of the last scrape, by target URL
	times  []time.Time                         // of every scrape round
	errors []error                             // appends the TSDB refused
}

func newScraper(db *tsdb.DB, targets ...target) *scraper {
	return &scraper{db: db, targets: targets, client: &http.Client{Timeout: 900 * time.Millisecond},
		last: map[string]map[uint64]labels.Labels{}}
}

// run scrapes every interval until ctx ends; the first round is at once.
func (s *scraper) run(ctx context.Context, every time.Duration) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		// One timestamp per round, as Prometheus aligns a target's scrapes.
		now := time.Now()
		var wg sync.WaitGroup
		for _, tg := range s.targets {
			wg.Go(func() { s.scrape(ctx, tg, now) })
		}
		wg.Wait()
		s.mu.Lock()
		s.times = append(s.times, now)
		s.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// scrape appends one scrape of tg at ts.
func (s *scraper) scrape(ctx context.Context, tg target, ts time.Time) {
	ms := ts.UnixMilli()
	app := s.db.Appender(ctx)
	seen := map[uint64]labels.Labels{}
	up := 1.0
	err := s.get(ctx, tg.url, func(body []byte) error {
		p := textparse.NewPromParser(body, labels.NewSymbolTable(), false)
		for {
			entry, err := p.Next()
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("parse %s: %w", tg.url, err)
			}
			if entry != textparse.EntrySeries {
				continue
			}
			_, _, v := p.Series()
			var ls labels.Labels
			p.Labels(&ls)
			b := labels.NewBuilder(ls)
			tg.labels.Range(func(l labels.Label) { b.Set(l.Name, l.Value) })
			ls = b.Labels()
			if _, err := app.Append(0, ls, ms, v); err != nil {
				return fmt.Errorf("append %s: %w", ls, err)
			}
			seen[ls.Hash()] = ls
		}
	})
	if err != nil {
		// As Prometheus: nothing of a failed scrape is kept, and all of
		// the target's series go stale.
		_ = app.Rollback()
		app = s.db.Appender(ctx)
		up = 0
		seen = map[uint64]labels.Labels{}
	}
	s.mu.Lock()
	last := s.last[tg.url]
	s.last[tg.url] = seen
	s.mu.Unlock()
	for h, ls := range last {
		if _, ok := seen[h]; !ok {
			_, _ = app.Append(0, ls, ms, math.Float64frombits(value.StaleNaN))
		}
	}
	upLabels := labels.NewBuilder(tg.labels).Set(labels.MetricName, "up").Labels()
	if _, err := app.Append(0, upLabels, ms, up); err != nil {
		s.fail(err)
	}
	if err := app.Commit(); err != nil {
		s.fail(err)
	}
}

func (s *scraper) get(ctx context.Context, url string, parse func([]byte) error) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "text/plain;version=0.0.4")
	resp, err := s.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("scrape %s: %s", url, resp.Status)
	}
	return parse(body)
}

func (s *scraper) fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.errors = append(s.errors, err)
}

// rounds returns how many scrape rounds are done.
func (s *scraper) rounds() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.times)
}

// span returns the times of the first and the last scrape round.
func (s *scraper) span() (first, last time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.times) == 0 {
		return time.Time{}, time.Time{}
	}
	return s.times[0], s.times[len(s.times)-1]
}
