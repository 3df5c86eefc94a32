package kubelet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// podWorker runs one pod from its sandbox to its removal.
type podWorker struct {
	k               *Kubelet
	namespace, name string
	uid             types.UID

	mu         sync.Mutex
	pod        *corev1.Pod // the latest seen
	deleting   chan struct{}
	deleteOnce sync.Once
	sandbox    *Sandbox
	started    metav1.Time
	containers []*container
	setupErr   string // why the containers could not be made, if so
	hosts      string // the pod's /etc/hosts

	dirty chan struct{} // the status changed; capacity 1
}

func newPodWorker(k *Kubelet, pod *corev1.Pod) *podWorker {
	return &podWorker{
		k:         k,
		namespace: pod.Namespace,
		name:      pod.Name,
		uid:       pod.UID,
		pod:       pod,
		deleting:  make(chan struct{}),
		dirty:     make(chan struct{}, 1),
	}
}

func (w *podWorker) update(pod *corev1.Pod) {
	w.mu.Lock()
	w.pod = pod
	w.mu.Unlock()
	if pod.DeletionTimestamp != nil {
		w.deleteOnce.Do(func() { close(w.deleting) })
	}
}

func (w *podWorker) latest() *corev1.Pod {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.pod
}

func (w *podWorker) pid(container string) int {
	w.mu.Lock()
	cs := w.containers
	w.mu.Unlock()
	for _, c := range cs {
		if c.spec.Name == container {
			return c.pid()
		}
	}
	return 0
}

// changed asks the status writer for an update.
func (w *podWorker) changed() {
	select {
	case w.dirty <- struct{}{}:
	default:
	}
}

func (w *podWorker) logf(format string, args ...any) {
	w.k.cfg.Logf("kubelet: pod %s/%s: "+format, append([]any{w.namespace, w.name}, args...)...)
}

// run sets the pod up, runs its containers until the pod is deleted (or
// the kubelet stops), then tears it down and removes it from the API.
func (w *podWorker) run(ctx context.Context) {
	var wg sync.WaitGroup
	statusCtx, stopStatus := context.WithCancel(context.Background())
	wg.Add(1)
	go func() {
		defer wg.Done()
		w.writeStatus(statusCtx)
	}()
	defer func() {
		stopStatus()
		wg.Wait()
	}()

	dir := w.k.podDir(w.uid)
	defer func() {
		if err := removeAll(dir); err != nil {
			w.logf("%v", err)
		}
	}()
	if err := w.setup(ctx, dir); err != nil {
		w.logf("setup: %v", err)
		w.mu.Lock()
		w.setupErr = err.Error()
		w.mu.Unlock()
		w.changed()
	}
	w.mu.Lock()
	sb := w.sandbox
	w.mu.Unlock()
	if sb != nil {
		defer func() {
			if err := sb.Remove(); err != nil {
				w.logf("remove sandbox: %v", err)
			}
		}()
	}

	stops := make([]chan time.Duration, len(w.containers))
	var cwg sync.WaitGroup
	for i, c := range w.containers {
		stops[i] = make(chan time.Duration, 1)
		cwg.Add(1)
		go func() {
			defer cwg.Done()
			c.run(ctx, stops[i])
		}()
	}

	select {
	case <-ctx.Done():
		// The test is over: the containers see ctx and are killed.
		cwg.Wait()
		return
	case <-w.deleting:
	}
	pod := w.latest()
	grace := time.Duration(ptrValue(pod.DeletionGracePeriodSeconds, 30)) * time.Second
	w.logf("deleted: SIGTERM, grace %v", grace)
	for _, s := range stops {
		s <- grace
	}
	cwg.Wait()
	w.final(ctx)
}

// final reports the pod's end, then deletes it for good: the API keeps a
// gracefully deleted pod until its kubelet says it has stopped.
func (w *podWorker) final(ctx context.Context) {
	if err := w.patchStatus(ctx, w.status(true)); err != nil {
		w.logf("final status: %v", err)
	}
	err := w.k.cfg.Client.CoreV1().Pods(w.namespace).Delete(ctx, w.name, metav1.DeleteOptions{
		GracePeriodSeconds: ptrTo[int64](0),
		Preconditions:      &metav1.Preconditions{UID: &w.uid},
	})
	if err != nil && !apierrors.IsNotFound(err) {
		w.logf("delete: %v", err)
	}
}

// setup makes the sandbox, the volumes and the containers' specs.
func (w *podWorker) setup(ctx context.Context, dir string) error {
	pod := w.latest()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if len(pod.Spec.InitContainers) > 0 {
		return errors.New("init containers are not supported")
	}
	sb, err := w.k.cfg.Network.Add(ctx)
	if err != nil {
		return err
	}
	// The kubelet's managed /etc/hosts: localhost, and the pod's name at
	// its address. Without it, "localhost" would go to DNS.
	hosts := filepath.Join(dir, "hosts")
	content := fmt.Sprintf("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n%s\t%s\n", sb.IP, pod.Name)
	if err := os.WriteFile(hosts, []byte(content), 0o644); err != nil {
		return err
	}
	w.mu.Lock()
	w.sandbox = sb
	w.hosts = hosts
	w.started = metav1.Now()
	w.mu.Unlock()
	w.changed()

	vols, err := w.volumes(ctx, pod, dir)
	if err != nil {
		return err
	}
	var cs []*container
	for _, c := range pod.Spec.Containers {
		ctr, err := newContainer(ctx, w, pod, c, vols)
		if err != nil {
			return fmt.Errorf("container %s: %w", c.Name, err)
		}
		cs = append(cs, ctr)
	}
	w.mu.Lock()
	w.containers = cs
	w.mu.Unlock()
	return nil
}

// volumes writes the pod's Secret and ConfigMap volumes and makes its
// emptyDirs, under dir; it returns each volume's host directory.
func (w *podWorker) volumes(ctx context.Context, pod *corev1.Pod, dir string) (map[string]string, error) {
	out := map[string]string{}
	var fsGroup *int64
	if sc := pod.Spec.SecurityContext; sc != nil {
		fsGroup = sc.FSGroup
	}
	for _, v := range pod.Spec.Volumes {
		host := filepath.Join(dir, "volumes", v.Name)
		switch {
		case v.EmptyDir != nil:
			if err := os.MkdirAll(host, 0o777); err != nil {
				return nil, err
			}
			if err := os.Chmod(host, 0o777); err != nil {
				return nil, err
			}
		case v.Secret != nil:
			sec, err := w.k.cfg.Client.CoreV1().Secrets(pod.Namespace).Get(ctx, v.Secret.SecretName, metav1.GetOptions{})
			if err != nil {
				return nil, fmt.Errorf("volume %s: %w", v.Name, err)
			}
			if err := writeFiles(host, sec.Data, v.Secret.Items, v.Secret.DefaultMode, fsGroup); err != nil {
				return nil, fmt.Errorf("volume %s: %w", v.Name, err)
			}
		case v.ConfigMap != nil:
			cm, err := w.k.cfg.Client.CoreV1().ConfigMaps(pod.Namespace).Get(ctx, v.ConfigMap.Name, metav1.GetOptions{})
			if err != nil {
				return nil, fmt.Errorf("volume %s: %w", v.Name, err)
			}
			data := map[string][]byte{}
			for k, s := range cm.Data {
				data[k] = []byte(s)
			}
			if err := writeFiles(host, data, v.ConfigMap.Items, v.ConfigMap.DefaultMode, fsGroup); err != nil {
				return nil, fmt.Errorf("volume %s: %w", v.Name, err)
			}
		default:
			return nil, fmt.Errorf("volume %s: only emptyDir, secret and configMap volumes are supported", v.Name)
		}
		out[v.Name] = host
	}
	return out, nil
}

// writeFiles writes a Secret's or ConfigMap's keys as files, as the kubelet
// does: the items (or every key), each with its mode or the default mode
// (0644), group-owned by fsGroup.
func writeFiles(dir string, data map[string][]byte, items []corev1.KeyToPath, defaultMode *int32, fsGroup *int64) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if len(items) == 0 {
		for k := range data {
			items = append(items, corev1.KeyToPath{Key: k, Path: k})
		}
	}
	for _, it := range items {
		b, ok := data[it.Key]
		if !ok {
			return fmt.Errorf("key %s missing", it.Key)
		}
		mode := ptrValue(defaultMode, 0o644)
		if it.Mode != nil {
			mode = *it.Mode
		}
		path := filepath.Join(dir, it.Path)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(path, b, os.FileMode(mode)); err != nil {
			return err
		}
		if err := os.Chmod(path, os.FileMode(mode)); err != nil {
			return err
		}
		if fsGroup != nil {
			if err := os.Chown(path, 0, int(*fsGroup)); err != nil {
				return err
			}
		}
	}
	return nil
}

// writeStatus patches the pod's status whenever it changes, until ctx ends.
func (w *podWorker) writeStatus(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.dirty:
		}
		if err := w.patchStatus(ctx, w.status(false)); err != nil && ctx.Err() == nil && !apierrors.IsNotFound(err) {
			w.logf("status: %v", err)
			// Tried again on the next change, or after a pause.
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
				w.changed()
			}
		}
	}
}

// patchStatus replaces the status's lists and fields with st: a JSON merge
// patch replaces lists whole, and needs no resourceVersion.
func (w *podWorker) patchStatus(ctx context.Context, st corev1.PodStatus) error {
	b, err := json.Marshal(map[string]any{"status": st})
	if err != nil {
		return err
	}
	_, err = w.k.cfg.Client.CoreV1().Pods(w.namespace).Patch(ctx, w.name, types.MergePatchType, b, metav1.PatchOptions{}, "status")
	return err
}

// status is the pod's status as the kubelet reports it; final once every
// container has ended for good.
func (w *podWorker) status(final bool) corev1.PodStatus {
	pod := w.latest()
	w.mu.Lock()
	sb, started, cs, setupErr := w.sandbox, w.started, w.containers, w.setupErr
	w.mu.Unlock()

	st := corev1.PodStatus{Phase: corev1.PodPending, QOSClass: pod.Status.QOSClass}
	gw := w.k.cfg.Network.Gateway().String()
	st.HostIP = gw
	st.HostIPs = []corev1.HostIP{{IP: gw}}
	if sb != nil {
		st.PodIP = sb.IP.String()
		st.PodIPs = []corev1.PodIP{{IP: st.PodIP}}
		st.StartTime = &started
	}
	allReady, allStarted, allZero := len(cs) > 0, len(cs) > 0, true
	for _, c := range cs {
		s := c.status()
		st.ContainerStatuses = append(st.ContainerStatuses, s)
		allReady = allReady && s.Ready
		allStarted = allStarted && (s.State.Running != nil || s.RestartCount > 0 || s.LastTerminationState.Terminated != nil)
		if t := s.State.Terminated; t != nil && t.ExitCode != 0 {
			allZero = false
		}
	}
	if len(cs) == 0 {
		for _, c := range pod.Spec.Containers {
			reason := "ContainerCreating"
			if setupErr != "" {
				reason = "CreateContainerConfigError"
			}
			st.ContainerStatuses = append(st.ContainerStatuses, corev1.ContainerStatus{
				Name:  c.Name,
				Image: c.Image,
				State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: setupErr}},
			})
		}
	}
	switch {
	case final && allZero:
		st.Phase = corev1.PodSucceeded
		allReady = false
	case final:
		st.Phase = corev1.PodFailed
		allReady = false
	case allStarted:
		st.Phase = corev1.PodRunning
	}

	now := metav1.Now()
	cond := func(t corev1.PodConditionType, ok bool, reason string) corev1.PodCondition {
		c := corev1.PodCondition{Type: t, Status: corev1.ConditionFalse, Reason: reason, LastTransitionTime: now}
		if ok {
			c.Status, c.Reason = corev1.ConditionTrue, ""
		}
		// Keep the transition time of an unchanged condition.
		for _, old := range pod.Status.Conditions {
			if old.Type == t && old.Status == c.Status {
				c.LastTransitionTime = old.LastTransitionTime
			}
		}
		return c
	}
	st.Conditions = []corev1.PodCondition{
		cond(corev1.PodReadyToStartContainers, sb != nil && !final, ""),
		cond(corev1.PodInitialized, true, ""),
		cond(corev1.ContainersReady, allReady, "ContainersNotReady"),
		cond(corev1.PodReady, allReady, "ContainersNotReady"),
	}
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodScheduled {
			st.Conditions = append(st.Conditions, c)
		}
	}
	return st
}

func ptrTo[T any](v T) *T { return &v }

func ptrValue[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

// expand replaces $(VAR) with the value of VAR among env (earlier entries
// first), as Kubernetes expands commands, args and env values; $$ is a
// literal $ and an unknown reference is left as it is.
func expand(s string, env map[string]string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 >= len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
			continue
		case '(':
			if end := strings.IndexByte(s[i:], ')'); end > 0 {
				name := s[i+2 : i+end]
				if v, ok := env[name]; ok {
					b.WriteString(v)
					i += end
					continue
				}
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
