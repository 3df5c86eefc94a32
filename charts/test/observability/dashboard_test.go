package observability

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/storage"
)

// dashboardFile is the dashboard the chart ships.
var dashboardFile = filepath.Join(chartDir, "dashboards", "warren.json")

// dashboard is what the test reads of Grafana's dashboard JSON.
type dashboard struct {
	Panels     []panel `json:"panels"`
	Templating struct {
		List []variable `json:"list"`
	} `json:"templating"`
}

// variable is a template variable; Query is a query variable's.
type variable struct {
	Name  string `json:"name"`
	Type  string `json:"type"`
	Query any    `json:"query"`
}

type panel struct {
	Title   string  `json:"title"`
	Type    string  `json:"type"`
	Targets []query `json:"targets"`
	Panels  []panel `json:"panels"` // of a collapsed row
}

type query struct {
	Expr    string `json:"expr"`
	Legend  string `json:"legendFormat"`
	RefID   string `json:"refId"`
	Instant bool   `json:"instant"`
}

// readDashboard returns the panels of the shipped dashboard, rows' panels
// included, and its template variables.
func readDashboard(t *testing.T) ([]panel, []variable) {
	t.Helper()
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	var flat []panel
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			if p.Type == "row" {
				walk(p.Panels)
				continue
			}
			flat = append(flat, p)
		}
	}
	walk(d.Panels)
	return flat, d.Templating.List
}

// labelValues is the query of a variable that lists a label's values.
var labelValues = regexp.MustCompile(`^label_values\((.+),\s*([A-Za-z_][A-Za-z0-9_]*)\)$`)

// checkVariables checks that each query variable, label_values(selector,
// label) with the variables before it substituted, offers the value the
// test gives it (want, unescaped).
func checkVariables(ctx context.Context, t *testing.T, e evaluator, vars []variable, values, want map[string]string, at time.Time) {
	t.Helper()
	for _, v := range vars {
		if v.Type != "query" {
			continue
		}
		q, _ := v.Query.(string)
		m := labelValues.FindStringSubmatch(q)
		if m == nil {
			t.Errorf("variable %s: query %v is not label_values(selector, label)", v.Name, v.Query)
			continue
		}
		sel := m[1]
		for k, val := range values {
			sel = strings.ReplaceAll(sel, "$"+k, val)
		}
		got, err := e.instant(ctx, sel, at)
		if err != nil {
			t.Errorf("variable %s: %v", v.Name, err)
			continue
		}
		found := false
		var offered []string
		for _, s := range got {
			l := s.labels.Get(m[2])
			offered = append(offered, l)
			found = found || l == want[v.Name]
		}
		if !found {
			t.Errorf("variable %s (%s) offers %q, want %q among them", v.Name, q, offered, want[v.Name])
		}
	}
}

// series is one evaluated series: its labels, its legend as Grafana
// writes it, and its points (one for an instant query).
type series struct {
	labels labels.Labels
	legend string
	points []promql.FPoint
}

// last returns the value of the last point.
func (s series) last() float64 { return s.points[len(s.points)-1].F }

// max returns the largest value, NaN aside.
func (s series) max() float64 {
	m := math.Inf(-1)
	for _, p := range s.points {
		if !math.IsNaN(p.F) {
			m = math.Max(m, p.F)
		}
	}
	return m
}

// min returns the smallest value, NaN aside.
func (s series) min() float64 {
	m := math.Inf(1)
	for _, p := range s.points {
		if !math.IsNaN(p.F) {
			m = math.Min(m, p.F)
		}
	}
	return m
}

// panelResult is what a panel's queries returned, by refId.
type panelResult struct {
	panel
	byRef map[string][]series
}

// legend returns the series of the panel whose legend is want.
func (r panelResult) legend(t *testing.T, want string) series {
	t.Helper()
	var have []string
	for _, ss := range r.byRef {
		for _, s := range ss {
			if s.legend == want {
				return s
			}
			have = append(have, s.legend)
		}
	}
	t.Fatalf("panel %q has no series %q; has %q", r.Title, want, have)
	return series{}
}

// evaluator runs PromQL over the scraped TSDB with Prometheus's engine.
type evaluator struct {
	engine *promql.Engine
	db     storage.Queryable
}

// instant evaluates expr at one time.
func (e evaluator) instant(ctx context.Context, expr string, at time.Time) ([]series, error) {
	q, err := e.engine.NewInstantQuery(ctx, e.db, nil, expr, at)
	if err != nil {
		return nil, fmt.Errorf("parse %q: %w", expr, err)
	}
	// The engine reuses a result's memory once the query is closed:
	// what is returned is copied first.
	defer q.Close()
	res := q.Exec(ctx)
	if res.Err != nil {
		return nil, fmt.Errorf("evaluate %q: %w", expr, res.Err)
	}
	v, err := res.Vector()
	if err != nil {
		return nil, fmt.Errorf("evaluate %q: %w", expr, err)
	}
	out := make([]series, 0, len(v))
	for _, s := range v {
		out = append(out, series{labels: s.Metric.Copy(), points: []promql.FPoint{{T: s.T, F: s.F}}})
	}
	return out, nil
}

// rangeQuery evaluates expr over [from, to] every step.
func (e evaluator) rangeQuery(ctx context.Context, expr string, from, to time.Time, step time.Duration) ([]series, error) {
	q, err := e.engine.NewRangeQuery(ctx, e.db, nil, expr, from, to, step)
	if err != nil {
		return nil, fmt.Errorf("parse %q: %w", expr, err)
	}
	defer q.Close()
	res := q.Exec(ctx)
	if res.Err != nil {
		return nil, fmt.Errorf("evaluate %q: %w", expr, res.Err)
	}
	m, err := res.Matrix()
	if err != nil {
		return nil, fmt.Errorf("evaluate %q: %w", expr, err)
	}
	out := make([]series, 0, len(m))
	for _, s := range m {
		out = append(out, series{labels: s.Metric.Copy(), points: append([]promql.FPoint(nil), s.Floats...)})
	}
	return out, nil
}

// evaluatePanels evaluates every query of every panel as Grafana would
// over [from, to]: a stat panel's (instant) queries at to, the others as
// range queries at the scrape interval. vars are the template variables'
// values; a query with a variable vars lacks fails the test, and so does a
// query that returns no data.
func evaluatePanels(ctx context.Context, t *testing.T, e evaluator, panels []panel, vars map[string]string, from, to time.Time, step time.Duration) []panelResult {
	t.Helper()
	var pairs []string
	for k, v := range vars {
		pairs = append(pairs, "${"+k+"}", v, "$"+k, v)
	}
	// Longer names first, so that $__range never eats $__rate_interval.
	sortByLength(pairs)
	replace := strings.NewReplacer(pairs...)
	legend := regexp.MustCompile(`\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}`)
	var out []panelResult
	for _, p := range panels {
		r := panelResult{panel: p, byRef: map[string][]series{}}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, q := range p.Targets {
			expr := replace.Replace(q.Expr)
			if strings.Contains(expr, "$") {
				t.Errorf("panel %q, query %s: %q still has a variable after substituting %v", p.Title, q.RefID, expr, vars)
				continue
			}
			var got []series
			var err error
			if q.Instant || p.Type == "stat" {
				got, err = e.instant(ctx, expr, to)
			} else {
				got, err = e.rangeQuery(ctx, expr, from, to, step)
			}
			if err != nil {
				t.Errorf("panel %q, query %s: %v", p.Title, q.RefID, err)
				continue
			}
			for i := range got {
				got[i].legend = legend.ReplaceAllStringFunc(q.Legend, func(m string) string {
					return got[i].labels.Get(legend.FindStringSubmatch(m)[1])
				})
				if got[i].legend == "" {
					got[i].legend = got[i].labels.String()
				}
			}
			if !hasData(got) {
				t.Errorf("panel %q, query %s returned no data: %s", p.Title, q.RefID, expr)
			}
			r.byRef[q.RefID] = got
		}
		out = append(out, r)
	}
	return out
}

// hasData reports whether any point of ss is a number.
func hasData(ss []series) bool {
	for _, s := range ss {
		for _, p := range s.points {
			if !math.IsNaN(p.F) {
				return true
			}
		}
	}
	return false
}

// sortByLength orders old/new pairs by the length of old, longest first.
func sortByLength(pairs []string) {
	for i := 0; i < len(pairs); i += 2 {
		for j := i + 2; j < len(pairs); j += 2 {
			if len(pairs[j]) > len(pairs[i]) {
				pairs[i], pairs[i+1], pairs[j], pairs[j+1] = pairs[j], pairs[j+1], pairs[i], pairs[i+1]
			}
		}
	}
}
