// Command kube-scheduler is the Kubernetes scheduler, built from the
// k8s.io/kubernetes module so the end-to-end tests bind pods to the test
// kubelet's node with the real scheduler. The version is pinned in this
// directory's go.mod.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-scheduler/app"
)

func main() {
	os.Exit(cli.Run(app.NewSchedulerCommand()))
}
