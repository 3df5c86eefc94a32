package chaos

import (
	"strings"
	"testing"

	"github.com/warren-mq/warren/internal/warrentest"
)

// buildWarren builds the binary as the Makefile does (no race detector:
// the suite measures what users run) and returns its path.
func buildWarren(t *testing.T) string {
	t.Helper()
	bin, err := warrentest.Build(t.TempDir(), "../cmd/warren", []string{"CGO_ENABLED=0"}, "-trimpath")
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// newReplica prepares a warren process, as a pod of a Deployment, whose
// probes, metrics and /proc files go to seen for the secret check.
func newReplica(t *testing.T, name, bin string, env []string, seen *warrentest.Captures) *warrentest.Process {
	t.Helper()
	return warrentest.NewProcess(t, warrentest.ProcessConfig{Name: name, Binary: bin, Seen: seen,
		Env: append(env, "WARREN_CONNECTION_NAME=chaos-"+name)})
}

// connectionsLost counts the connections and channels replica r lost,
// over all its runs, from its logs.
func connectionsLost(r *warrentest.Process) int {
	out := r.Out.String()
	return strings.Count(out, `"msg":"connection lost"`) + strings.Count(out, `"msg":"channel closed, opening a new one"`)
}
