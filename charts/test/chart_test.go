package charttest

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	kedav1alpha1 "github.com/kedacore/keda/v2/apis/keda/v1alpha1"
	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"helm.sh/helm/v3/pkg/action"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
)

// TestLint is `helm lint --strict` over every scenario: a warning fails.
func TestLint(t *testing.T) {
	for _, s := range scenarios(t) {
		t.Run(s.name, func(t *testing.T) {
			lint := action.NewLint()
			lint.Strict = true
			lint.Namespace = "default"
			res := lint.Run([]string{chartDir}, s.values(t))
			for _, m := range res.Messages {
				t.Logf("lint: %s", m)
			}
			if len(res.Errors) > 0 {
				t.Errorf("helm lint --strict (%s): %v", s.name, res.Errors)
			}
		})
	}
}

// TestRender renders every scenario (decoding each object strictly is part
// of render) and checks what holds for all of them.
func TestRender(t *testing.T) {
	for _, s := range scenarios(t) {
		t.Run(s.name, func(t *testing.T) {
			r := mustRender(t, s)
			deps := all[*appsv1.Deployment](r)
			if len(deps) != 1 {
				t.Fatalf("%d Deployments rendered, want 1: %s", len(deps), r.names())
			}
			d := deps[0]
			pod := d.Spec.Template.Spec
			c := warrenContainer(t, d)

			// The URL never appears in plain text: only the file variable.
			env := envMap(c)
			if _, ok := env["WARREN_AMQP_URL"]; ok {
				t.Errorf("WARREN_AMQP_URL set in the Deployment; want only WARREN_AMQP_URL_FILE")
			}
			if got := env["WARREN_AMQP_URL_FILE"].Value; got != "/etc/warren/broker/url" {
				t.Errorf("WARREN_AMQP_URL_FILE = %q, want /etc/warren/broker/url", got)
			}
			for _, sec := range all[*corev1.Secret](r) {
				for _, v := range sec.Data {
					if manifestContains(r, string(v), sec) {
						t.Errorf("a value of Secret %s appears in another object", sec.Name)
					}
				}
			}
			// Each replica's connection carries its pod's name, or the
			// name the values give.
			name := env["WARREN_CONNECTION_NAME"]
			fromPod := name.ValueFrom != nil && name.ValueFrom.FieldRef != nil && name.ValueFrom.FieldRef.FieldPath == "metadata.name"
			if !fromPod && name.Value == "" {
				t.Errorf("WARREN_CONNECTION_NAME = %+v, want the pod name (fieldRef metadata.name) or a value", name)
			}

			mount := volumeMount(c, "broker")
			if mount == nil || !mount.ReadOnly || mount.MountPath != "/etc/warren/broker" {
				t.Errorf("broker volume mount = %+v, want read-only at /etc/warren/broker", mount)
			}

			// Secure defaults hold in every scenario.
			if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
				t.Errorf("automountServiceAccountToken = %v, want false", pod.AutomountServiceAccountToken)
			}
			if pod.EnableServiceLinks == nil || *pod.EnableServiceLinks {
				t.Errorf("enableServiceLinks = %v, want false", pod.EnableServiceLinks)
			}
			checkSecurityContext(t, pod, c)
			if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
				t.Errorf("resources = %+v, want cpu and memory requests and a memory limit", c.Resources)
			}

			// Probes on the health port, at the contract's paths.
			port := healthPort(t, c)
			if got, want := env["WARREN_HEALTH_ADDR"].Value, fmt.Sprintf(":%d", port); got != want {
				t.Errorf("WARREN_HEALTH_ADDR = %q, want %q (the container port)", got, want)
			}
			for _, p := range []struct {
				name  string
				probe *corev1.Probe
				path  string
			}{
				{"startupProbe", c.StartupProbe, "/livez"},
				{"livenessProbe", c.LivenessProbe, "/livez"},
				{"readinessProbe", c.ReadinessProbe, "/readyz"},
			} {
				if p.probe == nil || p.probe.HTTPGet == nil {
					t.Errorf("%s = %+v, want an httpGet probe", p.name, p.probe)
					continue
				}
				if p.probe.HTTPGet.Path != p.path || probePort(t, c, p.probe) != port {
					t.Errorf("%s = %s:%s, want %s on port %d", p.name, p.probe.HTTPGet.Path, p.probe.HTTPGet.Port.String(), p.path, port)
				}
			}

			// The grace period exceeds the longest warren takes to exit.
			shutdown := parseHMS(t, env["WARREN_SHUTDOWN_TIMEOUT"].Value)
			if g := pod.TerminationGracePeriodSeconds; g == nil {
				t.Errorf("terminationGracePeriodSeconds unset, want more than %d", shutdown+drainBoundSeconds)
			} else if *g <= shutdown+drainBoundSeconds {
				t.Errorf("terminationGracePeriodSeconds = %d, want more than %d (WARREN_SHUTDOWN_TIMEOUT %s + %d)", *g, shutdown+drainBoundSeconds, env["WARREN_SHUTDOWN_TIMEOUT"].Value, drainBoundSeconds)
			}

			// The helm test hook is rendered and never selected as a worker.
			for _, p := range all[*corev1.Pod](r) {
				if p.Annotations["helm.sh/hook"] != "test" {
					t.Errorf("Pod %s rendered without the helm test hook annotation", p.Name)
				}
				if matches(d.Spec.Selector.MatchLabels, p.Labels) {
					t.Errorf("test Pod %s matches the Deployment's selector", p.Name)
				}
			}
			if !strings.Contains(r.notes, "warren publish") {
				t.Errorf("NOTES.txt does not say how to publish a message:\n%s", r.notes)
			}
		})
	}
}

// TestContractVariables checks that the chart can set every variable that
// `warren help` lists (the daemon's contract), across the scenarios, and sets
// no WARREN_ variable warren does not know.
func TestContractVariables(t *testing.T) {
	known := contractVariables(t)
	set := map[string]bool{}
	for _, s := range scenarios(t) {
		r := mustRender(t, s)
		for _, d := range all[*appsv1.Deployment](r) {
			for _, e := range warrenContainer(t, d).Env {
				if strings.HasPrefix(e.Name, "WARREN_") || strings.HasPrefix(e.Name, "OTEL_") {
					set[e.Name] = true
					if !known[e.Name] {
						t.Errorf("scenario %s sets %s, which warren does not know", s.name, e.Name)
					}
				}
			}
		}
	}
	for name := range known {
		// The URL only ever goes through the file; the OpenTelemetry
		// variables that no tracing.* value renders go through extraEnv.
		if name != "WARREN_AMQP_URL" && !byExtraEnv[name] && !set[name] {
			t.Errorf("%s (from warren help) is set by no scenario: the chart cannot set it, or ci/ lacks a scenario", name)
		}
	}
}

// byExtraEnv are the variables of warren help that the chart leaves to
// extraEnv: rarely set, and standard to every OpenTelemetry SDK.
var byExtraEnv = map[string]bool{
	"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": true,
	"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": true,
	"OTEL_RESOURCE_ATTRIBUTES":           true,
	"OTEL_SDK_DISABLED":                  true,
}

// otelEnv returns the OTEL_* variables of env and their values.
func otelEnv(env map[string]corev1.EnvVar) map[string]string {
	m := map[string]string{}
	for name, e := range env {
		if strings.HasPrefix(name, "OTEL_") {
			m[name] = e.Value
		}
	}
	return m
}

// contractVariables runs `warren help` and returns the variables it lists.
func contractVariables(t *testing.T) map[string]bool {
	t.Helper()
	out, err := exec.Command(warrenBinary(t), "help").Output()
	if err != nil {
		t.Fatalf("warren help: %v", err)
	}
	vars := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^((?:WARREN|OTEL)_[A-Z_]+)\s`).FindAllStringSubmatch(string(out), -1) {
		vars[m[1]] = true
	}
	if len(vars) < 20 {
		t.Fatalf("warren help lists %d variables, want 20 or more:\n%s", len(vars), out)
	}
	return vars
}

// TestTwoValues is the install the README leads with: queue name and
// broker URL, and nothing optional rendered.
func TestTwoValues(t *testing.T) {
	r := mustRender(t, scenario{name: "two-values"})
	var kinds []string
	for _, o := range r.objects {
		kinds = append(kinds, gvkOf(o).Kind)
	}
	slices.Sort(kinds)
	want := []string{"Deployment", "Pod", "Role", "RoleBinding", "Secret", "ServiceAccount", "ServiceAccount"}
	if !slices.Equal(kinds, want) {
		t.Errorf("two values render %v, want %v", kinds, want)
	}
	d := find[*appsv1.Deployment](t, r, "warren")
	if d.Spec.Replicas == nil || *d.Spec.Replicas != 1 {
		t.Errorf("replicas = %v, want 1", d.Spec.Replicas)
	}
	sec := find[*corev1.Secret](t, r, "warren-broker")
	if got := string(sec.Data["url"]); got != "amqp://warren:secret@rabbitmq.messaging.svc:5672/" {
		t.Errorf("Secret url = %q, want the broker.url given", got)
	}
	env := envMap(warrenContainer(t, d))
	wantEnv(t, env, map[string]string{
		"WARREN_QUEUE":              "orders",
		"WARREN_QUEUE_TYPE":         "classic",
		"WARREN_DECLARE":            "true",
		"WARREN_PREFETCH":           "", // unset: adaptive
		"WARREN_MAX_PREFETCH":       "1000",
		"WARREN_MAX_INFLIGHT_BYTES": "", // unset: from the container's memory limit
		"WARREN_CONCURRENCY":        "4",
		"WARREN_HANDLER":            "log",
		"WARREN_RETRY_DELAYS":       "1s,10s,1m",
		"WARREN_MAX_ATTEMPTS":       "5",
		"WARREN_CIRCUIT":            "on",
		"WARREN_CIRCUIT_FAILURES":   "5",
		"WARREN_CIRCUIT_WINDOW":     "30s",
		"WARREN_HEALTH_ADDR":        ":8080",
		"WARREN_LOG_FORMAT":         "json",
	})
	// Tracing is off: not one of its variables is rendered.
	for name := range env {
		if strings.HasPrefix(name, "OTEL_") {
			t.Errorf("%s rendered with tracing off", name)
		}
	}
	if g := *d.Spec.Template.Spec.TerminationGracePeriodSeconds; g != 45 {
		t.Errorf("terminationGracePeriodSeconds = %d, want 45 (25s + 15 + 5)", g)
	}
}

// wantEnv checks that env holds each variable of want with its value; ""
// for one that is not set.
func wantEnv(t *testing.T, env map[string]corev1.EnvVar, want map[string]string) {
	t.Helper()
	for name, v := range want {
		if got := env[name].Value; got != v {
			t.Errorf("%s = %q, want %q", name, got, v)
		}
	}
}

// TestScenarios checks what each ci/ scenario is for.
func TestScenarios(t *testing.T) {
	tests := []struct {
		give  string // ci/<give>-values.yaml
		check func(t *testing.T, r *rendered)
	}{
		{give: "http-sidecar", check: func(t *testing.T, r *rendered) {
			d := find[*appsv1.Deployment](t, r, "warren")
			if n := len(d.Spec.Template.Spec.Containers); n != 2 {
				t.Errorf("%d containers, want warren and the app", n)
			}
			env := envMap(warrenContainer(t, d))
			if env["WARREN_HANDLER"].Value != "http" || env["WARREN_HTTP_URL"].Value != "http://localhost:8000/messages" {
				t.Errorf("handler env = %v %v, want http to the sidecar", env["WARREN_HANDLER"], env["WARREN_HTTP_URL"])
			}
			wantEnv(t, env, map[string]string{
				"WARREN_CIRCUIT":                    "on",
				"WARREN_CIRCUIT_FAILURES":           "10",
				"WARREN_CIRCUIT_WINDOW":             "20s",
				"WARREN_CIRCUIT_MAX_PROBE_INTERVAL": "15s",
				"WARREN_RATE_LIMIT":                 "12.5",
			})
			// tracing.endpoint alone: the service is named after the
			// release, the rest left to warren's defaults.
			if got := otelEnv(env); !maps.Equal(got, map[string]string{
				"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector.observability:4318",
				"OTEL_SERVICE_NAME":           "warren",
			}) {
				t.Errorf("tracing env = %v, want the endpoint and the release's name", got)
			}
			svc := find[*corev1.Service](t, r, "warren-metrics")
			if svc.Spec.Ports[0].TargetPort.String() != "health" {
				t.Errorf("Service targetPort = %s, want health", svc.Spec.Ports[0].TargetPort.String())
			}
		}},
		{give: "exec", check: func(t *testing.T, r *rendered) {
			d := find[*appsv1.Deployment](t, r, "warren")
			c := warrenContainer(t, d)
			env := envMap(c)
			wantEnv(t, env, map[string]string{
				"WARREN_HANDLER":              "exec",
				"WARREN_EXEC_COMMAND":         "python3 /app/handle.py",
				"WARREN_EXEC_DEAD_EXIT_CODES": "3,4",
				"WARREN_EXEC_ENV":             "THUMBNAIL_SIZE",
				"THUMBNAIL_SIZE":              "256",
			})
			if c.Image != "ghcr.io/example/thumbnailer:2.0.1" {
				t.Errorf("image = %q, want the derived image", c.Image)
			}
			if m := volumeMount(c, "tmp"); m == nil || m.MountPath != "/tmp" {
				t.Errorf("tmp mount = %+v, want an emptyDir at /tmp", m)
			}
			if g := *d.Spec.Template.Spec.TerminationGracePeriodSeconds; g != 350 {
				t.Errorf("terminationGracePeriodSeconds = %d, want 350 (5m30s + 15 + 5)", g)
			}
		}},
		{give: "quorum-retry", check: func(t *testing.T, r *rendered) {
			d := find[*appsv1.Deployment](t, r, "warren")
			env := envMap(warrenContainer(t, d))
			wantEnv(t, env, map[string]string{
				"WARREN_QUEUE_TYPE":     "quorum",
				"WARREN_EXCHANGE":       "events",
				"WARREN_EXCHANGE_TYPE":  "topic",
				"WARREN_BINDING_KEYS":   "payment.*,refund.created",
				"WARREN_DELIVERY_LIMIT": "10",
				"WARREN_RETRY_DELAYS":   "1s,10s,1m,10m",
				"WARREN_MAX_ATTEMPTS":   "5",
			})
			pdb := find[*policyv1.PodDisruptionBudget](t, r, "warren")
			if !matches(pdb.Spec.Selector.MatchLabels, d.Spec.Template.Labels) {
				t.Errorf("PodDisruptionBudget selects %v, not the pods %v", pdb.Spec.Selector.MatchLabels, d.Spec.Template.Labels)
			}
			tsc := d.Spec.Template.Spec.TopologySpreadConstraints
			if len(tsc) != 1 || tsc[0].LabelSelector == nil || !matches(tsc[0].LabelSelector.MatchLabels, d.Spec.Template.Labels) {
				t.Errorf("topologySpreadConstraints = %+v, want the pods' selector filled in", tsc)
			}
		}},
		{give: "existing-secret-tls", check: func(t *testing.T, r *rendered) {
			if n := len(all[*corev1.Secret](r)); n != 0 {
				t.Errorf("%d Secrets rendered, want none with an existing Secret", n)
			}
			d := find[*appsv1.Deployment](t, r, "warren")
			if _, ok := d.Spec.Template.Annotations["checksum/secret"]; ok {
				t.Errorf("checksum/secret set for a Secret the chart does not render")
			}
			c := warrenContainer(t, d)
			env := envMap(c)
			wantEnv(t, env, map[string]string{
				"WARREN_TLS_CA_FILE":   "/etc/warren/tls/ca.crt",
				"WARREN_TLS_CERT_FILE": "/etc/warren/tls/tls.crt",
				"WARREN_TLS_KEY_FILE":  "/etc/warren/tls/tls.key",
			})
			if m := volumeMount(c, "tls"); m == nil || !m.ReadOnly {
				t.Errorf("tls mount = %+v, want read-only", m)
			}
			v := volume(d, "broker")
			if v.Secret.SecretName != "rabbitmq-credentials" || v.Secret.Items[0].Key != "amqp-url" {
				t.Errorf("broker volume = %+v, want key amqp-url of rabbitmq-credentials", v.Secret)
			}
			if v := volume(d, "tls"); v.Secret.SecretName != "warren-client-tls" || *v.Secret.DefaultMode != 0o440 {
				t.Errorf("tls volume = %+v, want warren-client-tls, mode 0440", v.Secret)
			}
			if got := d.Spec.Template.Spec.ServiceAccountName; got != "reports-worker" {
				t.Errorf("serviceAccountName = %q, want reports-worker", got)
			}
		}},
		{give: "keda", check: func(t *testing.T, r *rendered) {
			d := find[*appsv1.Deployment](t, r, "warren")
			if d.Spec.Replicas != nil {
				t.Errorf("replicas = %d, want none: KEDA owns them", *d.Spec.Replicas)
			}
			so := find[*kedav1alpha1.ScaledObject](t, r, "warren")
			if so.Spec.MinReplicaCount == nil || *so.Spec.MinReplicaCount != 0 || *so.Spec.MaxReplicaCount != 20 {
				t.Errorf("ScaledObject replicas = %v..%v, want 0..20", so.Spec.MinReplicaCount, so.Spec.MaxReplicaCount)
			}
			if so.Spec.ScaleTargetRef.Name != d.Name {
				t.Errorf("ScaledObject targets %q, want %q", so.Spec.ScaleTargetRef.Name, d.Name)
			}
			tr := so.Spec.Triggers[0]
			if tr.Type != "rabbitmq" || tr.Metadata["queueName"] != "emails" || tr.Metadata["mode"] != "QueueLength" || tr.Metadata["value"] != "50" || tr.Metadata["activationValue"] != "0" {
				t.Errorf("trigger = %+v", tr)
			}
			ta := find[*kedav1alpha1.TriggerAuthentication](t, r, tr.AuthenticationRef.Name)
			ref := ta.Spec.SecretTargetRef[0]
			if ref.Parameter != "host" || ref.Name != "warren-broker" || ref.Key != "keda-host" {
				t.Errorf("TriggerAuthentication = %+v, want host from the broker Secret", ref)
			}
			// The safe default: KEDA counts the messages being handled too.
			if got := tr.Metadata["protocol"]; got != "http" {
				t.Errorf("trigger protocol = %q, want http", got)
			}
			sec := find[*corev1.Secret](t, r, "warren-broker")
			if got, want := string(sec.Data["keda-host"]), "http://warren:secret@rabbitmq.messaging.svc:15672/"; got != want {
				t.Errorf("Secret keda-host = %q, want %q", got, want)
			}
			// handler.timeout (1m) is longer than shutdownTimeout (25s): a
			// scale-in waits for a call that started just before SIGTERM.
			if got := envMap(warrenContainer(t, d))["WARREN_SHUTDOWN_TIMEOUT"].Value; got != "60s" {
				t.Errorf("WARREN_SHUTDOWN_TIMEOUT = %q, want 60s (handler.timeout)", got)
			}
		}},
		{give: "hpa", check: func(t *testing.T, r *rendered) {
			d := find[*appsv1.Deployment](t, r, "warren")
			if d.Spec.Replicas != nil {
				t.Errorf("replicas = %d, want none: the HPA owns them", *d.Spec.Replicas)
			}
			hpa := find[*autoscalingv2.HorizontalPodAutoscaler](t, r, "warren")
			if *hpa.Spec.MinReplicas != 2 || hpa.Spec.MaxReplicas != 8 || len(hpa.Spec.Metrics) != 2 {
				t.Errorf("HPA = %+v", hpa.Spec)
			}
		}},
		{give: "everything", check: func(t *testing.T, r *rendered) {
			find[*monitoringv1.ServiceMonitor](t, r, "warren-all")
			pr := find[*monitoringv1.PrometheusRule](t, r, "warren-all")
			var alerts []string
			for _, rule := range pr.Spec.Groups[0].Rules {
				alerts = append(alerts, rule.Alert)
				if !strings.Contains(rule.Expr.String(), "warren_") {
					t.Errorf("alert %s: expr %q uses no warren metric", rule.Alert, rule.Expr.String())
				}
			}
			want := []string{"WarrenDeadLetters", "WarrenNotConnected", "WarrenHandlerErrors",
				"WarrenMessagesStuck", "WarrenNotReady", "WarrenCopyFailures", "WarrenCircuitOpen", "WarrenNotConsuming"}
			if !slices.Equal(alerts, want) {
				t.Errorf("alerts = %v, want %v", alerts, want)
			}
			dash := find[*corev1.ConfigMap](t, r, "warren-all-dashboard")
			if dash.Labels["grafana_dashboard"] != "1" || dash.Annotations["grafana_folder"] != "Queues" || !json.Valid([]byte(dash.Data["warren.json"])) {
				t.Errorf("dashboard ConfigMap: labels %v, annotations %v, %d bytes of JSON (valid: %v), want grafana_dashboard=1, grafana_folder=Queues, the dashboard",
					dash.Labels, dash.Annotations, len(dash.Data["warren.json"]), json.Valid([]byte(dash.Data["warren.json"])))
			}
			// Where Grafana's sidecar looks, which the install test's
			// API server lacks.
			s := scenario{name: "everything", file: filepath.Join(chartDir, "ci", "everything-values.yaml")}
			if ns := find[*corev1.ConfigMap](t, mustRender(t, s, "metrics.dashboard.namespace=monitoring"), "warren-all-dashboard").Namespace; ns != "monitoring" {
				t.Errorf("dashboard ConfigMap in namespace %q, want monitoring", ns)
			}
			find[*kedav1alpha1.ScaledObject](t, r, "warren-all")
			find[*policyv1.PodDisruptionBudget](t, r, "warren-all")
			d := find[*appsv1.Deployment](t, r, "warren-all")
			if got := d.Spec.Template.Spec.PriorityClassName; got != "system-cluster-critical" {
				t.Errorf("priorityClassName = %q", got)
			}
			if got := healthPort(t, warrenContainer(t, d)); got != 9090 {
				t.Errorf("health port = %d, want 9090", got)
			}
			if got, want := otelEnv(envMap(warrenContainer(t, d))), map[string]string{
				"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector.observability:4317",
				"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
				"OTEL_SERVICE_NAME":           "everything-worker",
				"OTEL_TRACES_SAMPLER":         "parentbased_traceidratio",
				"OTEL_TRACES_SAMPLER_ARG":     "0.25",
			}; !maps.Equal(got, want) {
				t.Errorf("tracing env = %v, want %v", got, want)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.give, func(t *testing.T) {
			s := scenario{name: tt.give, file: filepath.Join(chartDir, "ci", tt.give+"-values.yaml")}
			tt.check(t, mustRender(t, s))
		})
	}
}

// TestKedaHost checks the one URL KEDA reads: the management API's,
// derived from broker.url or given, by default; with protocol amqp the
// first node of broker.url; from an existing Secret at the key named.
func TestKedaHost(t *testing.T) {
	tests := []struct {
		give         []string
		wantKey      string
		wantURL      string // under wantKey in the chart's Secret; empty: not checked
		wantProtocol string
	}{
		{
			give:    []string{"broker.url=amqp://u:p@node-0:5672/\\, amqp://u:p@node-1:5672/"},
			wantKey: "keda-host", wantURL: "http://u:p@node-0:15672/", wantProtocol: "http",
		},
		{give: []string{"broker.url=amqps://u:p@rabbit:5671/prod"}, wantKey: "keda-host", wantURL: "https://u:p@rabbit:15671/prod", wantProtocol: "http"},
		{give: []string{"broker.url=amqp://rabbit"}, wantKey: "keda-host", wantURL: "http://rabbit:15672/", wantProtocol: "http"},
		{give: []string{"broker.url=amqp://u:p@[fd00::1]:5672/%2F"}, wantKey: "keda-host", wantURL: "http://u:p@[fd00::1]:15672/%2F", wantProtocol: "http"},
		{give: []string{"broker.url=amqp://u:p%40x@rabbit/v"}, wantKey: "keda-host", wantURL: "http://u:p%40x@rabbit:15672/v", wantProtocol: "http"},
		{
			give:    []string{"keda.managementUrl=https://monitor:pw@rabbit-mgmt.example:443/orders"},
			wantKey: "keda-host", wantURL: "https://monitor:pw@rabbit-mgmt.example:443/orders", wantProtocol: "http",
		},
		{
			give:    []string{"keda.protocol=amqp", "broker.url=amqp://u:p@node-0:5672/\\, amqp://u:p@node-1:5672/"},
			wantKey: "keda-host", wantURL: "amqp://u:p@node-0:5672/", wantProtocol: "amqp",
		},
		{give: []string{"keda.protocol=amqp", "broker.url=", "broker.existingSecret=mine", "broker.existingSecretKey=amqp"}, wantKey: "amqp", wantProtocol: "amqp"},
		{give: []string{"broker.url=", "broker.existingSecret=mine", "keda.hostKey=management"}, wantKey: "management", wantProtocol: "http"},
		{give: []string{"keda.hostKey=one-node"}, wantKey: "one-node", wantProtocol: "http"},
	}
	for _, tt := range tests {
		r := mustRender(t, scenario{name: "two-values"}, append([]string{"keda.enabled=true"}, tt.give...)...)
		ta := find[*kedav1alpha1.TriggerAuthentication](t, r, "warren")
		if got := ta.Spec.SecretTargetRef[0].Key; got != tt.wantKey {
			t.Errorf("with %v KEDA reads key %q, want %q", tt.give, got, tt.wantKey)
		}
		so := find[*kedav1alpha1.ScaledObject](t, r, "warren")
		if got := so.Spec.Triggers[0].Metadata["protocol"]; got != tt.wantProtocol {
			t.Errorf("with %v protocol = %q, want %q", tt.give, got, tt.wantProtocol)
		}
		if tt.wantURL != "" {
			sec := find[*corev1.Secret](t, r, "warren-broker")
			if got := string(sec.Data[tt.wantKey]); got != tt.wantURL {
				t.Errorf("with %v Secret %s = %q, want %q", tt.give, tt.wantKey, got, tt.wantURL)
			}
		}
	}
}

// TestSecretChecksum checks that a changed URL rolls the pods and that
// nothing else about the URL reaches the pod template.
func TestSecretChecksum(t *testing.T) {
	s := scenario{name: "two-values"}
	checksum := func(sets ...string) string {
		d := find[*appsv1.Deployment](t, mustRender(t, s, sets...), "warren")
		return d.Spec.Template.Annotations["checksum/secret"]
	}
	a, b, c := checksum(), checksum(), checksum("broker.url=amqp://warren:rotated@rabbitmq:5672/")
	if a == "" || a != b {
		t.Errorf("checksum/secret = %q then %q, want the same non-empty value", a, b)
	}
	if a == c {
		t.Errorf("checksum/secret unchanged (%q) after the URL changed", a)
	}
}

// TestMaxInflightBytes checks that the value reaches warren as given, as
// a size with a suffix or a number of bytes.
func TestMaxInflightBytes(t *testing.T) {
	for _, tt := range []struct {
		give []string
		file string // a values file instead, where numbers are floats
		want string
	}{
		{give: []string{"maxInflightBytes=64Mi"}, want: "64Mi"},
		{give: []string{"maxInflightBytes=134217728"}, want: "134217728"},
		{file: "maxInflightBytes: 134217728\n", want: "134217728"},
	} {
		s := scenario{name: "two-values"}
		if tt.file != "" {
			s = scenario{name: "file", file: writeValues(t, "queue:\n  name: q\nbroker:\n  url: amqp://h/\n"+tt.file)}
		}
		r := mustRender(t, s, tt.give...)
		env := envMap(warrenContainer(t, find[*appsv1.Deployment](t, r, "warren")))
		if got := env["WARREN_MAX_INFLIGHT_BYTES"].Value; got != tt.want {
			t.Errorf("WARREN_MAX_INFLIGHT_BYTES with %v = %q, want %q", tt.give, got, tt.want)
		}
	}
}

// drainBoundSeconds is how much longer than WARREN_SHUTDOWN_TIMEOUT warren
// may take to exit after SIGTERM: the bound of its drain past the shutdown
// timeout (an exec handler's 5s kill grace and 5s WaitDelay, and the
// bounded broker calls on the way out). The chart's helper
// warren.drainBoundSeconds says the same.
const drainBoundSeconds = 15

// TestTerminationGrace checks the grace period against the longest warren
// takes to exit: the shutdown timeout plus the drain's fixed bound, and
// terminationGraceMarginSeconds on top.
func TestTerminationGrace(t *testing.T) {
	tests := []struct {
		give         []string
		want         int64  // terminationGracePeriodSeconds
		wantShutdown string // WARREN_SHUTDOWN_TIMEOUT; empty: shutdownTimeout as given
	}{
		{give: nil, want: 25 + drainBoundSeconds + 5},
		{give: []string{"shutdownTimeout=1s"}, want: 1 + drainBoundSeconds + 5},
		{give: []string{"shutdownTimeout=2m"}, want: 120 + drainBoundSeconds + 5},
		{give: []string{"shutdownTimeout=1h2m3s"}, want: 3723 + drainBoundSeconds + 5},
		{give: []string{"shutdownTimeout=90s", "terminationGraceMarginSeconds=1"}, want: 90 + drainBoundSeconds + 1},
		// Without KEDA a long handler.timeout leaves the shutdown timeout
		// alone: a rollout is the user's to time.
		{give: []string{"handler.timeout=10m"}, want: 25 + drainBoundSeconds + 5},
		// With KEDA the shutdown timeout covers a call that started just
		// before SIGTERM: at least handler.timeout, rounded up to a second.
		{give: []string{"keda.enabled=true"}, want: 60 + drainBoundSeconds + 5, wantShutdown: "60s"},
		{give: []string{"keda.enabled=true", "handler.timeout=10m"}, want: 600 + drainBoundSeconds + 5, wantShutdown: "600s"},
		{give: []string{"keda.enabled=true", "handler.timeout=1m30.5s"}, want: 91 + drainBoundSeconds + 5, wantShutdown: "91s"},
		{give: []string{"keda.enabled=true", "handler.timeout=1500ms", "shutdownTimeout=1s"}, want: 2 + drainBoundSeconds + 5, wantShutdown: "2s"},
		{give: []string{"keda.enabled=true", "handler.timeout=20s"}, want: 25 + drainBoundSeconds + 5, wantShutdown: "25s"},
		{give: []string{"keda.enabled=true", "handler.timeout=1m", "shutdownTimeout=2m"}, want: 120 + drainBoundSeconds + 5, wantShutdown: "2m"},
	}
	for _, tt := range tests {
		r := mustRender(t, scenario{name: "two-values"}, tt.give...)
		d := find[*appsv1.Deployment](t, r, "warren")
		if got := *d.Spec.Template.Spec.TerminationGracePeriodSeconds; got != tt.want {
			t.Errorf("terminationGracePeriodSeconds with %v = %d, want %d", tt.give, got, tt.want)
		}
		want := tt.wantShutdown
		if want == "" {
			want = "25s"
			for _, g := range tt.give {
				if v, ok := strings.CutPrefix(g, "shutdownTimeout="); ok {
					want = v
				}
			}
		}
		if got := envMap(warrenContainer(t, d))["WARREN_SHUTDOWN_TIMEOUT"].Value; got != want {
			t.Errorf("WARREN_SHUTDOWN_TIMEOUT with %v = %q, want %q", tt.give, got, want)
		}
	}
}

// TestValuesRejected checks that wrong values stop the install with a
// message naming the value.
func TestValuesRejected(t *testing.T) {
	tests := []struct {
		give []string // --set, on top of the two values
		want string   // in the error
	}{
		{give: []string{"replicaCount=abc"}, want: "at '/replicaCount': got string, want integer"},
		{give: []string{"replicaCount=-1"}, want: "/replicaCount"},
		{give: []string{"prefetch=0"}, want: "/prefetch"},
		{give: []string{"prefetch=70000"}, want: "/prefetch"},
		{give: []string{"queue.nmae=x"}, want: "additional properties 'nmae' not allowed"},
		{give: []string{"replicas=2"}, want: "additional properties 'replicas' not allowed"},
		{give: []string{"queue.name="}, want: "/queue/name"},
		{give: []string{"queue.type=stream"}, want: "/queue/type"},
		{give: []string{"handler.type=grpc"}, want: "/handler/type"},
		{give: []string{"handler.type=http"}, want: "/handler/httpUrl"},
		{give: []string{"handler.type=exec"}, want: "/handler/execCommand"},
		{give: []string{"handler.timeout=soon"}, want: "/handler/timeout"},
		{give: []string{"retry.delays={1s,later}"}, want: "/retry/delays/1"},
		{give: []string{"retry.maxAttempts=0"}, want: "/retry/maxAttempts"},
		{give: []string{"retry.maxRetryAfter=soon"}, want: "/retry/maxRetryAfter"},
		{give: []string{"shutdownTimeout=25"}, want: "/shutdownTimeout"},
		{give: []string{"circuit.enabled=on"}, want: "/circuit/enabled"},
		{give: []string{"circuit.failures=0"}, want: "/circuit/failures"},
		{give: []string{"circuit.window=30"}, want: "/circuit/window"},
		{give: []string{"circuit.maxProbeInterval=soon"}, want: "/circuit/maxProbeInterval"},
		{give: []string{"rateLimit=-1"}, want: "/rateLimit"},
		{give: []string{"rateLimit=200000"}, want: "/rateLimit"},
		{give: []string{"rateLimit=fast"}, want: "/rateLimit"},
		{give: []string{"reply.enabled=no"}, want: "/reply/enabled"},
		{give: []string{"reply.enabled=false", "reply.onDead=true"}, want: "reply.onDead needs reply.enabled"},
		// warren refuses 0: it would not mean "at once".
		{give: []string{"shutdownTimeout=0s"}, want: "shutdownTimeout must be more than 0s"},
		{give: []string{"shutdownTimeout=0h0m0s"}, want: "shutdownTimeout must be more than 0s"},
		{give: []string{"terminationGraceMarginSeconds=0"}, want: "/terminationGraceMarginSeconds"},
		{give: []string{"handler.httpDeadStatuses={400,600}"}, want: "/handler/httpDeadStatuses/1"},
		{give: []string{"log.level=verbose"}, want: "/log/level"},
		{give: []string{"health.port=0"}, want: "/health/port"},
		{give: []string{"broker.url=http://rabbitmq:15672/"}, want: "/broker/url"},
		{give: []string{"prefetch=16", "concurrency=32"}, want: "concurrency (32) must be at most prefetch (16)"},
		{give: []string{"concurrency=1001"}, want: "concurrency (1001) must be at most maxPrefetch (1000)"},
		{give: []string{"prefetch=abc"}, want: "/prefetch"},
		{give: []string{"maxPrefetch=0"}, want: "/maxPrefetch"},
		{give: []string{"maxInflightBytes=64MB"}, want: "/maxInflightBytes"},
		{give: []string{"maxInflightBytes=1.5Gi"}, want: "/maxInflightBytes"},
		{give: []string{"maxInflightBytes=1024"}, want: "/maxInflightBytes"},
		{give: []string{"broker.existingSecret=mine"}, want: "set broker.url or broker.existingSecret, not both"},
		{give: []string{"queue.deliveryLimit=3"}, want: "queue.deliveryLimit needs queue.type quorum"},
		{give: []string{"tls.enabled=true"}, want: "tls.enabled needs tls.existingSecret"},
		{give: []string{"tls.certKey=tls.crt"}, want: "set tls.certKey and tls.keyKey together"},
		{give: []string{"keda.enabled=true", "autoscaling.enabled=true"}, want: "choose one"},
		{give: []string{"keda.protocol=auto"}, want: "/keda/protocol"},
		{give: []string{"keda.managementUrl=amqp://rabbit/"}, want: "/keda/managementUrl"},
		{
			give: []string{"keda.enabled=true", "broker.url=", "broker.existingSecret=mine"},
			want: "keda.protocol http with broker.existingSecret needs keda.hostKey",
		},
		{give: []string{"keda.enabled=true", "keda.protocol=amqp", "keda.managementUrl=http://rabbit:15672/"}, want: "keda.managementUrl is read with keda.protocol http"},
		{give: []string{"handler.execEnv={WARREN_AMQP_URL_FILE}"}, want: "/handler/execEnv/0"},
		{give: []string{"handler.httpReplyHeaders={X Bad}"}, want: "/handler/httpReplyHeaders/0"},
		{give: []string{"reply.maxBytes=1023"}, want: "/reply/maxBytes"},
		{give: []string{"reply.maxBytes=1MB"}, want: "/reply/maxBytes"},
		{give: []string{"reply.onDead=yes"}, want: "/reply/onDead"},
		{give: []string{"tracing.endpoint=otel-collector:4317"}, want: "/tracing/endpoint"},
		{give: []string{"tracing.protocol=http/json"}, want: "/tracing/protocol"},
		{give: []string{"tracing.sampler=sometimes"}, want: "/tracing/sampler"},
		{give: []string{"tracing.samplerArg=2"}, want: "/tracing/samplerArg"},
		{give: []string{"tracing.samplerArg=half"}, want: "/tracing/samplerArg"},
		{give: []string{"tracing.sampleRate=1"}, want: "additional properties 'sampleRate' not allowed"},
	}
	for _, tt := range tests {
		_, err := render(t, scenario{name: "two-values"}.values(t, tt.give...), "default")
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("render with %v = %v, want an error containing %q", tt.give, err, tt.want)
		}
	}
	// What the schema leaves free-form is checked by decoding strictly
	// into the Kubernetes types: a misspelt field fails.
	typo := scenario{name: "typo", file: writeValues(t, "queue:\n  name: q\nbroker:\n  url: amqp://h/\nextraContainers:\n  - name: app\n    imagee: example/app:1\n")}
	if _, err := render(t, typo.values(t), "default"); err == nil || !strings.Contains(err.Error(), `unknown field "spec.template.spec.containers[1].imagee"`) {
		t.Errorf("render with a misspelt container field = %v, want an unknown field error", err)
	}
	// Without the broker: the message says what to set.
	opts := scenario{name: "no-broker", file: writeValues(t, "queue:\n  name: q\n")}
	if _, err := render(t, opts.values(t), "default"); err == nil || !strings.Contains(err.Error(), "broker.url or broker.existingSecret is required") {
		t.Errorf("render without a broker = %v, want it to ask for broker.url", err)
	}
}

// TestValuesDocumented checks that every key of values.yaml has a comment
// starting with its dotted name, or sits in a block whose comment does.
func TestValuesDocumented(t *testing.T) {
	documentedValues(t)
}

// TestReadmeValues checks that the chart's README has a row for every
// documented key of values.yaml, and none for a key that is gone.
func TestReadmeValues(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(chartDir, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]bool{}
	for _, m := range regexp.MustCompile("(?m)^\\| `([A-Za-z0-9.]+)` \\|").FindAllStringSubmatch(string(b), -1) {
		rows[m[1]] = true
	}
	keys := documentedValues(t)
	for _, k := range keys {
		if !rows[k] {
			t.Errorf("charts/warren/README.md has no row for %s", k)
		}
		delete(rows, k)
	}
	for k := range rows {
		t.Errorf("charts/warren/README.md has a row for %s, which values.yaml lacks", k)
	}
}

// documentedValues checks the comments of values.yaml and returns the keys
// documented one by one.
func documentedValues(t *testing.T) []string {
	t.Helper()
	var keys []string
	b, err := os.ReadFile(filepath.Join(chartDir, "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	var path []string // key at each indentation level (2 spaces)
	key := regexp.MustCompile(`^( *)([A-Za-z][A-Za-z0-9]*):`)
	for i, line := range lines {
		m := key.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		depth := len(m[1]) / 2
		path = append(path[:min(depth, len(path))], m[2])
		if len(path) != depth+1 {
			continue // inside a list or a free-form default such as resources
		}
		name := strings.Join(path, ".")
		var comment []string
		for j := i - 1; j >= 0 && strings.HasPrefix(strings.TrimSpace(lines[j]), "#"); j-- {
			comment = append([]string{strings.TrimSpace(lines[j])}, comment...)
		}
		isBlock := i+1 < len(lines) && strings.TrimSpace(line) == m[2]+":" && strings.HasPrefix(lines[i+1], m[1]+"  ")
		switch {
		case depth > 0 && inFreeForm(path):
		case len(comment) > 0 && strings.HasPrefix(comment[0], "# "+name+" "):
			keys = append(keys, name)
		case isBlock:
			// A block such as image: or queue: is documented key by key.
		default:
			t.Errorf("values.yaml:%d: %s has no comment starting with %q", i+1, name, "# "+name)
		}
	}
	return keys
}

// inFreeForm reports keys inside a default given as a Kubernetes object
// (resources, probes, security contexts), documented as a whole.
func inFreeForm(path []string) bool {
	switch path[0] {
	case "resources", "podSecurityContext", "securityContext", "startupProbe", "livenessProbe", "readinessProbe", "strategy":
		return true
	}
	return false
}

func writeValues(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "values.yaml")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
