package crdgen

import "testing"

func TestGenerate(t *testing.T) {
	crds, err := Generate(".", "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1", "github.com/kedacore/keda/v2/apis/keda/v1alpha1")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range crds {
		t.Log(c.Name, len(c.Spec.Versions))
	}
}
