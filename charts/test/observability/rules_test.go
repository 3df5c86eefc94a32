package observability

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/rules"
	"github.com/prometheus/prometheus/storage"
	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/cli/values"
	"helm.sh/helm/v3/pkg/getter"
	"sigs.k8s.io/yaml"
)

// chartDir is the chart under test.
const chartDir = "../../warren"

// renderRules renders the chart as `helm template` does, in namespace,
// with the --set style values sets, and returns its PrometheusRule's
// groups as a Prometheus rule file.
func renderRules(t *testing.T, namespace string, sets ...string) string {
	t.Helper()
	c, err := loader.Load(chartDir)
	if err != nil {
		t.Fatalf("load chart: %v", err)
	}
	vals, err := (&values.Options{Values: sets}).MergeValues(getter.Providers{})
	if err != nil {
		t.Fatalf("values %v: %v", sets, err)
	}
	install := action.NewInstall(&action.Configuration{})
	install.DryRun = true
	install.ClientOnly = true
	install.Replace = true
	install.ReleaseName = "warren"
	install.Namespace = namespace
	install.KubeVersion = &chartutil.KubeVersion{Version: "v1.34.4", Major: "1", Minor: "34"}
	rel, err := install.Run(c, vals)
	if err != nil {
		t.Fatalf("render with %v: %v", sets, err)
	}
	for _, doc := range strings.Split(rel.Manifest, "\n---") {
		var obj struct {
			Kind string `json:"kind"`
			Spec struct {
				Groups []any `json:"groups"`
			} `json:"spec"`
		}
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			t.Fatalf("rendered YAML: %v\n%s", err, doc)
		}
		if obj.Kind != "PrometheusRule" {
			continue
		}
		b, err := yaml.Marshal(map[string]any{"groups": obj.Spec.Groups})
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(t.TempDir(), "rules.yaml")
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	t.Fatalf("no PrometheusRule rendered with %v", sets)
	return ""
}

// firing is when each alert fired, by "alertname job".
type firing map[string][]time.Time

// first returns the first time key fired, and whether it did.
func (f firing) first(key string) (time.Time, bool) {
	if len(f[key]) == 0 {
		return time.Time{}, false
	}
	return f[key][0], true
}

// keys returns what fired, sorted.
func (f firing) keys() []string {
	var ks []string
	for k := range f {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// evaluateRules evaluates the rule files over [from, to] every interval
// the way `promtool test rules` does: Prometheus's rule manager loads
// them, each group is evaluated at each step in order (so that for:
// counts), and the alerts firing after each step are recorded.
func evaluateRules(ctx context.Context, t *testing.T, engine *promql.Engine, db interface {
	storage.Queryable
	storage.AppendableV2
}, from, to time.Time, interval time.Duration, files ...string) firing {
	t.Helper()
	m := rules.NewManager(&rules.ManagerOptions{
		QueryFunc:    rules.EngineQueryFunc(engine, db),
		AppendableV2: db,
		Queryable:    db,
		Context:      ctx,
		NotifyFunc:   func(context.Context, string, ...*rules.Alert) {},
		Logger:       slog.New(slog.DiscardHandler),
	})
	groups, errs := m.LoadGroups(interval, labels.EmptyLabels(), "", nil, false, files...)
	if errs != nil {
		t.Fatalf("load rules: %v", errs)
	}
	for _, g := range groups {
		for _, r := range g.AlertingRules() {
			r.SetRestored(true) // as promtool: no state to restore
		}
	}
	out := firing{}
	for ts := from; !ts.After(to); ts = ts.Add(interval) {
		for _, g := range groups {
			g.Eval(ctx, ts)
			for _, r := range g.Rules() {
				if err := r.LastError(); err != nil {
					t.Fatalf("rule %s at %s: %v", r.Name(), ts, err)
				}
			}
			for _, r := range g.AlertingRules() {
				for _, a := range r.ActiveAlerts() {
					if a.State == rules.StateFiring {
						key := r.Name() + " " + a.Labels.Get("job")
						out[key] = append(out[key], ts)
					}
				}
			}
		}
	}
	return out
}
