# warren — RabbitMQ worker daemon.
# `make` (or `make help`) lists the targets.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
GO      ?= go
GOFMT   ?= gofmt
BIN     := bin/warren
LDFLAGS := -s -w -X main.version=$(VERSION)

# Broker used by `make run` / `make test`. The recipes refer to them as
# $$WARREN_AMQP_URL so make never echoes a password into the terminal or CI log.
WARREN_AMQP_URL      ?= amqp://guest:guest@localhost:5672/
WARREN_TEST_AMQP_URL ?= $(WARREN_AMQP_URL)
export WARREN_AMQP_URL WARREN_TEST_AMQP_URL

# `make run` only: the worker with the default (console) log handler on a
# demo queue. Values from the environment or the command line win.
WARREN_QUEUE      ?= demo
WARREN_LOG_FORMAT ?= console

# The chart's tests live in their own Go module (Helm and the Kubernetes
# libraries stay out of the daemon's go.mod); their kube-apiserver is built
# from charts/test/kube-apiserver and cached in /var/cache/warren-test.
CHART_TEST := charts/test
# The dashboard and alerts evaluated by Prometheus's own engine: a module of
# its own again, so that github.com/prometheus/prometheus stays out of both.
# Without -race: its one test drives processes and has two goroutines of its
# own, and Prometheus built with the race detector costs minutes of CI.
OBSERVABILITY_TEST := $(CHART_TEST)/observability

# `make image`: the container image, tagged with the version.
IMAGE    ?= ghcr.io/warren-mq/warren
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)

.PHONY: help build broker run test chart-test dashboard cluster-test bench lint tidy-check image clean e2e e2e-keda

help: ## show this help
	@echo 'Usage: make <target>   (VERSION=$(VERSION))'
	@echo
	@awk 'BEGIN { FS = ":[^#]*## " } /^[a-zA-Z0-9_.-]+:[^=]*## / { printf "  %-12s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

build: ## build the static binary bin/warren (version from git describe)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/warren

broker: ## make sure a RabbitMQ broker answers at WARREN_AMQP_URL (starts a local one)
	scripts/broker-up.sh "$$WARREN_AMQP_URL"

run: build broker ## run the worker on queue WARREN_QUEUE (demo) with console logs
	env -u WARREN_TEST_AMQP_URL WARREN_QUEUE="$(WARREN_QUEUE)" WARREN_LOG_FORMAT="$(WARREN_LOG_FORMAT)" ./$(BIN)

test: ## bring the broker up, then go test -race ./... against WARREN_TEST_AMQP_URL, then the chart's tests, dashboard and alerts
	scripts/broker-up.sh "$$WARREN_TEST_AMQP_URL"
	$(GO) test -race -count=1 -p 2 -timeout 20m ./...
	cd $(CHART_TEST) && $(GO) test -race -count=1 -p 2 -timeout 30m ./...
	cd $(OBSERVABILITY_TEST) && $(GO) test -count=1 -timeout 15m ./...

chart-test: ## the chart's tests only: lint, render, install into a local kube-apiserver, run as the kubelet would; the dashboard and alerts
	scripts/broker-up.sh "$$WARREN_TEST_AMQP_URL"
	cd $(CHART_TEST) && $(GO) test -race -count=1 -p 2 -timeout 30m ./...
	cd $(OBSERVABILITY_TEST) && $(GO) test -count=1 -timeout 15m ./...

dashboard: ## the dashboard and alerts test; draws docs/dashboard.svg from its run
	scripts/broker-up.sh "$$WARREN_TEST_AMQP_URL"
	cd $(OBSERVABILITY_TEST) && $(GO) test -count=1 -timeout 15m -run '^TestDashboardAndAlerts$$' -update .

cluster-test: ## warren through the loss of any node of a 3-node cluster the tests start (root; WARREN_CLUSTER=short for CI's profile)
	WARREN_CLUSTER="$${WARREN_CLUSTER:-full}" $(GO) test -count=1 -v -p 1 -timeout 60m -run 'TestCluster$$' ./cluster/ ./internal/brokertest/

bench: build ## measure warren against reference consumers on the local broker; prints the table
	scripts/broker-up.sh "$$WARREN_TEST_AMQP_URL"
	@command -v amqp-consume >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q amqp-tools >/dev/null; } || \
		echo 'amqp-consume (Debian amqp-tools) missing: the exec comparison is skipped'
	@{ /usr/bin/python3 -c 'import pika' || python3 -c 'import pika'; } 2>/dev/null || \
		{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-pika >/dev/null; } || \
		echo 'python3-pika missing: the comparison with the pika tutorial is skipped'
	$(GO) run ./cmd/warren-bench -warren $(BIN) $(BENCHFLAGS)
	$(GO) test -run '^$$' -bench BenchmarkDrain -benchtime 100000x ./worker/

lint: ## fail if gofmt would change a .go file, then go vet (the daemon and the chart's tests)
	@echo '$(GOFMT) -l <git ls-files *.go>'
	@unformatted="$$(git ls-files -z --cached --others --exclude-standard -- '*.go' | xargs -0 -r $(GOFMT) -l)"; \
	if [ -n "$$unformatted" ]; then \
		echo 'gofmt -w needed on:'; echo "$$unformatted"; exit 1; \
	fi
	$(GO) vet ./...
	cd $(CHART_TEST) && $(GO) vet ./...
	cd $(OBSERVABILITY_TEST) && $(GO) vet ./...

tidy-check: ## fail if go mod tidy changes go.mod / go.sum (of every module)
	$(GO) mod tidy
	cd $(CHART_TEST) && $(GO) mod tidy
	cd $(OBSERVABILITY_TEST) && $(GO) mod tidy
	for m in kube-apiserver kube-controller-manager kube-scheduler keda; do (cd $(CHART_TEST)/$$m && $(GO) mod tidy) || exit 1; done
	git diff --exit-code go.mod go.sum $(CHART_TEST)/go.mod $(CHART_TEST)/go.sum $(OBSERVABILITY_TEST)/go.mod $(OBSERVABILITY_TEST)/go.sum $(CHART_TEST)/kube-*/go.mod $(CHART_TEST)/kube-*/go.sum $(CHART_TEST)/keda/go.mod $(CHART_TEST)/keda/go.sum

.PHONY: e2e
e2e: ## Kubernetes end to end (root): helm install, scale, roll, heal, uninstall on a test kubelet under load, on a broker node of its own; about 4 min (+8 cold)
	scripts/broker-up.sh "$$WARREN_TEST_AMQP_URL"
	cd $(CHART_TEST) && WARREN_E2E=1 $(GO) test -count=1 -v -timeout 30m -run '^TestE2E$$' ./e2e/

.PHONY: e2e-keda
e2e-keda: ## KEDA scales the chart on the queue (root): the real operator and adapter on the e2e control plane; from zero, out to max and back; amqp and http protocols; about 3 min (+10 cold build)
	scripts/broker-up.sh "$$WARREN_TEST_AMQP_URL"
	cd $(CHART_TEST) && WARREN_E2E=1 WARREN_E2E_KEDA=1 $(GO) test -count=1 -v -timeout 30m -run '^TestKEDA' ./e2e/

.PHONY: chaos chaos-short
chaos: ## the fault suite, full profile (root, rabbitmq-server): 3 warren processes through broker restarts, kills, stalls; about 5 min
	WARREN_CHAOS=full $(GO) test -count=1 -v -timeout 30m -run '^TestChaos$$' ./chaos/

chaos-short: ## the fault suite's CI profile, about 3 min
	WARREN_CHAOS=short $(GO) test -count=1 -v -timeout 20m -run '^TestChaos$$' ./chaos/

image: ## build the container image IMAGE:VERSION with docker (needs a daemon that can pull the base images)
	docker build --build-arg VERSION="$(VERSION)" --build-arg REVISION="$(REVISION)" -t "$(IMAGE):$(VERSION)" .

clean: ## remove bin/
	rm -rf bin/
