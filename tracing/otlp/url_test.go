package otlp

import (
	"testing"

	"github.com/warren-mq/warren/tracing"
)

func TestExportURL(t *testing.T) {
	tests := []struct {
		give tracing.Settings
		want string
	}{
		{tracing.Settings{Endpoint: "http://c:4318", Protocol: tracing.ProtocolHTTP}, "http://c:4318/v1/traces"},
		{tracing.Settings{Endpoint: "http://c:4318/", Protocol: tracing.ProtocolHTTP}, "http://c:4318/v1/traces"},
		{tracing.Settings{Endpoint: "https://c/otlp", Protocol: tracing.ProtocolHTTP}, "https://c/otlp/v1/traces"},
		{tracing.Settings{Endpoint: "https://c/custom/path", Protocol: tracing.ProtocolHTTP, WholeURL: true}, "https://c/custom/path"},
		{tracing.Settings{Endpoint: "http://c:4317", Protocol: tracing.ProtocolGRPC}, "http://c:4317"},
	}
	for _, tt := range tests {
		if got := exportURL(tt.give); got != tt.want {
			t.Errorf("exportURL(%+v) = %q, want %q", tt.give, got, tt.want)
		}
	}
}
