package tracing

import (
	"errors"
	"reflect"
	"testing"

	"go.opentelemetry.io/otel/attribute"
)

func lookupIn(env map[string]string) func(string) (string, bool) {
	return func(name string) (string, bool) {
		v, ok := env[name]
		return v, ok
	}
}

func TestFromEnv(t *testing.T) {
	defaults := Settings{Protocol: ProtocolHTTP, ServiceName: "warren", Sampler: "parentbased_always_on", Ratio: 1}
	with := func(f func(s *Settings)) Settings {
		s := defaults
		f(&s)
		return s
	}
	tests := []struct {
		name string
		give map[string]string
		want Settings
	}{
		{"nothing set: off", nil, defaults},
		{"endpoint: on, http/protobuf", map[string]string{EnvEndpoint: "http://c:4318"},
			with(func(s *Settings) { s.Endpoint = "http://c:4318" })},
		{"traces endpoint wins, whole", map[string]string{EnvEndpoint: "http://c:4318", EnvTracesEndpoint: "https://t:443/otlp/traces"},
			with(func(s *Settings) { s.Endpoint, s.WholeURL = "https://t:443/otlp/traces", true })},
		{"grpc", map[string]string{EnvEndpoint: "http://c:4317", EnvProtocol: "grpc"},
			with(func(s *Settings) { s.Endpoint, s.Protocol = "http://c:4317", ProtocolGRPC })},
		{"traces protocol wins", map[string]string{EnvEndpoint: "http://c:4317", EnvProtocol: "http/protobuf", EnvTracesProtocol: "grpc"},
			with(func(s *Settings) { s.Endpoint, s.Protocol = "http://c:4317", ProtocolGRPC })},
		{"service name and attributes", map[string]string{EnvServiceName: " orders-worker ", EnvResourceAttributes: "deployment.environment=prod, team=pay%20ments,"},
			with(func(s *Settings) {
				s.ServiceName = "orders-worker"
				s.Attributes = []attribute.KeyValue{attribute.String("deployment.environment", "prod"), attribute.String("team", "pay ments")}
			})},
		{"ratio sampler", map[string]string{EnvSampler: "parentbased_traceidratio", EnvSamplerArg: "0.25"},
			with(func(s *Settings) { s.Sampler, s.Ratio = "parentbased_traceidratio", 0.25 })},
		{"sdk disabled wins over an endpoint", map[string]string{EnvEndpoint: "http://c:4318", EnvSDKDisabled: "true"}, defaults},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := FromEnv(lookupIn(tt.give))
			if err != nil {
				t.Fatalf("FromEnv(%v) = %v", tt.give, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("FromEnv(%v) = %+v, want %+v", tt.give, got, tt.want)
			}
			if got.Enabled() != (tt.want.Endpoint != "") {
				t.Errorf("Enabled() = %v with endpoint %q", got.Enabled(), got.Endpoint)
			}
		})
	}
}

// A bad value names its variable, even with tracing off: it is a typo
// waiting for the day tracing is turned on.
func TestFromEnvErrors(t *testing.T) {
	tests := []struct {
		give    map[string]string
		wantVar string
	}{
		{map[string]string{EnvEndpoint: "otel-collector:4317"}, EnvEndpoint},
		{map[string]string{EnvEndpoint: "ftp://c:21"}, EnvEndpoint},
		{map[string]string{EnvEndpoint: "http://"}, EnvEndpoint},
		{map[string]string{EnvTracesEndpoint: "c:4318/v1/traces"}, EnvTracesEndpoint},
		{map[string]string{EnvProtocol: "http/json"}, EnvProtocol},
		{map[string]string{EnvTracesProtocol: "GRPC"}, EnvTracesProtocol},
		{map[string]string{EnvServiceName: "  "}, EnvServiceName},
		{map[string]string{EnvResourceAttributes: "team"}, EnvResourceAttributes},
		{map[string]string{EnvResourceAttributes: "=x"}, EnvResourceAttributes},
		{map[string]string{EnvResourceAttributes: "a=%zz"}, EnvResourceAttributes},
		{map[string]string{EnvSampler: "jaeger_remote"}, EnvSampler},
		{map[string]string{EnvSamplerArg: "half"}, EnvSamplerArg},
		{map[string]string{EnvSamplerArg: "-0.1"}, EnvSamplerArg},
		{map[string]string{EnvSDKDisabled: "yes please"}, EnvSDKDisabled},
	}
	for _, tt := range tests {
		_, err := FromEnv(lookupIn(tt.give))
		var e *EnvError
		if !errors.As(err, &e) || e.Var != tt.wantVar {
			t.Errorf("FromEnv(%v) = %v, want an *EnvError naming %s", tt.give, err, tt.wantVar)
		}
	}
}
