// Package kubelet is a kubelet for tests: it registers a Node, renews its
// Lease, runs the pods bound to it as processes and reports their status
// as the kubelet does. Each pod gets a network namespace of its own on the
// test's bridge (see Network); each container is a process in that
// namespace, in a mount namespace whose root holds the image's binary and
// the pod's volumes at their mount paths, running as the pod's user. Probes
// (httpGet), restarts with back-off and graceful deletion follow the
// kubelet's rules. What it does not do is listed in charts/test/e2e/README.md.
package kubelet

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"
)

// Image is what a container image stands for: the host binary that
// appears in the container at Entrypoint[0], the image's ENTRYPOINT and
// CMD, and its ENV.
type Image struct {
	Binary     string
	Entrypoint []string
	Cmd        []string
	Env        []string
}

// Config is a kubelet's.
type Config struct {
	Client   kubernetes.Interface
	NodeName string
	Network  *Network
	// Images maps an image reference without tag or digest
	// (ghcr.io/warren-mq/warren) to what it runs.
	Images map[string]Image
	// Dir holds the pods' roots, volumes and logs.
	Dir  string
	Logf func(format string, args ...any)
}

// Kubelet runs the pods of one node.
type Kubelet struct {
	cfg    Config
	probes *http.Client

	mu     sync.Mutex
	pods   map[types.UID]*podWorker
	ended  []Termination
	wg     sync.WaitGroup // the pod workers
	closed bool
}

// Termination is the end of one container process, as the kubelet saw it.
type Termination struct {
	Pod, Container string
	ExitCode       int
	// Why the kubelet stopped it: "deleted" (pod deletion), "liveness"
	// (a failed liveness or startup probe), or "" when it ended on its own.
	Cause string
	// Signalled is when SIGTERM was sent, Exited when it ended; Grace the
	// grace period it had; Killed whether SIGKILL was needed.
	Signalled, Exited time.Time
	Grace             time.Duration
	Killed            bool
}

// New returns a kubelet; Run runs it.
func New(cfg Config) *Kubelet {
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	return &Kubelet{
		cfg:  cfg,
		pods: map[types.UID]*podWorker{},
		// A connection per probe, as the kubelet's prober opens them;
		// redirects are not followed.
		probes: &http.Client{
			Transport: &http.Transport{DisableKeepAlives: true},
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return http.ErrUseLastResponse
			},
		},
	}
}

// Run runs the node's pods (Register it first) until ctx ends, then kills
// every container (SIGKILL: the test is over), removes the sandboxes and
// returns once every worker has ended.
func (k *Kubelet) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Add(1)
	go func() {
		defer wg.Done()
		k.renewLease(ctx)
	}()

	factory := informers.NewSharedInformerFactoryWithOptions(k.cfg.Client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", k.cfg.NodeName).String()
		}))
	inf := factory.Core().V1().Pods().Informer()
	_, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { k.sync(ctx, o.(*corev1.Pod)) },
		UpdateFunc: func(_, o any) { k.sync(ctx, o.(*corev1.Pod)) },
	})
	if err != nil {
		return fmt.Errorf("pod informer: %w", err)
	}
	factory.Start(ctx.Done())
	<-ctx.Done()
	factory.Shutdown()

	k.mu.Lock()
	k.closed = true
	k.mu.Unlock()
	k.wg.Wait() // workers see ctx and kill their containers
	return nil
}

// sync hands a pod to its worker, starting one for a pod new to the node.
func (k *Kubelet) sync(ctx context.Context, pod *corev1.Pod) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return
	}
	w, ok := k.pods[pod.UID]
	if !ok {
		if pod.DeletionTimestamp != nil || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
			return
		}
		w = newPodWorker(k, pod)
		k.pods[pod.UID] = w
		k.wg.Add(1)
		go func() {
			defer k.wg.Done()
			w.run(ctx)
			k.mu.Lock()
			delete(k.pods, pod.UID)
			k.mu.Unlock()
		}()
	}
	w.update(pod)
}

// Terminations returns every container end seen so far.
func (k *Kubelet) Terminations() []Termination {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]Termination(nil), k.ended...)
}

func (k *Kubelet) recordEnd(t Termination) {
	k.mu.Lock()
	k.ended = append(k.ended, t)
	k.mu.Unlock()
}

// PID returns the process of a pod's running container, 0 if none.
func (k *Kubelet) PID(namespace, pod, container string) int {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, w := range k.pods {
		if w.namespace == namespace && w.name == pod {
			return w.pid(container)
		}
	}
	return 0
}

// Pods returns how many pods the kubelet runs or tears down now: each has
// its sandbox until it is gone from this count.
func (k *Kubelet) Pods() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.pods)
}

// Register creates the node, ready, with its capacity and address.
func (k *Kubelet) Register(ctx context.Context) error {
	gw := k.cfg.Network.Gateway().String()
	res := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("16"),
		corev1.ResourceMemory: resource.MustParse("32Gi"),
		corev1.ResourcePods:   resource.MustParse("110"),
	}
	now := metav1.Now()
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: k.cfg.NodeName,
			Labels: map[string]string{
				"kubernetes.io/hostname": k.cfg.NodeName,
				"kubernetes.io/os":       "linux",
				"kubernetes.io/arch":     "amd64",
			},
		},
	}
	if _, err := k.cfg.Client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("register node: %w", err)
	}
	status := corev1.NodeStatus{
		Capacity:    res,
		Allocatable: res,
		Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: gw},
			{Type: corev1.NodeHostName, Address: k.cfg.NodeName},
		},
		Conditions: []corev1.NodeCondition{
			{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", LastHeartbeatTime: now, LastTransitionTime: now},
			{Type: corev1.NodeMemoryPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasSufficientMemory", LastHeartbeatTime: now, LastTransitionTime: now},
			{Type: corev1.NodeDiskPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasNoDiskPressure", LastHeartbeatTime: now, LastTransitionTime: now},
			{Type: corev1.NodePIDPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasSufficientPID", LastHeartbeatTime: now, LastTransitionTime: now},
		},
		NodeInfo: corev1.NodeSystemInfo{
			KubeletVersion:  "v1.34.4",
			OperatingSystem: "linux",
			Architecture:    "amd64",
		},
	}
	// A merge patch: the controllers may have changed the node since.
	b, err := json.Marshal(map[string]any{"status": status})
	if err != nil {
		return err
	}
	if _, err := k.cfg.Client.CoreV1().Nodes().Patch(ctx, k.cfg.NodeName, types.MergePatchType, b, metav1.PatchOptions{}, "status"); err != nil {
		return fmt.Errorf("node status: %w", err)
	}
	return nil
}

// renewLease keeps the node's Lease fresh, every 10 s as the kubelet does
// with its default 40 s lease: the node lifecycle controller counts a
// renewed lease as the node's heartbeat.
func (k *Kubelet) renewLease(ctx context.Context) {
	leases := k.cfg.Client.CoordinationV1().Leases(corev1.NamespaceNodeLease)
	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
	for {
		now := metav1.NewMicroTime(time.Now())
		l, err := leases.Get(ctx, k.cfg.NodeName, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			_, err = leases.Create(ctx, &coordinationv1.Lease{
				ObjectMeta: metav1.ObjectMeta{Name: k.cfg.NodeName},
				Spec: coordinationv1.LeaseSpec{
					HolderIdentity:       ptr.To(k.cfg.NodeName),
					LeaseDurationSeconds: ptr.To[int32](40),
					RenewTime:            &now,
				},
			}, metav1.CreateOptions{})
		case err == nil:
			l.Spec.RenewTime = &now
			_, err = leases.Update(ctx, l, metav1.UpdateOptions{})
		}
		if err != nil && ctx.Err() == nil {
			k.cfg.Logf("kubelet: renew lease: %v", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// imageOf finds the image a container names, without tag or digest.
func (k *Kubelet) imageOf(ref string) (Image, error) {
	name := ref
	if i := strings.Index(name, "@"); i >= 0 {
		name = name[:i]
	}
	if i := strings.LastIndex(name, ":"); i > strings.LastIndex(name, "/") {
		name = name[:i]
	}
	img, ok := k.cfg.Images[name]
	if !ok {
		return Image{}, fmt.Errorf("image %s: not one the test kubelet knows", ref)
	}
	return img, nil
}

// podDir is a pod's directory on the host.
func (k *Kubelet) podDir(uid types.UID) string {
	return filepath.Join(k.cfg.Dir, string(uid))
}

func removeAll(dir string) error {
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	return nil
}
