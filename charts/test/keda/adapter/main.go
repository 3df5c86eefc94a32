/*
Copyright 2021 The KEDA Authors

Licensed under the Apache License, Version 2.0 (the "License");
you may not use this file except in compliance with the License.
You may obtain a copy of the License at

    http://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software
distributed under the License is distributed on an "AS IS" BASIS,
WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
See the License for the specific language governing permissions and
limitations under the License.
*/

package main

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"os"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap/zapcore"
	appsv1 "k8s.io/api/apps/v1"
	apimetrics "k8s.io/apiserver/pkg/endpoints/metrics"
	"k8s.io/client-go/kubernetes/scheme"
	kubemetrics "k8s.io/component-base/metrics"
	"k8s.io/component-base/metrics/legacyregistry"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	ctrlcache "sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/controller-runtime/pkg/metrics/server"
	basecmd "sigs.k8s.io/custom-metrics-apiserver/pkg/cmd"
	"sigs.k8s.io/custom-metrics-apiserver/pkg/provider"

	kedav1alpha1 "github.com/kedacore/keda/v2/apis/keda/v1alpha1"
	"github.com/kedacore/keda/v2/pkg/metricsservice"
	kedaprovider "github.com/kedacore/keda/v2/pkg/provider"
	kedautil "github.com/kedacore/keda/v2/pkg/util"
)

// Adapter creates External Metrics Provider
type Adapter struct {
	basecmd.AdapterBase

	// Message is printed on successful startup
	Message string
}

var setupLog = ctrl.Log.WithName("keda_metrics_adapter")

var (
	adapterClientRequestQPS     float32
	adapterClientRequestBurst   int
	metricsAPIServerPort        int
	disableCompression          bool
	metricsServiceAddr          string
	profilingAddr               string
	metricsServiceGRPCAuthority string
	logToSTDerr                 bool
	verbosityLevel              int
	stdErrThreshold             string
)

func (a *Adapter) makeProvider(ctx context.Context) (provider.ExternalMetricsProvider, error) {
	scheme := scheme.Scheme
	if err := appsv1.SchemeBuilder.AddToScheme(scheme); err != nil {
		setupLog.Error(err, "failed to add apps/v1 scheme to runtime scheme")
		return nil, fmt.Errorf("failed to add apps/v1 scheme to runtime scheme (%s)", err)
	}
	if err := kedav1alpha1.SchemeBuilder.AddToScheme(scheme); err != nil {
		setupLog.Error(err, "failed to add keda scheme to runtime scheme")
		return nil, fmt.Errorf("failed to add keda scheme to runtime scheme (%s)", err)
	}
	namespaces, err := kedautil.GetWatchNamespaces()
	if err != nil {
		setupLog.Error(err, "failed to get watch namespace")
		return nil, fmt.Errorf("failed to get watch namespace (%s)", err)
	}

	// Get a config to talk to the apiserver
	cfg := ctrl.GetConfigOrDie()
	cfg.QPS = adapterClientRequestQPS
	cfg.Burst = adapterClientRequestBurst
	cfg.DisableCompression = disableCompression

	clientMetrics := getMetricInterceptor()

	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Metrics: server.Options{
			BindAddress: "0", // disabled since we use our own server to serve metrics
		},
		Scheme: scheme,
		Cache: ctrlcache.Options{
			DefaultNamespaces: namespaces,
			DefaultTransform:  kedautil.CacheObjectTransform,
		},
		PprofBindAddress: profilingAddr,
	})
	if err != nil {
		setupLog.Error(err, "failed to setup manager")
		return nil, err
	}

	setupLog.Info("Connecting Metrics Service gRPC client to the server", "address", metricsServiceAddr)
	defaultConnectionCfg := ""
	grpcClient, err := metricsservice.NewGrpcClient(ctx, metricsServiceAddr, a.SecureServing.ServerCert.CertDirectory, metricsServiceGRPCAuthority, defaultConnectionCfg, clientMetrics, false)
	if err != nil {
		setupLog.Error(err, "error connecting Metrics Service gRPC client to the server", "address", metricsServiceAddr)
		return nil, err
	}
	go func() {
		if err := mgr.Start(ctx); err != nil {
			setupLog.Error(err, "controller-runtime encountered an error")
			os.Exit(1)
		}
	}()
	return kedaprovider.NewProvider(ctx, setupLog, mgr.GetClient(), *grpcClient), nil
}

// getMetricHandler returns a http handler that exposes metrics from controller-runtime and apiserver
func getMetricHandler() http.HandlerFunc {
	// Register apiserver metrics in legacy registry
	// this contains the apiserver_* metrics
	apimetrics.Register()

	// unregister duplicate collectors that are already handled by controller-runtime's registry
	legacyregistry.Registerer().Unregister(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	legacyregistry.Registerer().Unregister(collectors.NewGoCollector(collectors.WithGoCollectorRuntimeMetrics(collectors.MetricsAll)))

	// Return handler that serves metrics from both legacy and controller-runtime registry
	return func(w http.ResponseWriter, req *http.Request) {
		legacyregistry.Handler().ServeHTTP(w, req)

		kubemetrics.HandlerFor(ctrlmetrics.Registry, kubemetrics.HandlerOpts{}).ServeHTTP(w, req)
	}
}

// getMetricInterceptor returns a metrics interceptor that records metrics between the adapter and operator
func getMetricInterceptor() *grpcprom.ClientMetrics {
	metricsNamespace := "keda_internal_metricsservice"

	counterNamespace := func(o *prometheus.CounterOpts) {
		o.Namespace = metricsNamespace
	}

	histogramNamespace := func(o *prometheus.HistogramOpts) {
		o.Namespace = metricsNamespace
	}

	clientMetrics := grpcprom.NewClientMetrics(
		grpcprom.WithClientHandlingTimeHistogram(
			grpcprom.WithHistogramBuckets([]float64{0.001, 0.01, 0.1, 0.3, 0.6, 1, 3, 6, 9, 20, 30, 60, 90, 120}),
			histogramNamespace,
		),
		grpcprom.WithClientCounterOptions(counterNamespace),
	)
	legacyregistry.Registerer().MustRegister(clientMetrics)

	return clientMetrics
}

// RunMetricsServer runs a http listener and handles the /metrics endpoint
// this is needed to consolidate apiserver and controller-runtime metrics
// we have to use a separate http server & can't rely on the controller-runtime implementation
// because apiserver doesn't provide a way to register metrics to other prometheus registries
func RunMetricsServer(ctx context.Context) {
	h := getMetricHandler()
	mux := http.NewServeMux()
	mux.Handle("/metrics", h)
	metricsBindAddress := fmt.Sprintf(":%v", metricsAPIServerPort)

	server := &http.Server{
		Addr:    metricsBindAddress,
		Handler: mux,
	}

	go func() {
		setupLog.Info("starting /metrics server endpoint")
		// nosemgrep: use-tls
		err := server.ListenAndServe()
		if err != http.ErrServerClosed {
			panic(err)
		}
	}()

	go func() {
		<-ctx.Done()
		if err := server.Shutdown(ctx); err != nil {
			setupLog.Error(err, "http server shutdown error")
		}
	}()
}

// generateDefaultMetricsServiceAddr generates default Metrics Service gRPC Server address based on the current Namespace.
// By default the Metrics Service gRPC Server runs in the same namespace on the keda-operator pod.
func generateDefaultMetricsServiceAddr() string {
	return fmt.Sprintf("keda-operator.%s.svc.cluster.local:9666", kedautil.GetPodNamespace())
}

// printWelcomeMsg prints welcome message during the start of the adater
func printWelcomeMsg(cmd *Adapter) error {
	clientset, err := cmd.DiscoveryClient()
	if err != nil {
		setupLog.Error(err, "not able to get Kubernetes version")
		return err
	}
	version, err := clientset.ServerVersion()
	if err != nil {
		setupLog.Error(err, "not able to get Kubernetes version")
		return err
	}
	kedautil.PrintWelcome(setupLog, kedautil.NewK8sVersion(version), "metrics server")

	return nil
}

func main() {
	ctx := ctrl.SetupSignalHandler()
	var err error
	defer func() {
		if err != nil {
			setupLog.Error(err, "unable to run external metrics adapter")
		}
	}()

	cmd := &Adapter{}
	cmd.Name = "keda-adapter"

	cmd.Flags().StringVar(&cmd.Message, "msg", "starting adapter...", "startup message")
	cmd.Flags().IntVar(&metricsAPIServerPort, "port", 8080, "Set the port for the metrics API server")
	cmd.Flags().StringVar(&metricsServiceAddr, "metrics-service-address", generateDefaultMetricsServiceAddr(), "The address of the GRPC Metrics Service Server.")
	cmd.Flags().StringVar(&metricsServiceGRPCAuthority, "metrics-service-grpc-authority", "", "Host Authority override for the Metrics Service if the Host Authority is not the same as the address used for the GRPC Metrics Service Server.")
	cmd.Flags().StringVar(&profilingAddr, "profiling-bind-address", "", "The address the profiling would be exposed on.")
	cmd.Flags().Float32Var(&adapterClientRequestQPS, "kube-api-qps", 20.0, "Set the QPS rate for throttling requests sent to the apiserver")
	cmd.Flags().IntVar(&adapterClientRequestBurst, "kube-api-burst", 30, "Set the burst for throttling requests sent to the apiserver")
	cmd.Flags().BoolVar(&disableCompression, "disable-compression", true, "Disable response compression for k8s restAPI in client-go. ")

	// legacy klogr flags handled for backwards compatibility. Default set to -1 so it doesn't override values set via zap options
	cmd.Flags().IntVar(&verbosityLevel, "v", -1, "Logging level for Metrics Server. (DEPRECATED)")
	cmd.Flags().BoolVar(&logToSTDerr, "logtostderr", false, "Logs are written to standard error instead of to files. (DEPRECATED)")

	// legacy klogr flags handled to prevent breakage on upgrade, but are treated as no-ops. Since logToSTDerr was set to true
	// in prior versions of KEDA, this flag had no actual effect. See
	// https://pkg.go.dev/k8s.io/klog/v2
	cmd.Flags().StringVar(&stdErrThreshold, "stderrthreshold", "ERROR", "Logging stderrthreshold for Metrics Server. (DEPRECATED)")

	// Make sure we get the zap flags
	opts := zap.Options{}
	opts.BindFlags(flag.CommandLine)

	// Register klog flags on flag.CommandLine so they can be set programmatically.
	klog.InitFlags(nil)

	// Opt into the new klog behavior so that -stderrthreshold is honored even
	// when -logtostderr=true (the default). Without this, all log levels are
	// unconditionally sent to stderr and users cannot filter by severity.
	// Requires klog v2.140.0+ (kubernetes/klog#432).
	if err := flag.CommandLine.Set("legacy_stderr_threshold_behavior", "false"); err != nil {
		klog.Fatalf("Failed to set legacy_stderr_threshold_behavior: %v", err)
	}
	if err := flag.CommandLine.Set("stderrthreshold", "INFO"); err != nil {
		klog.Fatalf("Failed to set stderrthreshold: %v", err)
	}

	cmd.Flags().AddGoFlagSet(flag.CommandLine)

	if err := cmd.Flags().Parse(os.Args); err != nil {
		return
	}

	zapOpts := []zap.Opts{zap.UseFlagOptions(&opts)}
	if verbosityLevel > 0 {
		// A zap log level should be multiplied by -1 to get the logr verbosity and vice-versa.
		zapOpts = append(zapOpts, zap.Level(zapcore.Level(verbosityLevel*-1)))
	}

	if logToSTDerr {
		zapOpts = append(zapOpts, zap.ConsoleEncoder())
	}

	ctrl.SetLogger(zap.New(zapOpts...))

	// Warn about deprecated logging flags
	if cmd.Flags().Changed("v") {
		setupLog.Info("DEPRECATION WARNING: The '-v' flag is deprecated and will be removed in a future release. Please use '--zap-log-level' instead (e.g., '--zap-log-level=-1' for info, '--zap-log-level=-2' for debug)")
	}
	if cmd.Flags().Changed("logtostderr") {
		setupLog.Info("DEPRECATION WARNING: The '--logtostderr' flag is deprecated and will be removed in a future release. Please use '--zap-encoder=console' instead")
	}
	if cmd.Flags().Changed("stderrthreshold") {
		setupLog.Info("DEPRECATION WARNING: The '--stderrthreshold' flag is deprecated and has no equivalent in the new logging system. This flag is a no-op and will be removed in a future release")
	}

	err = printWelcomeMsg(cmd)
	if err != nil {
		return
	}

	kedaProvider, err := cmd.makeProvider(ctx)
	if err != nil {
		setupLog.Error(err, "making provider")
		return
	}
	cmd.WithExternalMetrics(kedaProvider)

	setupLog.Info(cmd.Message)

	RunMetricsServer(ctx)

	if err = cmd.Run(ctx); err != nil {
		return
	}
}
