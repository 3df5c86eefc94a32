package charttest

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// warrenContainer returns the container named warren.
func warrenContainer(t testing.TB, d *appsv1.Deployment) *corev1.Container {
	t.Helper()
	for i := range d.Spec.Template.Spec.Containers {
		if c := &d.Spec.Template.Spec.Containers[i]; c.Name == "warren" {
			return c
		}
	}
	t.Fatalf("Deployment %s has no container named warren", d.Name)
	return nil
}

func envMap(c *corev1.Container) map[string]corev1.EnvVar {
	m := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		m[e.Name] = e
	}
	return m
}

func volumeMount(c *corev1.Container, name string) *corev1.VolumeMount {
	for i := range c.VolumeMounts {
		if c.VolumeMounts[i].Name == name {
			return &c.VolumeMounts[i]
		}
	}
	return nil
}

func volume(d *appsv1.Deployment, name string) *corev1.Volume {
	for i := range d.Spec.Template.Spec.Volumes {
		if v := &d.Spec.Template.Spec.Volumes[i]; v.Name == name {
			return v
		}
	}
	return &corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{}}}
}

// healthPort is the container port named health.
func healthPort(t testing.TB, c *corev1.Container) int {
	t.Helper()
	for _, p := range c.Ports {
		if p.Name == "health" {
			return int(p.ContainerPort)
		}
	}
	t.Fatalf("container %s has no port named health", c.Name)
	return 0
}

// probePort resolves a probe's port, by number or by the container port's
// name, as the kubelet does.
func probePort(t testing.TB, c *corev1.Container, p *corev1.Probe) int {
	t.Helper()
	port := p.HTTPGet.Port
	if port.Type == intstr.Int {
		return port.IntValue()
	}
	for _, cp := range c.Ports {
		if cp.Name == port.StrVal {
			return int(cp.ContainerPort)
		}
	}
	t.Fatalf("probe port %q is no port of container %s", port.StrVal, c.Name)
	return 0
}

func checkSecurityContext(t testing.TB, pod corev1.PodSpec, c *corev1.Container) {
	t.Helper()
	psc, sc := pod.SecurityContext, c.SecurityContext
	if psc == nil || sc == nil {
		t.Fatalf("securityContext pod %v container %v, want both", psc, sc)
	}
	checks := []struct {
		name string
		ok   bool
	}{
		{"runAsNonRoot", sc.RunAsNonRoot != nil && *sc.RunAsNonRoot && psc.RunAsNonRoot != nil && *psc.RunAsNonRoot},
		{"runAsUser 65532", sc.RunAsUser != nil && *sc.RunAsUser == 65532},
		{"readOnlyRootFilesystem", sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem},
		{"allowPrivilegeEscalation false", sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation},
		{"capabilities drop ALL", sc.Capabilities != nil && len(sc.Capabilities.Drop) == 1 && sc.Capabilities.Drop[0] == "ALL" && len(sc.Capabilities.Add) == 0},
		{"seccomp RuntimeDefault", psc.SeccompProfile != nil && psc.SeccompProfile.Type == corev1.SeccompProfileTypeRuntimeDefault},
	}
	for _, c := range checks {
		if !c.ok {
			t.Errorf("securityContext: want %s; pod %+v, container %+v", c.name, psc, sc)
		}
	}
}

// parseHMS parses the chart's shutdownTimeout form (1h2m3s) into seconds.
func parseHMS(t testing.TB, s string) int64 {
	t.Helper()
	var total, n int64
	for _, r := range s {
		switch {
		case r >= '0' && r <= '9':
			n = n*10 + int64(r-'0')
		case r == 'h':
			total, n = total+n*3600, 0
		case r == 'm':
			total, n = total+n*60, 0
		case r == 's':
			total, n = total+n, 0
		default:
			t.Fatalf("parseHMS(%q): unexpected %q", s, r)
		}
	}
	return total
}

// matches reports whether a selector's labels are all in labels.
func matches(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// manifestContains reports whether s appears in an object other than skip.
func manifestContains(r *rendered, s string, skip runtime.Object) bool {
	for _, o := range r.objects {
		if o == skip {
			continue
		}
		b, _ := json.Marshal(o)
		if strings.Contains(string(b), s) || strings.Contains(string(b), strconv.Quote(s)) {
			return true
		}
	}
	return false
}
