// Package crdgen generates CustomResourceDefinitions from a project's Go API
// types with controller-tools, the library behind controller-gen, so the
// chart tests install the CRDs that match the very types they decode into
// instead of YAML copied from elsewhere.
package crdgen

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-tools/pkg/crd"
	"sigs.k8s.io/controller-tools/pkg/genall"
	"sigs.k8s.io/controller-tools/pkg/loader"
)

// Generate runs controller-gen's crd generator (crdVersions=v1, no field
// descriptions) over the Go packages named by their import paths, resolved
// in the module that contains dir, and returns every CRD it wrote.
func Generate(dir string, packages ...string) ([]*apiextensionsv1.CustomResourceDefinition, error) {
	maxDescLen := 0 // descriptions only make the objects big
	var gen genall.Generator = crd.Generator{
		CRDVersions: []string{"v1"},
		MaxDescLen:  &maxDescLen,
	}
	cfg := loaderConfig(dir)
	rt, err := genall.Generators{&gen}.ForRootsWithConfig(cfg, packages...)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", strings.Join(packages, " "), err)
	}
	out := &memoryOutput{files: map[string]*bytes.Buffer{}}
	rt.OutputRules = genall.OutputRules{Default: out}
	var errs strings.Builder
	rt.ErrorWriter = &errs
	if failed := rt.Run(); failed {
		return nil, fmt.Errorf("controller-gen crd: %s", strings.TrimSpace(errs.String()))
	}
	var crds []*apiextensionsv1.CustomResourceDefinition
	for path, buf := range out.files {
		dec := yaml.NewYAMLOrJSONDecoder(buf, 4096)
		for {
			c := &apiextensionsv1.CustomResourceDefinition{}
			if err := dec.Decode(c); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				return nil, fmt.Errorf("decode %s: %w", path, err)
			}
			if c.Name != "" {
				crds = append(crds, c)
			}
		}
	}
	if len(crds) == 0 {
		return nil, fmt.Errorf("controller-gen crd: no CRD in %s", strings.Join(packages, " "))
	}
	return crds, nil
}

// memoryOutput is a genall.OutputRule that keeps what the generator writes.
type memoryOutput struct {
	mu    sync.Mutex
	files map[string]*bytes.Buffer
}

func (m *memoryOutput) Open(_ *loader.Package, path string) (io.WriteCloser, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	buf := &bytes.Buffer{}
	m.files[path] = buf
	return nopCloser{buf}, nil
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }
