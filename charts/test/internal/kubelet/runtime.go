package kubelet

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// container runs one of a pod's containers: a process, started again after
// it ends (restartPolicy Always) with the kubelet's back-off.
type container struct {
	w    *podWorker
	spec corev1.Container
	cs   containerSpec // the process, less the root (one per start)
	log  string        // stdout and stderr of every start, appended
	ip   string        // the pod's, for the probes

	mu       sync.Mutex
	proc     *process
	restarts int32
	started  bool // the startup probe passed (or there is none)
	ready    bool
	waiting  string // the reason while no process runs
	last     *corev1.ContainerStateTerminated
	failed   chan string // a probe asks for a restart; capacity 1
}

// process is one start of a container.
type process struct {
	cmd     *exec.Cmd
	started time.Time
	done    chan struct{}
	exit    int
	ended   time.Time
}

func newContainer(ctx context.Context, w *podWorker, pod *corev1.Pod, c corev1.Container, vols map[string]string) (*container, error) {
	img, err := w.k.imageOf(c.Image)
	if err != nil {
		return nil, err
	}
	env, err := w.env(ctx, pod, c, img)
	if err != nil {
		return nil, err
	}
	vars := map[string]string{}
	for _, e := range c.Env {
		vars[e.Name] = ""
	}
	for _, kv := range env {
		for i := 0; i < len(kv); i++ {
			if kv[i] == '=' {
				vars[kv[:i]] = kv[i+1:]
				break
			}
		}
	}
	argv := c.Command
	args := c.Args
	if len(argv) == 0 {
		argv = img.Entrypoint
		if len(args) == 0 {
			args = img.Cmd
		}
	}
	argv = append(append([]string(nil), argv...), args...)
	for i := range argv {
		argv[i] = expand(argv[i], vars)
	}

	uid, gid, groups, err := identity(pod.Spec.SecurityContext, c.SecurityContext)
	if err != nil {
		return nil, err
	}
	w.mu.Lock()
	hosts := w.hosts
	w.mu.Unlock()
	mounts := []mount{
		{Source: img.Binary, Target: img.Entrypoint[0], ReadOnly: true},
		{Source: hosts, Target: "/etc/hosts", ReadOnly: true},
	}
	if _, err := os.Stat("/etc/resolv.conf"); err == nil {
		mounts = append(mounts, mount{Source: "/etc/resolv.conf", Target: "/etc/resolv.conf", ReadOnly: true})
	}
	for _, m := range c.VolumeMounts {
		host, ok := vols[m.Name]
		if !ok {
			return nil, fmt.Errorf("volume mount %s: no volume", m.Name)
		}
		if m.SubPath != "" {
			host = filepath.Join(host, m.SubPath)
		}
		mounts = append(mounts, mount{Source: host, Target: m.MountPath, ReadOnly: m.ReadOnly})
	}
	ro := c.SecurityContext != nil && c.SecurityContext.ReadOnlyRootFilesystem != nil && *c.SecurityContext.ReadOnlyRootFilesystem

	logDir := filepath.Join(w.k.cfg.Dir, "logs")
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return nil, err
	}
	w.mu.Lock()
	sb := w.sandbox
	w.mu.Unlock()
	return &container{
		w:    w,
		spec: c,
		ip:   sb.IP.String(),
		log:  filepath.Join(logDir, fmt.Sprintf("%s_%s_%s.log", pod.Namespace, pod.Name, c.Name)),
		cs: containerSpec{
			NetNS:      sb.Path(),
			Hostname:   pod.Name,
			ReadOnly:   ro,
			Mounts:     mounts,
			UID:        uid,
			GID:        gid,
			Groups:     groups,
			Argv:       argv,
			Env:        env,
			WorkingDir: c.WorkingDir,
		},
		waiting: "ContainerCreating",
		failed:  make(chan string, 1),
	}, nil
}

// identity is the user, group and supplementary groups a container runs
// as: the container's securityContext over the pod's. runAsNonRoot with no
// user, or user 0, is refused as the kubelet refuses it.
func identity(psc *corev1.PodSecurityContext, sc *corev1.SecurityContext) (uid, gid int, groups []int, err error) {
	var u, g *int64
	nonRoot := false
	if psc != nil {
		u, g = psc.RunAsUser, psc.RunAsGroup
		nonRoot = ptrValue(psc.RunAsNonRoot, false)
		if psc.FSGroup != nil {
			groups = append(groups, int(*psc.FSGroup))
		}
		for _, s := range psc.SupplementalGroups {
			groups = append(groups, int(s))
		}
	}
	if sc != nil {
		if sc.RunAsUser != nil {
			u = sc.RunAsUser
		}
		if sc.RunAsGroup != nil {
			g = sc.RunAsGroup
		}
		if sc.RunAsNonRoot != nil {
			nonRoot = *sc.RunAsNonRoot
		}
	}
	uid, gid = int(ptrValue(u, 0)), int(ptrValue(g, 0))
	if nonRoot && uid == 0 {
		return 0, 0, nil, errors.New("container has runAsNonRoot and would run as root")
	}
	if groups == nil {
		groups = []int{}
	}
	return uid, gid, groups, nil
}

// env is the container's environment: the image's ENV, HOSTNAME, then the
// container's envFrom and env, each $(VAR) expanded.
func (w *podWorker) env(ctx context.Context, pod *corev1.Pod, c corev1.Container, img Image) ([]string, error) {
	vars := map[string]string{}
	var order []string
	set := func(k, v string) {
		if _, ok := vars[k]; !ok {
			order = append(order, k)
		}
		vars[k] = v
	}
	set("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	for _, kv := range img.Env {
		for i := 0; i < len(kv); i++ {
			if kv[i] == '=' {
				set(kv[:i], kv[i+1:])
				break
			}
		}
	}
	set("HOSTNAME", pod.Name)
	client := w.k.cfg.Client.CoreV1()
	for _, from := range c.EnvFrom {
		switch {
		case from.SecretRef != nil:
			s, err := client.Secrets(pod.Namespace).Get(ctx, from.SecretRef.Name, metav1.GetOptions{})
			if err != nil {
				return nil, fmt.Errorf("envFrom: %w", err)
			}
			for k, v := range s.Data {
				set(from.Prefix+k, string(v))
			}
		case from.ConfigMapRef != nil:
			m, err := client.ConfigMaps(pod.Namespace).Get(ctx, from.ConfigMapRef.Name, metav1.GetOptions{})
			if err != nil {
				return nil, fmt.Errorf("envFrom: %w", err)
			}
			for k, v := range m.Data {
				set(from.Prefix+k, v)
			}
		}
	}
	for _, e := range c.Env {
		v := expand(e.Value, vars)
		if f := e.ValueFrom; f != nil {
			var err error
			if v, err = w.valueFrom(ctx, pod, f); err != nil {
				return nil, fmt.Errorf("env %s: %w", e.Name, err)
			}
		}
		set(e.Name, v)
	}
	out := make([]string, 0, len(order))
	for _, k := range order {
		out = append(out, k+"="+vars[k])
	}
	return out, nil
}

func (w *podWorker) valueFrom(ctx context.Context, pod *corev1.Pod, f *corev1.EnvVarSource) (string, error) {
	client := w.k.cfg.Client.CoreV1()
	switch {
	case f.FieldRef != nil:
		switch f.FieldRef.FieldPath {
		case "metadata.name":
			return pod.Name, nil
		case "metadata.namespace":
			return pod.Namespace, nil
		case "metadata.uid":
			return string(pod.UID), nil
		case "spec.nodeName":
			return pod.Spec.NodeName, nil
		case "spec.serviceAccountName":
			return pod.Spec.ServiceAccountName, nil
		case "status.podIP":
			w.mu.Lock()
			defer w.mu.Unlock()
			return w.sandbox.IP.String(), nil
		case "status.hostIP":
			return w.k.cfg.Network.Gateway().String(), nil
		}
		return "", fmt.Errorf("fieldRef %s is not supported", f.FieldRef.FieldPath)
	case f.SecretKeyRef != nil:
		s, err := client.Secrets(pod.Namespace).Get(ctx, f.SecretKeyRef.Name, metav1.GetOptions{})
		if err != nil {
			return "", err
		}
		return string(s.Data[f.SecretKeyRef.Key]), nil
	case f.ConfigMapKeyRef != nil:
		m, err := client.ConfigMaps(pod.Namespace).Get(ctx, f.ConfigMapKeyRef.Name, metav1.GetOptions{})
		if err != nil {
			return "", err
		}
		return m.Data[f.ConfigMapKeyRef.Key], nil
	}
	return "", errors.New("resourceFieldRef is not supported")
}

func (c *container) pid() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.proc == nil || c.proc.cmd.Process == nil {
		return 0
	}
	select {
	case <-c.proc.done:
		return 0
	default:
		return c.proc.cmd.Process.Pid
	}
}

// Back-off between restarts, as the kubelet's: the first restart at once,
// then 10 s doubling up to 5 min; reset once a start has run 10 min.
const (
	backoffFirst = 10 * time.Second
	backoffMax   = 5 * time.Minute
	backoffReset = 10 * time.Minute
)

// run starts the container and starts it again whenever it ends, until a
// grace period arrives on stop (the pod is deleted: SIGTERM, the grace,
// SIGKILL) or ctx ends (SIGKILL at once).
func (c *container) run(ctx context.Context, stop <-chan time.Duration) {
	var delay time.Duration
	for n := 0; ; n++ {
		if n > 0 {
			c.setWaiting("CrashLoopBackOff")
			select {
			case <-ctx.Done():
				return
			case <-stop: // nothing runs: nothing to stop
				return
			case <-time.After(delay):
			}
		}
		p, err := c.start(n)
		if err != nil {
			c.w.logf("start %s: %v", c.spec.Name, err)
			c.setWaiting("RunContainerError")
			delay = nextDelay(delay, 0)
			continue
		}
		probeCtx, stopProbes := context.WithCancel(ctx)
		var pwg sync.WaitGroup
		pwg.Add(1)
		go func() {
			defer pwg.Done()
			c.probe(probeCtx, p)
		}()

		end := Termination{Pod: c.w.namespace + "/" + c.w.name, Container: c.spec.Name}
		stopped := false
		select {
		case <-p.done:
		case <-ctx.Done():
			c.kill(p, 0, &end)
			stopProbes()
			pwg.Wait()
			return
		case grace := <-stop:
			stopProbes()
			// Not ready from the moment it is told to stop, as the
			// kubelet reports a terminating container.
			c.setReady(false)
			end.Cause = "deleted"
			c.kill(p, grace, &end)
			stopped = true
		case why := <-c.failed:
			stopProbes()
			c.setReady(false)
			end.Cause = "liveness"
			grace := c.probeGrace()
			c.w.logf("%s: %s; SIGTERM, grace %v", c.spec.Name, why, grace)
			c.kill(p, grace, &end)
		}
		stopProbes()
		pwg.Wait()
		end.ExitCode, end.Exited = p.exit, p.ended
		c.w.k.recordEnd(end)
		c.ended(p, !stopped)
		if stopped {
			return
		}
		delay = nextDelay(delay, p.ended.Sub(p.started))
	}
}

// nextDelay is the wait before the next start after one that ran for ran.
func nextDelay(prev, ran time.Duration) time.Duration {
	switch {
	case ran >= backoffReset:
		return 0
	case prev == 0:
		return backoffFirst
	case prev*2 > backoffMax:
		return backoffMax
	}
	return prev * 2
}

// start runs the process: the init step that becomes it.
func (c *container) start(n int) (*process, error) {
	spec := c.cs
	spec.Root = filepath.Join(c.w.k.podDir(c.w.uid), "roots", fmt.Sprintf("%s-%d", c.spec.Name, n))
	if err := os.MkdirAll(spec.Root, 0o755); err != nil {
		return nil, err
	}
	cmd, err := spec.command()
	if err != nil {
		return nil, err
	}
	logFile, err := os.OpenFile(c.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, err
	}
	p := &process{cmd: cmd, started: time.Now(), done: make(chan struct{})}
	c.w.k.wg.Add(1)
	go func() {
		defer c.w.k.wg.Done()
		err := cmd.Wait()
		logFile.Close()
		p.ended = time.Now()
		p.exit = exitCode(cmd, err)
		close(p.done)
		c.w.changed()
	}()
	select {
	case <-c.failed: // a probe's verdict on the start before
	default:
	}
	c.mu.Lock()
	c.proc = p
	c.waiting = ""
	c.started = c.spec.StartupProbe == nil
	c.ready = false
	c.mu.Unlock()
	c.w.changed()
	return p, nil
}

func exitCode(cmd *exec.Cmd, err error) int {
	if cmd.ProcessState == nil {
		return -1
	}
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return cmd.ProcessState.ExitCode()
}

// kill stops p: SIGTERM to the process, then after grace SIGKILL to its
// process group (a container's processes all die with it).
func (c *container) kill(p *process, grace time.Duration, end *Termination) {
	end.Signalled, end.Grace = time.Now(), grace
	pid := p.cmd.Process.Pid
	if grace > 0 {
		_ = syscall.Kill(pid, syscall.SIGTERM)
		select {
		case <-p.done:
			return
		case <-time.After(grace):
		}
	}
	end.Killed = true
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	<-p.done
}

// probeGrace is the grace of a kill after a failed probe: the liveness
// probe's terminationGracePeriodSeconds, else the pod's.
func (c *container) probeGrace() time.Duration {
	if pr := c.spec.LivenessProbe; pr != nil && pr.TerminationGracePeriodSeconds != nil {
		return time.Duration(*pr.TerminationGracePeriodSeconds) * time.Second
	}
	return time.Duration(ptrValue(c.w.latest().Spec.TerminationGracePeriodSeconds, 30)) * time.Second
}

// ended records p's end as the last termination; restart counts it.
func (c *container) ended(p *process, restart bool) {
	reason := "Completed"
	if p.exit != 0 {
		reason = "Error"
	}
	c.mu.Lock()
	c.last = &corev1.ContainerStateTerminated{
		ExitCode:    int32(p.exit),
		Reason:      reason,
		StartedAt:   metav1.NewTime(p.started),
		FinishedAt:  metav1.NewTime(p.ended),
		ContainerID: containerID(p),
	}
	if restart {
		c.restarts++
	}
	c.ready = false
	c.mu.Unlock()
	c.w.changed()
}

func (c *container) setWaiting(reason string) {
	c.mu.Lock()
	c.waiting = reason
	c.mu.Unlock()
	c.w.changed()
}

func containerID(p *process) string {
	return fmt.Sprintf("warren-test://%d", p.cmd.Process.Pid)
}

// status is the container's status as the kubelet reports it.
func (c *container) status() corev1.ContainerStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := corev1.ContainerStatus{
		Name:         c.spec.Name,
		Image:        c.spec.Image,
		ImageID:      c.spec.Image,
		RestartCount: c.restarts,
		Ready:        c.ready,
		Started:      ptrTo(c.started),
	}
	running := false
	if p := c.proc; p != nil {
		s.ContainerID = containerID(p)
		select {
		case <-p.done:
			s.State.Terminated = &corev1.ContainerStateTerminated{
				ExitCode: int32(p.exit), StartedAt: metav1.NewTime(p.started), FinishedAt: metav1.NewTime(p.ended),
				Reason: "Completed", ContainerID: s.ContainerID,
			}
			if p.exit != 0 {
				s.State.Terminated.Reason = "Error"
			}
		default:
			running = true
			s.State.Running = &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(p.started)}
		}
	}
	if c.waiting != "" && !running {
		s.State = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: c.waiting}}
	}
	if !running {
		s.Ready = false
		s.Started = ptrTo(false)
	}
	if c.last != nil {
		last := *c.last
		// The last termination is the one before the current state.
		if s.State.Terminated == nil || s.State.Terminated.FinishedAt != last.FinishedAt {
			s.LastTerminationState.Terminated = &last
		}
	}
	return s
}
