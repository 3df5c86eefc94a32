package main

import (
	"debug/buildinfo"
	"strings"
	"testing"
)

// TestBinaryLeavesOutTestDependencies: the modules that only tests use
// (the CloudEvents Go SDK, which plays the endpoint of the http handler's
// CloudEvents tests, and goleak) are not in the daemon's binary.
func TestBinaryLeavesOutTestDependencies(t *testing.T) {
	info, err := buildinfo.ReadFile(binary)
	if err != nil {
		t.Fatalf("read build info of %s: %v", binary, err)
	}
	if len(info.Deps) == 0 {
		t.Fatalf("build info of %s lists no modules", binary)
	}
	for _, d := range info.Deps {
		for _, testOnly := range []string{"github.com/cloudevents/", "github.com/json-iterator/", "go.uber.org/goleak"} {
			if strings.HasPrefix(d.Path, testOnly) {
				t.Errorf("the binary holds %s %s, a module only tests use", d.Path, d.Version)
			}
		}
	}
}
