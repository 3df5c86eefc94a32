package cluster

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

func TestStart(t *testing.T) {
	c := Start(t)
	cs, err := kubernetes.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	v, err := cs.Discovery().ServerVersion()
	if err != nil {
		t.Fatalf("ServerVersion() = %v", err)
	}
	if v.Minor != "34" {
		t.Errorf("ServerVersion() = %s, want 1.34", v.GitVersion)
	}
	if _, err := cs.CoreV1().Namespaces().Get(context.Background(), "default", metav1.GetOptions{}); err != nil {
		t.Errorf("get namespace default: %v", err)
	}
}

func TestRequiredVersion(t *testing.T) {
	tests := []struct {
		give, want string
	}{
		{give: "module x\n\nrequire k8s.io/kubernetes v1.34.4\n", want: "v1.34.4"},
		{give: "require (\n\tk8s.io/kubernetes v1.34.2 // indirect\n)\n", want: "v1.34.2"},
		{give: "require k8s.io/kubernetes-extra v1.0.0\n", want: ""},
	}
	for _, tt := range tests {
		if got := requiredVersion(tt.give, "k8s.io/kubernetes"); got != tt.want {
			t.Errorf("requiredVersion(%q) = %q, want %q", tt.give, got, tt.want)
		}
	}
}

// TestBinaries builds (or finds cached) every control-plane component, so
// the end-to-end suite's time goes to testing. It runs with WARREN_E2E=1
// only (the chart tests need the API server alone) and, like Start, skips
// where they cannot be built, except in CI.
func TestBinaries(t *testing.T) {
	if os.Getenv("WARREN_E2E") != "1" {
		t.Skip("builds kube-controller-manager and kube-scheduler for the end-to-end suite: WARREN_E2E=1")
	}
	for _, c := range []string{KubeAPIServer, KubeControllerManager, KubeScheduler} {
		t.Logf("%s: %s", c, binary(t, c))
	}
}

// TestKEDABinaries is TestBinaries for KEDA's operator and adapter, which
// only the KEDA scenarios need (WARREN_E2E_KEDA=1): the cold build takes
// about 10 minutes and 3.4 GiB on 2 cores.
func TestKEDABinaries(t *testing.T) {
	if os.Getenv("WARREN_E2E_KEDA") != "1" {
		t.Skip("builds KEDA's operator and adapter for the end-to-end KEDA scenarios: WARREN_E2E_KEDA=1")
	}
	for _, c := range []string{KEDAOperator, KEDAAdapter} {
		t.Logf("%s: %s", c, binary(t, c))
	}
}

// TestBuildKeys checks that every component's sources are where Binary
// looks, and that the two binaries of one module are cached apart.
func TestBuildKeys(t *testing.T) {
	tests := []struct {
		give        string
		wantVersion string
	}{
		{give: KubeAPIServer, wantVersion: "v1.34.4"},
		{give: KubeControllerManager, wantVersion: "v1.34.4"},
		{give: KubeScheduler, wantVersion: "v1.34.4"},
		{give: KEDAOperator, wantVersion: "v2.21.0"},
		{give: KEDAAdapter, wantVersion: "v2.21.0"},
	}
	keys := map[string]string{}
	for _, tt := range tests {
		s := sources[tt.give]
		src, err := sourceDir(s.module)
		if err != nil {
			t.Fatalf("%s: %v", tt.give, err)
		}
		version, key, err := buildKey(src, s.pkg, s.version)
		if err != nil {
			t.Fatalf("%s: buildKey() = %v", tt.give, err)
		}
		if version != tt.wantVersion {
			t.Errorf("%s: version %s, want %s", tt.give, version, tt.wantVersion)
		}
		if other, ok := keys[key]; ok {
			t.Errorf("%s and %s have the same build key %s", tt.give, other, key)
		}
		keys[key] = tt.give
	}
}

// TestStartControlPlaneKEDA starts the control plane with KEDA: its CRDs
// served, the operator and adapter running, external.metrics.k8s.io
// answering through the aggregation layer.
func TestStartControlPlaneKEDA(t *testing.T) {
	if os.Getenv("WARREN_E2E_KEDA") != "1" {
		t.Skip("starts KEDA's operator and adapter (built once, about 10 minutes cold): WARREN_E2E_KEDA=1")
	}
	c := StartControlPlane(t, WithKEDA())
	// Built with the version stamped: unstamped, KEDA says "main".
	for _, name := range []string{KEDAOperator, KEDAAdapter} {
		b, err := os.ReadFile(filepath.Join(c.dir, name+".log"))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), "KEDA Version: v2.21.0") {
			t.Errorf("%s's log does not say KEDA Version v2.21.0:\n%s", name, tail(filepath.Join(c.dir, name+".log"), 2048))
		}
	}
	cs, err := kubernetes.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	for _, gv := range []string{"keda.sh/v1alpha1", "external.metrics.k8s.io/v1beta1"} {
		l, err := cs.Discovery().ServerResourcesForGroupVersion(gv)
		if err != nil {
			t.Errorf("ServerResourcesForGroupVersion(%s) = %v", gv, err)
			continue
		}
		if gv == "keda.sh/v1alpha1" {
			var names []string
			for _, r := range l.APIResources {
				names = append(names, r.Name)
			}
			if !slices.Contains(names, "scaledobjects") || !slices.Contains(names, "triggerauthentications") {
				t.Errorf("keda.sh/v1alpha1 resources %v, want scaledobjects and triggerauthentications", names)
			}
		}
	}
}
