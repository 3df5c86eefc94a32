// Command kube-controller-manager is the Kubernetes controller manager,
// built from the k8s.io/kubernetes module so the end-to-end tests run
// Deployments, ReplicaSets, endpoints and disruption budgets with the real
// controllers. The version is pinned in this directory's go.mod.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-controller-manager/app"
)

func main() {
	os.Exit(cli.Run(app.NewControllerManagerCommand()))
}
