package handler

import (
	"context"

	"github.com/warren-mq/warren/worker"
)

// Noop returns a handler that acks every message at once, to measure what
// warren itself costs.
func Noop() worker.Handler {
	return worker.HandlerFunc(func(context.Context, *worker.Message) error { return nil })
}
