// Command kube-apiserver is the Kubernetes API server, built from the
// k8s.io/kubernetes module so the chart tests can install into a real API
// server without a container runtime or a download from outside the Go
// module proxy. The version is pinned in this directory's go.mod.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	os.Exit(cli.Run(app.NewAPIServerCommand()))
}
