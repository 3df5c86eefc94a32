package tracing

import (
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"go.opentelemetry.io/otel/attribute"
)

// The standard OpenTelemetry variables warren reads. The OTLP exporters
// read the rest of theirs themselves (OTEL_EXPORTER_OTLP_HEADERS,
// _TIMEOUT, _CERTIFICATE, _COMPRESSION...), and the batch span processor
// its OTEL_BSP_* ones.
const (
	EnvEndpoint           = "OTEL_EXPORTER_OTLP_ENDPOINT"
	EnvTracesEndpoint     = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
	EnvProtocol           = "OTEL_EXPORTER_OTLP_PROTOCOL"
	EnvTracesProtocol     = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
	EnvServiceName        = "OTEL_SERVICE_NAME"
	EnvResourceAttributes = "OTEL_RESOURCE_ATTRIBUTES"
	EnvSampler            = "OTEL_TRACES_SAMPLER"
	EnvSamplerArg         = "OTEL_TRACES_SAMPLER_ARG"
	EnvSDKDisabled        = "OTEL_SDK_DISABLED"
)

// Protocols of the OTLP exporter.
const (
	ProtocolGRPC = "grpc"
	ProtocolHTTP = "http/protobuf"
)

// DefaultServiceName is service.name when OTEL_SERVICE_NAME is unset.
const DefaultServiceName = "warren"

// Variable is one variable of Variables: its name, default and meaning.
type Variable struct {
	Name, Default, Meaning string
}

// Variables lists the variables warren reads for tracing, for its help.
var Variables = []Variable{
	{EnvEndpoint, "", "OTLP collector URL, http:// or https://, such as http://otel-collector:4318; unset: tracing off"},
	{EnvTracesEndpoint, "", "OTLP URL for traces only; wins over " + EnvEndpoint + " (http/protobuf: the whole URL, path included)"},
	{EnvProtocol, ProtocolHTTP, "grpc or http/protobuf"},
	{EnvTracesProtocol, "", "the protocol for traces only; wins over " + EnvProtocol},
	{EnvServiceName, DefaultServiceName, "service.name of warren's spans"},
	{EnvResourceAttributes, "", "more resource attributes, key=value pairs, comma-separated"},
	{EnvSampler, "parentbased_always_on", "always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio"},
	{EnvSamplerArg, "1.0", "the ratio of the traceidratio samplers, from 0 to 1"},
	{EnvSDKDisabled, "false", "true: tracing off whatever else is set"},
}

// Samplers are the values of OTEL_TRACES_SAMPLER warren takes.
var Samplers = []string{"always_on", "always_off", "traceidratio", "parentbased_always_on", "parentbased_always_off", "parentbased_traceidratio"}

// Settings is the tracing configuration read from the environment.
// Endpoint empty means tracing is off.
type Settings struct {
	// Endpoint is the OTLP URL, from OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or
	// OTEL_EXPORTER_OTLP_ENDPOINT; empty when tracing is off.
	Endpoint string
	// WholeURL says that Endpoint came from the traces-only variable: over
	// HTTP it is the whole URL, where the generic one is a base to which
	// /v1/traces is added.
	WholeURL bool
	// Protocol is ProtocolGRPC or ProtocolHTTP.
	Protocol string
	// ServiceName is the service.name of the resource.
	ServiceName string
	// Attributes are the resource attributes of OTEL_RESOURCE_ATTRIBUTES.
	Attributes []attribute.KeyValue
	// Sampler is one of Samplers; Ratio its argument for the ratio ones.
	Sampler string
	Ratio   float64
}

// Enabled reports whether spans are made and exported.
func (s Settings) Enabled() bool { return s.Endpoint != "" }

// EnvError is a bad value of one of the variables: it names the
// variable, the value and what is expected.
type EnvError struct {
	Var, Value, Want string
}

func (e *EnvError) Error() string { return fmt.Sprintf("%s=%q: want %s", e.Var, e.Value, e.Want) }

// FromEnv reads the tracing variables through lookup (os.LookupEnv) and
// checks them, whether or not an endpoint is set: a typo in a variable
// that matters only once tracing is turned on is still a typo.
func FromEnv(lookup func(string) (string, bool)) (Settings, error) {
	get := func(name string) string {
		v, _ := lookup(name)
		return strings.TrimSpace(v)
	}
	s := Settings{Protocol: ProtocolHTTP, ServiceName: DefaultServiceName, Sampler: "parentbased_always_on", Ratio: 1}

	for _, name := range []string{EnvEndpoint, EnvTracesEndpoint} {
		if v := get(name); v != "" {
			if !validURL(v) {
				return Settings{}, &EnvError{name, v, "an http:// or https:// URL with a host, such as http://otel-collector:4318"}
			}
			s.Endpoint = v // the traces one, checked last, wins
			s.WholeURL = name == EnvTracesEndpoint
		}
	}
	for _, name := range []string{EnvProtocol, EnvTracesProtocol} {
		if v := get(name); v != "" {
			if v != ProtocolGRPC && v != ProtocolHTTP {
				return Settings{}, &EnvError{name, v, "grpc or http/protobuf (http/json is not supported)"}
			}
			s.Protocol = v
		}
	}
	if v, ok := lookup(EnvServiceName); ok {
		if strings.TrimSpace(v) == "" {
			return Settings{}, &EnvError{EnvServiceName, v, "a service name, or unset for " + DefaultServiceName}
		}
		s.ServiceName = strings.TrimSpace(v)
	}
	attrs, err := parseAttributes(get(EnvResourceAttributes))
	if err != nil {
		return Settings{}, err
	}
	s.Attributes = attrs
	if v := get(EnvSampler); v != "" {
		if !slices.Contains(Samplers, v) {
			return Settings{}, &EnvError{EnvSampler, v, strings.Join(Samplers, ", ")}
		}
		s.Sampler = v
	}
	if v := get(EnvSamplerArg); v != "" {
		r, err := strconv.ParseFloat(v, 64)
		if err != nil || r < 0 || r > 1 {
			return Settings{}, &EnvError{EnvSamplerArg, v, "a ratio from 0 to 1, such as 0.1"}
		}
		s.Ratio = r
	}
	if v := get(EnvSDKDisabled); v != "" {
		off, err := strconv.ParseBool(v)
		if err != nil {
			return Settings{}, &EnvError{EnvSDKDisabled, v, "true or false"}
		}
		if off {
			s.Endpoint = ""
		}
	}
	return s, nil
}

// validURL reports whether v is an http or https URL with a host.
func validURL(v string) bool {
	u, err := url.Parse(v)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != ""
}

// parseAttributes reads OTEL_RESOURCE_ATTRIBUTES: key=value pairs,
// comma-separated, values percent-encoded as the specification has it.
func parseAttributes(v string) ([]attribute.KeyValue, error) {
	if v == "" {
		return nil, nil
	}
	var attrs []attribute.KeyValue
	for _, pair := range strings.Split(v, ",") {
		if strings.TrimSpace(pair) == "" {
			continue
		}
		k, val, ok := strings.Cut(pair, "=")
		k = strings.TrimSpace(k)
		unescaped, err := url.PathUnescape(strings.TrimSpace(val))
		if !ok || k == "" || err != nil {
			return nil, &EnvError{EnvResourceAttributes, v, "key=value pairs, comma-separated, such as deployment.environment=prod,team=payments (values percent-encoded)"}
		}
		attrs = append(attrs, attribute.String(k, unescaped))
	}
	return attrs, nil
}
