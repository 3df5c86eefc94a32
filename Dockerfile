# syntax=docker/dockerfile:1
#
# warren's container image: the static binary on distroless, as UID 65532.
#
#   make image                      # docker build --build-arg VERSION=$(git describe) -t warren:VERSION .
#
# Base images are pinned by tag; pin them by digest too (@sha256:...) where
# your registry policy asks for it. charts/test checks this file: its stages,
# the non-root user, and that the build command is the Makefile's.

# GO_VERSION follows the go directive of go.mod.
ARG GO_VERSION=1.26.8

FROM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
# Modules first, so this layer is reused until go.mod or go.sum changes.
COPY go.mod go.sum ./
RUN go mod download && go mod verify
COPY . .
# VERSION ends up in `warren version` and the warren_build_info metric.
ARG VERSION=dev
# The command of `make build`, word for word.
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o bin/warren ./cmd/warren

# static-debian12:nonroot: CA certificates, tzdata and /etc/passwd with the
# nonroot user (65532); no shell, no package manager.
FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="warren" \
      org.opencontainers.image.description="RabbitMQ worker daemon for Kubernetes: consumes one queue and hands each message to a command, an HTTP endpoint or Go code" \
      org.opencontainers.image.source="https://github.com/warren-mq/warren" \
      org.opencontainers.image.url="https://github.com/warren-mq/warren" \
      org.opencontainers.image.documentation="https://github.com/warren-mq/warren#readme" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="gcr.io/distroless/static-debian12:nonroot"
COPY --from=build /src/bin/warren /usr/local/bin/warren
# Numeric, so the kubelet can check runAsNonRoot without reading /etc/passwd.
USER 65532:65532
# /livez, /readyz and /metrics (WARREN_HEALTH_ADDR).
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/warren"]
CMD ["run"]
