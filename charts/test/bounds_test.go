package charttest

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"

	"github.com/warren-mq/warren/config"
)

// schemaVar finds the variable a property of values.schema.json sets: its
// description starts with it, or names it in parentheses.
var schemaVar = regexp.MustCompile(`^(WARREN_[A-Z_]+)\b|\((WARREN_[A-Z_]+)\)`)

// intBounds is the minimum and maximum of one integer in the schema.
type intBounds struct {
	path     string
	min, max *float64
}

// schemaBounds returns the integer bounds values.schema.json gives each
// variable: a property's own, its items' (a list) and those of its
// integer alternative (anyOf).
func schemaBounds(t *testing.T) map[string][]intBounds {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(chartDir, "values.schema.json"))
	if err != nil {
		t.Fatal(err)
	}
	var root map[string]any
	if err := json.Unmarshal(b, &root); err != nil {
		t.Fatalf("values.schema.json: %v", err)
	}
	found := map[string][]intBounds{}
	var walk func(path string, node map[string]any)
	walk = func(path string, node map[string]any) {
		if desc, ok := node["description"].(string); ok {
			if m := schemaVar.FindStringSubmatch(desc); m != nil {
				name := m[1] + m[2]
				for _, n := range integerNodes(node) {
					found[name] = append(found[name], intBounds{path: path, min: number(n["minimum"]), max: number(n["maximum"])})
				}
			}
		}
		props, _ := node["properties"].(map[string]any)
		for k, v := range props {
			if child, ok := v.(map[string]any); ok {
				walk(strings.TrimPrefix(path+"."+k, "."), child)
			}
		}
	}
	walk("", root)
	return found
}

// integerNodes returns the schemas of the integers a property holds:
// itself, its items, or its alternatives; a number too (a rate, with a
// fraction), whose bounds are whole.
func integerNodes(node map[string]any) []map[string]any {
	var nodes []map[string]any
	if node["type"] == "integer" || node["type"] == "number" {
		nodes = append(nodes, node)
	}
	if items, ok := node["items"].(map[string]any); ok && items["type"] == "integer" {
		nodes = append(nodes, items)
	}
	alts, _ := node["anyOf"].([]any)
	for _, a := range alts {
		if alt, ok := a.(map[string]any); ok && alt["type"] == "integer" {
			nodes = append(nodes, alt)
		}
	}
	return nodes
}

func number(v any) *float64 {
	if f, ok := v.(float64); ok {
		return &f
	}
	return nil
}

// TestSchemaBounds checks values.schema.json against warren's own ranges
// (config.Bounds, the one place they are written): every bounded setting
// counted in integers or bytes has in the schema the minimum and maximum
// warren validates, so that the chart refuses what warren would refuse,
// and takes all that warren takes. Durations are strings in the schema,
// with a pattern and no bounds.
func TestSchemaBounds(t *testing.T) {
	found := schemaBounds(t)
	for _, b := range config.Bounds() {
		got := found[b.Var]
		if b.Unit == config.Duration {
			if len(got) != 0 {
				t.Errorf("values.schema.json bounds %s (%s) as an integer, want a duration string like warren's", b.Var, got[0].path)
			}
			continue
		}
		if len(got) == 0 {
			t.Errorf("values.schema.json has no integer property for %s, want one from %d to %d", b.Var, b.Min, b.Max)
			continue
		}
		for _, g := range got {
			if g.min == nil || g.max == nil || *g.min != float64(b.Min) || *g.max != float64(b.Max) {
				t.Errorf("values.schema.json bounds %s (%s) from %v to %v, want from %d to %d, as warren does",
					b.Var, g.path, deref(g.min), deref(g.max), b.Min, b.Max)
			}
		}
	}
}

func deref(f *float64) any {
	if f == nil {
		return "none"
	}
	return *f
}

// chartRange finds a range written in words: "1 to 1000", "1s to 168h".
var chartRange = regexp.MustCompile(`\b(\d+[A-Za-z]*) to (\d+[A-Za-z]*)\b`)

// TestChartDocsBounds: where values.yaml's comments or the chart's README
// say the range of a bounded setting, it is warren's (config.Bounds).
func TestChartDocsBounds(t *testing.T) {
	var texts []string // comment blocks of values.yaml, rows of the README
	b, err := os.ReadFile(filepath.Join(chartDir, "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var block []string
	for _, line := range strings.Split(string(b), "\n") {
		if c, ok := strings.CutPrefix(strings.TrimSpace(line), "#"); ok {
			block = append(block, strings.TrimSpace(c))
			continue
		}
		texts = append(texts, strings.Join(block, " "))
		block = nil
	}
	if b, err = os.ReadFile(filepath.Join(chartDir, "README.md")); err != nil {
		t.Fatal(err)
	}
	texts = append(texts, strings.Split(string(b), "\n")...)
	seen := map[string]bool{}
	for _, bd := range config.Bounds() {
		for _, text := range texts {
			if !strings.Contains(text, "("+bd.Var+")") {
				continue
			}
			for _, m := range chartRange.FindAllString(text, -1) {
				seen[bd.Var] = true
				if m != bd.Range() {
					t.Errorf("the chart says %s is %q, want %s:\n%s", bd.Var, m, bd.Range(), text)
				}
			}
		}
	}
	if len(seen) < 4 {
		t.Errorf("the chart's docs state the range of %d bounded settings, want at least 4: the test reads them no more", len(seen))
	}
}

// TestChartDefaults: what the two-value install sets each bounded
// variable to, when it sets one, is warren's own default.
func TestChartDefaults(t *testing.T) {
	d := find[*appsv1.Deployment](t, mustRender(t, scenario{name: "two-values"}), "warren")
	env := envMap(warrenContainer(t, d))
	for _, b := range config.Bounds() {
		if got := env[b.Var].Value; got != "" && got != b.Default {
			t.Errorf("the chart sets %s=%q by default, want warren's default %q", b.Var, got, b.Default)
		}
	}
}
