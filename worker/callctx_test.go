package worker

import (
	"context"
	"errors"
	"runtime"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"
)

type ctxKey struct{}

func TestCallContext(t *testing.T) {
	const timeout = 50 * time.Millisecond
	tests := []struct {
		name string
		// use does what a handler does with ctx and returns the error the
		// context must end with; release is called after it.
		use     func(t *testing.T, ctx context.Context, cancelParent func()) error
		wantErr error
	}{
		{
			name: "unused, then looked at after the call",
			use: func(t *testing.T, ctx context.Context, _ func()) error {
				if d, ok := ctx.Deadline(); !ok || time.Until(d) > timeout || time.Until(d) < timeout/2 {
					t.Errorf("Deadline() = %v, %v; want about %v from now", d, ok, timeout)
				}
				return nil
			},
			wantErr: context.Canceled,
		},
		{
			name: "waits past the timeout",
			use: func(t *testing.T, ctx context.Context, _ func()) error {
				waitDone(t, ctx, "5 s after a 50 ms timeout")
				return ctx.Err()
			},
			wantErr: context.DeadlineExceeded,
		},
		{
			name: "parent cancelled during the call",
			use: func(t *testing.T, ctx context.Context, cancelParent func()) error {
				cancelParent()
				waitDone(t, ctx, "after the parent was cancelled")
				return ctx.Err()
			},
			wantErr: context.Canceled,
		},
		{
			name: "a derived context ends with the call",
			use: func(t *testing.T, ctx context.Context, _ func()) error {
				child, cancel := context.WithCancel(ctx)
				defer cancel()
				if child.Value(ctxKey{}) != "v" {
					t.Error("a derived context lost the parent's value")
				}
				if err := child.Err(); err != nil {
					t.Errorf("derived context ended early: %v", err)
				}
				return nil
			},
			wantErr: context.Canceled,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			parent, cancelParent := context.WithCancel(context.WithValue(context.Background(), ctxKey{}, "v"))
			defer cancelParent()
			c := newCallContext(parent, timeout)
			if err := tt.use(t, c, cancelParent); err != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("during the call: Err() = %v, want %v", err, tt.wantErr)
			}
			c.release()
			select {
			case <-c.Done():
			default:
				t.Fatal("Done not closed after release")
			}
			if err := c.Err(); !errors.Is(err, tt.wantErr) {
				t.Errorf("after release: Err() = %v, want %v", err, tt.wantErr)
			}
			if c.Value(ctxKey{}) != "v" {
				t.Error("the parent's value is lost")
			}
		})
	}
}

func waitDone(t *testing.T, ctx context.Context, when string) {
	t.Helper()
	select {
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed " + when)
	}
}

func TestCallContextDeadlineIsTheSooner(t *testing.T) {
	parent, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	want, _ := parent.Deadline()
	c := newCallContext(parent, time.Hour)
	defer c.release()
	if d, _ := c.Deadline(); !d.Equal(want) {
		t.Errorf("Deadline() = %v, want the parent's %v", d, want)
	}
}

// Contexts derived from a call's context, as net/http derives them for a
// request, are cancelled through the context package's own bookkeeping,
// not by a goroutine each.
func TestCallContextDerivedWithoutGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	var cs []*callContext
	for range 100 {
		c := newCallContext(context.Background(), time.Minute)
		_, cancel := context.WithCancel(c)
		defer cancel()
		stop := context.AfterFunc(c, func() {})
		defer stop()
		cs = append(cs, c)
	}
	if n := runtime.NumGoroutine() - before; n > 10 {
		t.Errorf("%d goroutines more for 100 derived contexts", n)
	}
	for _, c := range cs {
		c.release()
	}
}

// The attempt's span reaches the handler through its context, as
// trace.SpanFromContext finds it, before and after the context is made
// for real, and in contexts derived from it.
func TestCallContextCarriesTheSpan(t *testing.T) {
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID:    trace.TraceID{1, 2, 3},
		SpanID:     trace.SpanID{4, 5, 6},
		TraceFlags: trace.FlagsSampled,
	})
	c := newCallContext(trace.ContextWithSpanContext(context.Background(), sc), time.Minute)
	if got := trace.SpanContextFromContext(c); !got.Equal(sc) {
		t.Errorf("SpanContextFromContext(call) = %v, want %v", got, sc)
	}
	child, cancel := context.WithCancel(c)
	defer cancel()
	if got := trace.SpanFromContext(child).SpanContext(); !got.Equal(sc) {
		t.Errorf("SpanFromContext(derived) = %v, want %v", got, sc)
	}
	c.release()
	if got := trace.SpanContextFromContext(c); !got.Equal(sc) {
		t.Errorf("after release: SpanContextFromContext = %v, want %v", got, sc)
	}
}
