// Package charttest tests the Helm chart in ../warren and the Dockerfile:
// lint and render every scenario in ../warren/ci, decode each object
// strictly into its API type, install, upgrade and uninstall against a real
// kube-apiserver, and run the warren binary exactly as the rendered
// Deployment tells the kubelet to.
package charttest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	kedav1alpha1 "github.com/kedacore/keda/v2/apis/keda/v1alpha1"
	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/cli/values"
	"helm.sh/helm/v3/pkg/getter"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer/json"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
)

const (
	chartDir = "../warren"
	repoRoot = "../.."
)

// twoValues are all a user must give.
var twoValues = []string{
	"queue.name=orders",
	"broker.url=amqp://warren:secret@rabbitmq.messaging.svc:5672/",
}

// scenario is one set of values the chart is tested with: the two values
// alone, or a file under ci/ (which carries its own).
type scenario struct {
	name string
	file string // path of the values file; empty for twoValues
}

// scenarios returns the two-value install and every ci/*-values.yaml, so a
// new file there is tested without touching the tests.
func scenarios(t testing.TB) []scenario {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(chartDir, "ci", "*-values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 6 {
		t.Fatalf("ci/ holds %d scenario files, want at least 6", len(files))
	}
	sort.Strings(files)
	out := []scenario{{name: "two-values"}}
	for _, f := range files {
		out = append(out, scenario{name: strings.TrimSuffix(filepath.Base(f), "-values.yaml"), file: f})
	}
	return out
}

// values merges a scenario's values with --set style overrides, the way the
// helm command does.
func (s scenario) values(t testing.TB, sets ...string) map[string]any {
	t.Helper()
	opts := &values.Options{Values: sets}
	if s.file == "" {
		opts.Values = append(append([]string{}, twoValues...), sets...)
	} else {
		opts.ValueFiles = []string{s.file}
	}
	vals, err := opts.MergeValues(getter.Providers{})
	if err != nil {
		t.Fatalf("values of %s: %v", s.name, err)
	}
	return vals
}

func loadChart(t testing.TB) *chart.Chart {
	t.Helper()
	c, err := loader.Load(chartDir)
	if err != nil {
		t.Fatalf("load chart: %v", err)
	}
	return c
}

// rendered is what `helm template` gives for one set of values.
type rendered struct {
	objects []runtime.Object // manifests then hooks, decoded strictly
	notes   string
}

// render renders the chart as `helm template` (client only, hooks and
// NOTES.txt included) and decodes every object strictly.
func render(t testing.TB, vals map[string]any, namespace string) (*rendered, error) {
	t.Helper()
	install := action.NewInstall(&action.Configuration{})
	install.DryRun = true
	install.ClientOnly = true
	install.Replace = true
	install.ReleaseName = "warren"
	install.Namespace = namespace
	install.KubeVersion = &chartutil.KubeVersion{Version: "v1.34.4", Major: "1", Minor: "34"}
	rel, err := install.Run(loadChart(t), vals)
	if err != nil {
		return nil, err
	}
	r := &rendered{notes: rel.Info.Notes}
	docs := []string{rel.Manifest}
	for _, h := range rel.Hooks {
		docs = append(docs, h.Manifest)
	}
	for _, d := range docs {
		objs, err := decodeAll(d)
		if err != nil {
			return nil, err
		}
		r.objects = append(r.objects, objs...)
	}
	return r, nil
}

// mustRender is render for values that must render.
func mustRender(t testing.TB, s scenario, sets ...string) *rendered {
	t.Helper()
	r, err := render(t, s.values(t, sets...), "default")
	if err != nil {
		t.Fatalf("render %s: %v", s.name, err)
	}
	return r
}

// TestMain removes what the tests of the package shared.
func TestMain(m *testing.M) {
	code := m.Run()
	for _, dir := range sharedDirs {
		os.RemoveAll(dir)
	}
	os.Exit(code)
}

// sharedDirs are removed after all tests: a binary built once for several.
var sharedDirs []string

func removeAtExit(dir string) { sharedDirs = append(sharedDirs, dir) }

var (
	scheme = newScheme()
	// strict fails on unknown and duplicate fields, as kubectl's
	// --validate=strict does.
	strict = json.NewSerializerWithOptions(json.DefaultMetaFactory, scheme, scheme,
		json.SerializerOptions{Yaml: true, Strict: true})
)

func newScheme() *runtime.Scheme {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		clientgoscheme.AddToScheme,
		monitoringv1.AddToScheme,
		kedav1alpha1.AddToScheme,
	} {
		if err := add(s); err != nil {
			panic(fmt.Sprintf("build scheme: %v", err))
		}
	}
	return s
}

// decodeAll splits a YAML stream and decodes each document strictly into
// its registered Go type; a kind the scheme does not know is an error too.
func decodeAll(stream string) ([]runtime.Object, error) {
	var out []runtime.Object
	rd := utilyaml.NewYAMLReader(bufio.NewReader(strings.NewReader(stream)))
	for {
		doc, err := rd.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("split manifests: %w", err)
		}
		if len(bytes.TrimSpace(stripComments(doc))) == 0 {
			continue
		}
		obj, gvk, err := strict.Decode(doc, nil, nil)
		if err != nil {
			return nil, fmt.Errorf("decode %s: %w\n%s", kindOf(doc), err, doc)
		}
		if _, ok := obj.(runtime.Unstructured); ok {
			return nil, fmt.Errorf("decode %v: no Go type registered", gvk)
		}
		out = append(out, obj)
	}
}

func stripComments(doc []byte) []byte {
	var b bytes.Buffer
	for _, line := range bytes.Split(doc, []byte("\n")) {
		if !bytes.HasPrefix(bytes.TrimSpace(line), []byte("#")) {
			b.Write(line)
			b.WriteByte('\n')
		}
	}
	return b.Bytes()
}

func kindOf(doc []byte) string {
	var tm metav1.TypeMeta
	_ = utilyaml.Unmarshal(doc, &tm)
	return tm.APIVersion + "/" + tm.Kind
}

// find returns the rendered object of type T named name, or fails.
func find[T runtime.Object](t testing.TB, r *rendered, name string) T {
	t.Helper()
	for _, o := range r.objects {
		if v, ok := o.(T); ok && o.(metav1.Object).GetName() == name {
			return v
		}
	}
	var zero T
	t.Fatalf("no %T named %q rendered; have %s", zero, name, r.names())
	return zero
}

// all returns the rendered objects of type T.
func all[T runtime.Object](r *rendered) []T {
	var out []T
	for _, o := range r.objects {
		if v, ok := o.(T); ok {
			out = append(out, v)
		}
	}
	return out
}

func (r *rendered) names() string {
	var s []string
	for _, o := range r.objects {
		s = append(s, fmt.Sprintf("%s/%s", gvkOf(o).Kind, o.(metav1.Object).GetName()))
	}
	return strings.Join(s, ", ")
}

func gvkOf(o runtime.Object) schema.GroupVersionKind {
	gvks, _, err := scheme.ObjectKinds(o)
	if err != nil || len(gvks) == 0 {
		return schema.GroupVersionKind{Kind: fmt.Sprintf("%T", o)}
	}
	return gvks[0]
}
