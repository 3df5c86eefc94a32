package cluster

import (
	"context"
	"os"
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
