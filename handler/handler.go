// Package handler holds the handlers that do the user's work for the
// warren binary, each in a file of its own (log, noop, exec, http), and
// New, which picks one from the configuration: a new handler is one file
// and one case in New. The engine that feeds them and the contract they
// meet (worker.Handler, worker.Permanent, worker.RetryAfter) live in
// package worker.
package handler

import (
	"fmt"
	"os"

	"go.uber.org/zap"

	"github.com/warren-mq/warren/config"
	"github.com/warren-mq/warren/worker"
)

// New returns the handler that cfg.Handler names, set up from cfg: the
// exec command starts from warren's environment filtered by ExecEnv, and
// the HTTP handler's connection pool is sized to cfg.Concurrency. cfg is
// one that config.Load validated; the log handler, the default, takes any
// other kind.
func New(cfg *config.Config, logger *zap.Logger) worker.Handler {
	switch cfg.Handler {
	case config.HandlerNoop:
		return Noop()
	case config.HandlerExec:
		return &Exec{
			Command:       cfg.Exec.Command,
			DeadExitCodes: cfg.Exec.DeadExitCodes,
			Env:           ExecEnv(os.Environ(), cfg.Exec.Env),
			Logger:        logger.Named("exec"),
			ReplyMaxBytes: int64(cfg.Reply.MaxBytes),
			NoReply:       !cfg.Replies,
		}
	case config.HandlerHTTP:
		h := NewHTTP(cfg.HTTP.URL, cfg.Concurrency)
		h.DeadStatuses = cfg.HTTP.DeadStatuses
		h.ReplyMaxBytes = int64(cfg.Reply.MaxBytes)
		h.ReplyHeaders = cfg.HTTP.ReplyHeaders
		h.NoReply = !cfg.Replies
		return h
	}
	return Log(logger.Named("message"))
}

// DefaultReplyMaxBytes bounds a handler's answer to a request with
// reply_to when nothing else does (WARREN_REPLY_MAX_BYTES).
const DefaultReplyMaxBytes = 1 << 20

// replyTooLarge is the error of an answer over limit bytes: permanent,
// since handling the request again gives the same answer, and a
// truncated one would be wrong.
func replyTooLarge(limit int64) error {
	return worker.Permanent(fmt.Errorf("reply over WARREN_REPLY_MAX_BYTES (%d bytes)", limit))
}
