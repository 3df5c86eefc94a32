package charttest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	kedav1alpha1 "github.com/kedacore/keda/v2/apis/keda/v1alpha1"
	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/release"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensionsclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/restmapper"

	"github.com/warren-mq/warren/charts/test/internal/cluster"
	"github.com/warren-mq/warren/charts/test/internal/crdgen"
)

// crdKinds are the custom resources the chart renders, and the Go packages
// whose types define them.
var crdKinds = []struct {
	pkg  string
	kind schema.GroupVersionKind
}{
	{"github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1", monitoringv1.SchemeGroupVersion.WithKind("ServiceMonitor")},
	{"github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1", monitoringv1.SchemeGroupVersion.WithKind("PrometheusRule")},
	{"github.com/kedacore/keda/v2/apis/keda/v1alpha1", kedav1alpha1.SchemeGroupVersion.WithKind("ScaledObject")},
	{"github.com/kedacore/keda/v2/apis/keda/v1alpha1", kedav1alpha1.SchemeGroupVersion.WithKind("TriggerAuthentication")},
}

// TestInstall installs every scenario into a real kube-apiserver, upgrades
// it with changed values and uninstalls it. No controllers run: the API
// server validates and stores the objects, and that is the scope.
func TestInstall(t *testing.T) {
	c := cluster.Start(t)
	ctx := context.Background()
	cs, err := kubernetes.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	installCRDs(t, c)
	dyn, err := dynamic.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(discovery.NewDiscoveryClientForConfigOrDie(c.Config)))

	for _, s := range scenarios(t) {
		t.Run(s.name, func(t *testing.T) {
			t.Parallel() // each in its own namespace
			ns := "s-" + s.name
			if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
				t.Fatalf("create namespace %s: %v", ns, err)
			}
			vals := s.values(t)
			want, err := render(t, vals, ns)
			if err != nil {
				t.Fatal(err)
			}
			createMissingSecrets(t, cs, ns, want)
			cfg := helmConfig(t, c.Kubeconfig, ns)

			install := action.NewInstall(cfg)
			install.Namespace = ns
			install.ReleaseName = "warren"
			install.Timeout = time.Minute
			rel, err := install.RunWithContext(ctx, loadChart(t), vals)
			if err != nil {
				t.Fatalf("helm install (%s): %v", s.name, err)
			}
			if rel.Info.Status != release.StatusDeployed || rel.Version != 1 {
				t.Fatalf("helm install: release %s version %d, want deployed version 1", rel.Info.Status, rel.Version)
			}
			checkStored(t, dyn, mapper, ns, want)

			// Upgrade with changed values.
			sets := []string{"prefetch=48", "log.level=debug", "podLabels.upgraded=yes"}
			if !strings.Contains(s.name, "existing-secret") {
				sets = append(sets, "broker.url=amqp://warren:rotated@rabbitmq.messaging.svc:5672/")
			}
			vals2 := s.values(t, sets...)
			want2, err := render(t, vals2, ns)
			if err != nil {
				t.Fatal(err)
			}
			upgrade := action.NewUpgrade(cfg)
			upgrade.Namespace = ns
			upgrade.Timeout = time.Minute
			rel, err = upgrade.RunWithContext(ctx, "warren", loadChart(t), vals2)
			if err != nil {
				t.Fatalf("helm upgrade (%s): %v", s.name, err)
			}
			if rel.Info.Status != release.StatusDeployed || rel.Version != 2 {
				t.Fatalf("helm upgrade: release %s version %d, want deployed version 2", rel.Info.Status, rel.Version)
			}
			checkStored(t, dyn, mapper, ns, want2)
			before := all[*appsv1.Deployment](want)[0]
			d, err := cs.AppsV1().Deployments(ns).Get(ctx, before.Name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if got := envMap(warrenContainer(t, d))["WARREN_PREFETCH"].Value; got != "48" {
				t.Errorf("after upgrade WARREN_PREFETCH = %q, want 48", got)
			}
			if sum := d.Spec.Template.Annotations["checksum/secret"]; sum != "" && sum == before.Spec.Template.Annotations["checksum/secret"] {
				t.Errorf("after a URL change checksum/secret is unchanged: the pods would not roll")
			}

			uninstall := action.NewUninstall(cfg)
			uninstall.Timeout = time.Minute
			if _, err := uninstall.Run("warren"); err != nil {
				t.Fatalf("helm uninstall (%s): %v", s.name, err)
			}
			checkGone(t, dyn, mapper, ns, want2)
			releases, err := cs.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{LabelSelector: "owner=helm,name=warren"})
			if err != nil {
				t.Fatal(err)
			}
			if n := len(releases.Items); n != 0 {
				t.Errorf("%d Helm release records left after uninstall", n)
			}
		})
	}
}

// installCRDs generates the CRDs of the chart's custom resources from their
// Go types with controller-gen's generator and waits until they serve.
func installCRDs(t *testing.T, c *cluster.Cluster) {
	t.Helper()
	pkgs := map[string]bool{}
	for _, k := range crdKinds {
		pkgs[k.pkg] = true
	}
	var paths []string
	for p := range pkgs {
		paths = append(paths, p)
	}
	started := time.Now()
	crds, err := crdgen.Generate(".", paths...)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("generated %d CRDs in %v", len(crds), time.Since(started).Round(time.Millisecond))
	client, err := apiextensionsclient.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var names []string
	for _, k := range crdKinds {
		crd := findCRD(crds, k.kind)
		if crd == nil {
			t.Fatalf("controller-gen made no CRD for %v", k.kind)
		}
		if _, err := client.ApiextensionsV1().CustomResourceDefinitions().Create(ctx, crd, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create CRD %s: %v", crd.Name, err)
		}
		names = append(names, crd.Name)
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, name := range names {
		for {
			crd, err := client.ApiextensionsV1().CustomResourceDefinitions().Get(ctx, name, metav1.GetOptions{})
			if err == nil && established(crd) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("CRD %s not established after 30s: %v", name, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

func findCRD(crds []*apiextensionsv1.CustomResourceDefinition, gvk schema.GroupVersionKind) *apiextensionsv1.CustomResourceDefinition {
	for _, c := range crds {
		if c.Spec.Group != gvk.Group || c.Spec.Names.Kind != gvk.Kind {
			continue
		}
		for _, v := range c.Spec.Versions {
			if v.Name == gvk.Version && v.Served {
				return c
			}
		}
	}
	return nil
}

func established(crd *apiextensionsv1.CustomResourceDefinition) bool {
	for _, c := range crd.Status.Conditions {
		if c.Type == apiextensionsv1.Established && c.Status == apiextensionsv1.ConditionTrue {
			return true
		}
	}
	return false
}

// helmConfig is what `helm --kubeconfig K --namespace N` sets up.
func helmConfig(t *testing.T, kubeconfig, ns string) *action.Configuration {
	t.Helper()
	flags := genericclioptions.NewConfigFlags(false)
	flags.KubeConfig = &kubeconfig
	flags.Namespace = &ns
	cache := t.TempDir()
	flags.CacheDir = &cache
	cfg := new(action.Configuration)
	if err := cfg.Init(flags, ns, "secret", t.Logf); err != nil {
		t.Fatalf("helm configuration: %v", err)
	}
	return cfg
}

// createMissingSecrets creates the Secrets the Deployment mounts but the
// chart does not render (existingSecret scenarios), as their owner would.
func createMissingSecrets(t *testing.T, cs kubernetes.Interface, ns string, r *rendered) {
	t.Helper()
	have := map[string]bool{}
	for _, s := range all[*corev1.Secret](r) {
		have[s.Name] = true
	}
	for _, d := range all[*appsv1.Deployment](r) {
		for _, v := range d.Spec.Template.Spec.Volumes {
			if v.Secret == nil || have[v.Secret.SecretName] {
				continue
			}
			sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: v.Secret.SecretName}, Data: map[string][]byte{}}
			for _, it := range v.Secret.Items {
				sec.Data[it.Key] = []byte("placeholder for " + it.Key)
			}
			if _, err := cs.CoreV1().Secrets(ns).Create(context.Background(), sec, metav1.CreateOptions{}); err != nil {
				t.Fatalf("create Secret %s: %v", sec.Name, err)
			}
			have[sec.Name] = true
		}
	}
}

// manifests are the rendered objects Helm installs: all but the hooks.
func manifests(r *rendered) []runtime.Object {
	var out []runtime.Object
	for _, o := range r.objects {
		if _, hook := o.(metav1.Object).GetAnnotations()["helm.sh/hook"]; !hook {
			out = append(out, o)
		}
	}
	return out
}

// checkStored checks that every rendered object is in the API server and
// holds all that was rendered: nothing was pruned by a CRD schema or
// dropped by the server.
func checkStored(t *testing.T, dyn dynamic.Interface, mapper meta.RESTMapper, ns string, r *rendered) {
	t.Helper()
	for _, o := range manifests(r) {
		gvk := gvkOf(o)
		name := o.(metav1.Object).GetName()
		got, err := resource(t, dyn, mapper, ns, gvk).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			t.Errorf("get %s %s: %v", gvk.Kind, name, err)
			continue
		}
		want, err := runtime.DefaultUnstructuredConverter.ToUnstructured(o)
		if err != nil {
			t.Fatal(err)
		}
		for _, field := range []string{"spec", "data", "rules", "roleRef", "subjects"} {
			if w, ok := want[field]; ok {
				if err := subset(field, normalize(w), normalize(got.Object[field])); err != nil {
					t.Errorf("%s %s as stored: %v", gvk.Kind, name, err)
				}
			}
		}
	}
}

// checkGone checks that uninstall removed every object.
func checkGone(t *testing.T, dyn dynamic.Interface, mapper meta.RESTMapper, ns string, r *rendered) {
	t.Helper()
	for _, o := range manifests(r) {
		gvk := gvkOf(o)
		name := o.(metav1.Object).GetName()
		_, err := resource(t, dyn, mapper, ns, gvk).Get(context.Background(), name, metav1.GetOptions{})
		if !apierrors.IsNotFound(err) {
			t.Errorf("after uninstall, get %s %s = %v, want not found", gvk.Kind, name, err)
		}
	}
}

func resource(t *testing.T, dyn dynamic.Interface, mapper meta.RESTMapper, ns string, gvk schema.GroupVersionKind) dynamic.ResourceInterface {
	t.Helper()
	m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		t.Fatalf("map %v: %v", gvk, err)
	}
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		return dyn.Resource(m.Resource).Namespace(ns)
	}
	return dyn.Resource(m.Resource)
}

// normalize makes JSON numbers and nested types comparable.
func normalize(v any) any {
	b, _ := json.Marshal(v)
	var out any
	_ = json.Unmarshal(b, &out)
	return out
}

// subset reports where want has something got lacks or differs in; got may
// hold more (defaults the server filled in).
func subset(path string, want, got any) error {
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if len(w) == 0 && got == nil {
			return nil // a struct the Go type always has, left out of the YAML
		}
		if !ok {
			return fmt.Errorf("%s: stored %v, rendered an object", path, got)
		}
		for k, wv := range w {
			if err := subset(path+"."+k, wv, g[k]); err != nil {
				return err
			}
		}
		return nil
	case []any:
		g, ok := got.([]any)
		if !ok || len(g) != len(w) {
			return fmt.Errorf("%s: stored %v, rendered %v", path, got, want)
		}
		var errs []error
		for i := range w {
			errs = append(errs, subset(fmt.Sprintf("%s[%d]", path, i), w[i], g[i]))
		}
		return errors.Join(errs...)
	default:
		if !reflect.DeepEqual(want, got) {
			return fmt.Errorf("%s: stored %v, rendered %v", path, got, want)
		}
		return nil
	}
}
