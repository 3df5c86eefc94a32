package handler

import (
	"context"
	"unicode/utf8"

	"go.uber.org/zap"

	"github.com/warren-mq/warren/worker"
)

// previewBytes is how much of a body the log handler shows.
const previewBytes = 256

// Log returns a handler that logs a summary of each message at info
// level and acks it: the default, to see warren work before wiring it to
// real code.
func Log(log *zap.Logger) worker.Handler {
	return worker.HandlerFunc(func(_ context.Context, m *worker.Message) error {
		preview := m.Body
		if len(preview) > previewBytes {
			preview = preview[:previewBytes]
		}
		body := zap.ByteString("body", preview)
		if !utf8.Valid(preview) {
			body = zap.Binary("body", preview)
		}
		log.Info("message",
			zap.String("message_id", m.MessageID),
			zap.String("exchange", m.Exchange),
			zap.String("routing_key", m.RoutingKey),
			zap.String("content_type", m.ContentType),
			zap.Bool("redelivered", m.Redelivered),
			zap.Int("attempt", m.Attempt),
			zap.Int("headers", len(m.Headers)),
			zap.Int("size", len(m.Body)),
			body)
		return nil
	})
}
