package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensionsclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/warren-mq/warren/internal/brokertest"
	"github.com/warren-mq/warren/internal/warrentest"
)

// KEDANamespace holds KEDA's own objects: the Service behind the external
// metrics APIService, and what KEDA keeps for cluster-scoped triggers.
const KEDANamespace = "keda"

// frontProxyUser is the name in the certificate the API server presents to
// an aggregated API server (KEDA's adapter), which trusts the user it
// forwards only from that name.
const frontProxyUser = "front-proxy-client"

// pki is the test's one CA and the files made from it. One CA serves every
// purpose here: the API server's client CA, the front proxy's, and KEDA's
// mutual TLS between operator and adapter.
type pki struct {
	dir string
	ca  *brokertest.CA
}

func newPKI(t testing.TB, dir string) *pki {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	p := &pki{dir: dir, ca: brokertest.NewCA(t, "warren-test-ca")}
	writeFile(t, p.caFile(), string(p.ca.PEM))
	return p
}

func (p *pki) caFile() string { return filepath.Join(p.dir, "ca.crt") }

// issue writes name.crt and name.key, a certificate for cn valid for
// localhost and 127.0.0.1, for servers and clients both.
func (p *pki) issue(t testing.TB, name, cn string) (certFile, keyFile string) {
	t.Helper()
	c := p.ca.Issue(t, brokertest.CertOptions{Hosts: []string{"localhost", "127.0.0.1"}, ServerAndClient: true, CommonName: cn})
	certFile = filepath.Join(p.dir, name+".crt")
	keyFile = filepath.Join(p.dir, name+".key")
	writeFile(t, certFile, string(c.CertPEM))
	writeFile(t, keyFile, string(c.KeyPEM))
	return certFile, keyFile
}

// aggregationFlags are the API server's flags for aggregated API servers:
// the front proxy's client certificate, and the CAs the aggregated servers
// read back from kube-system/extension-apiserver-authentication (without a
// client CA they loop on "missing content for CA bundle").
func (p *pki) aggregationFlags(t testing.TB) []string {
	t.Helper()
	cert, key := p.issue(t, "front-proxy-client", frontProxyUser)
	return []string{
		"--client-ca-file=" + p.caFile(),
		"--requestheader-client-ca-file=" + p.caFile(),
		"--requestheader-allowed-names=" + frontProxyUser,
		"--requestheader-username-headers=X-Remote-User",
		"--requestheader-group-headers=X-Remote-Group",
		"--requestheader-extra-headers-prefix=X-Remote-Extra-",
		"--proxy-client-cert-file=" + cert,
		"--proxy-client-key-file=" + key,
	}
}

// startKEDA applies KEDA's CRDs, starts its operator and metrics adapter out
// of cluster and registers the adapter as external.metrics.k8s.io. It
// returns once that API answers.
func startKEDA(t testing.TB, c *Cluster, operator, adapter string) {
	t.Helper()
	ctx := context.Background()
	cs, err := kubernetes.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	applyKEDACRDs(t, c)
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: KEDANamespace}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace %s: %v", KEDANamespace, err)
	}

	// Operator and adapter talk gRPC with mutual TLS: each reads ca.crt,
	// tls.crt and tls.key from its certificate directory, and the operator
	// exits when they are missing.
	certDir := filepath.Join(c.dir, "keda-certs")
	p := newPKI(t, certDir)
	p.issue(t, "tls", "localhost")

	grpcAddr := fmt.Sprintf("127.0.0.1:%d", warrentest.FreePort(t))
	env := []string{
		"KUBECONFIG=" + c.Kubeconfig,
		"WATCH_NAMESPACE=", // all
		"POD_NAMESPACE=" + KEDANamespace,
		"KEDA_CLUSTER_OBJECT_NAMESPACE=" + KEDANamespace,
	}
	op := run(t, c.dir, KEDAOperator, env, operator,
		"--leader-elect=false",
		"--enable-cert-rotation=false",
		"--enable-webhook-patching=false",
		"--enable-apiservice-patching=false",
		"--cert-dir="+certDir,
		"--metrics-bind-address=0",
		fmt.Sprintf("--health-probe-bind-address=127.0.0.1:%d", warrentest.FreePort(t)),
		"--metrics-service-bind-address="+grpcAddr,
		"--zap-log-level=info",
	)
	port := warrentest.FreePort(t)
	ad := run(t, c.dir, KEDAAdapter, env, adapter,
		"--lister-kubeconfig="+c.Kubeconfig,
		"--authentication-kubeconfig="+c.Kubeconfig,
		"--authorization-kubeconfig="+c.Kubeconfig,
		"--metrics-service-address="+grpcAddr,
		"--bind-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", port),
		fmt.Sprintf("--port=%d", warrentest.FreePort(t)), // its own /metrics
		"--cert-dir="+certDir,
		"--tls-cert-file="+filepath.Join(certDir, "tls.crt"),
		"--tls-private-key-file="+filepath.Join(certDir, "tls.key"),
		"--v=1",
	)

	// No kube-proxy, and Endpoints refuse loopback addresses: an
	// ExternalName Service to localhost is what the aggregator can resolve.
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "keda-metrics-apiserver", Namespace: KEDANamespace},
		Spec: corev1.ServiceSpec{
			Type:         corev1.ServiceTypeExternalName,
			ExternalName: "localhost",
			Ports:        []corev1.ServicePort{{Name: "https", Port: int32(port)}},
		},
	}
	if _, err := cs.CoreV1().Services(KEDANamespace).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create the adapter's Service: %v", err)
	}
	dyn, err := dynamic.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	apiService := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "apiregistration.k8s.io/v1",
		"kind":       "APIService",
		"metadata":   map[string]any{"name": "v1beta1.external.metrics.k8s.io"},
		"spec": map[string]any{
			"group":   "external.metrics.k8s.io",
			"version": "v1beta1",
			"service": map[string]any{"namespace": KEDANamespace, "name": svc.Name, "port": int64(port)},
			// The adapter's certificate is the test's own; the
			// aggregator reaches it on loopback.
			"insecureSkipTLSVerify": true,
			"groupPriorityMinimum":  int64(100),
			"versionPriority":       int64(100),
		},
	}}
	apiServices := schema.GroupVersionResource{Group: "apiregistration.k8s.io", Version: "v1", Resource: "apiservices"}
	if _, err := dyn.Resource(apiServices).Create(ctx, apiService, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create the external metrics APIService: %v", err)
	}
	// The API answers through the aggregator once the adapter serves and
	// has reached the operator.
	err = waitFor(ad, 2*time.Minute, func() error {
		if err := op.exited(); err != nil {
			return err
		}
		return cs.Discovery().RESTClient().Get().AbsPath("/apis/external.metrics.k8s.io/v1beta1").Do(ctx).Error()
	})
	if err != nil {
		t.Fatal(err)
	}
}

// applyKEDACRDs applies the CRDs of the KEDA module the binaries are built
// from, server-side (the ScaledJob CRD is too large for the annotation of a
// client-side apply), and waits until they are established.
func applyKEDACRDs(t testing.TB, c *Cluster) {
	t.Helper()
	src, err := sourceDir(sources[KEDAOperator].module)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", sources[KEDAOperator].version)
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=readonly")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("find the KEDA module: %v", err)
	}
	files, err := filepath.Glob(filepath.Join(strings.TrimSpace(string(out)), "config", "crd", "bases", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("KEDA CRDs in %s: %v (%d files)", out, err, len(files))
	}
	client, err := apiextensionsclient.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var names []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		js, err := utilyaml.ToJSON(b)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		var crd apiextensionsv1.CustomResourceDefinition
		if err := json.Unmarshal(js, &crd); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		force := true
		_, err = client.ApiextensionsV1().CustomResourceDefinitions().Patch(ctx, crd.Name, types.ApplyPatchType, js,
			metav1.PatchOptions{FieldManager: "warren-test", Force: &force})
		if err != nil {
			t.Fatalf("apply %s: %v", filepath.Base(f), err)
		}
		names = append(names, crd.Name)
	}
	for _, name := range names {
		deadline := time.Now().Add(time.Minute)
		for {
			crd, err := client.ApiextensionsV1().CustomResourceDefinitions().Get(ctx, name, metav1.GetOptions{})
			if err == nil && established(crd) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("CRD %s not established after a minute: %v", name, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

func established(crd *apiextensionsv1.CustomResourceDefinition) bool {
	for _, c := range crd.Status.Conditions {
		if c.Type == apiextensionsv1.Established {
			return c.Status == apiextensionsv1.ConditionTrue
		}
	}
	return false
}
