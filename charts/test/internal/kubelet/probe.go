package kubelet

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// probe runs the container's probes for one start, as the kubelet does:
// the startup probe first (the others wait for it), then liveness and
// readiness side by side, each with its initial delay, period, timeout and
// thresholds. A failed startup or liveness probe asks run for a restart;
// readiness sets the container's Ready.
func (c *container) probe(ctx context.Context, p *process) {
	if pr := c.spec.StartupProbe; pr != nil {
		ok := c.loop(ctx, p, pr, func(success bool, succ, fail int32) bool {
			if success {
				c.mu.Lock()
				c.started = true
				c.mu.Unlock()
				c.w.changed()
				return false
			}
			if fail >= threshold(pr.FailureThreshold, 3) {
				c.restart("startup probe failed")
				return false
			}
			return true
		})
		if !ok {
			return
		}
		c.mu.Lock()
		started := c.started
		c.mu.Unlock()
		if !started {
			return
		}
	}
	if c.spec.ReadinessProbe == nil {
		c.setReady(true)
	}
	var wg sync.WaitGroup
	if pr := c.spec.LivenessProbe; pr != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.loop(ctx, p, pr, func(success bool, succ, fail int32) bool {
				if fail >= threshold(pr.FailureThreshold, 3) {
					c.restart("liveness probe failed")
					return false
				}
				return true
			})
		}()
	}
	if pr := c.spec.ReadinessProbe; pr != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.loop(ctx, p, pr, func(success bool, succ, fail int32) bool {
				switch {
				case success && succ >= threshold(pr.SuccessThreshold, 1):
					c.setReady(true)
				case !success && fail >= threshold(pr.FailureThreshold, 3):
					c.setReady(false)
				}
				return true
			})
		}()
	}
	wg.Wait()
}

// loop runs pr after its initial delay (from the process's start) and then
// every period, calling next with the result and the counts of consecutive
// successes and failures, until next returns false (loop returns true) or
// ctx ends or the process exits (false).
func (c *container) loop(ctx context.Context, p *process, pr *corev1.Probe, next func(success bool, succ, fail int32) bool) bool {
	wait := time.Until(p.started.Add(time.Duration(pr.InitialDelaySeconds) * time.Second))
	period := time.Duration(threshold(pr.PeriodSeconds, 10)) * time.Second
	var succ, fail int32
	for {
		select {
		case <-ctx.Done():
			return false
		case <-p.done:
			return false
		case <-time.After(wait):
		}
		wait = period
		if err := c.check(ctx, pr); err != nil {
			succ, fail = 0, fail+1
			if !next(false, succ, fail) {
				return true
			}
			continue
		}
		succ, fail = succ+1, 0
		if !next(true, succ, fail) {
			return true
		}
	}
}

func threshold(v, def int32) int32 {
	if v <= 0 {
		return def
	}
	return v
}

// check runs one httpGet probe against the pod's address, from the host
// as the kubelet does. 200 to 399 pass.
func (c *container) check(ctx context.Context, pr *corev1.Probe) error {
	h := pr.HTTPGet
	if h == nil {
		return fmt.Errorf("only httpGet probes are supported")
	}
	port := h.Port.IntValue()
	if port == 0 {
		for _, p := range c.spec.Ports {
			if p.Name == h.Port.StrVal {
				port = int(p.ContainerPort)
			}
		}
	}
	if port == 0 {
		return fmt.Errorf("probe port %s: no such container port", h.Port.String())
	}
	host := h.Host
	if host == "" {
		host = c.ip
	}
	scheme := "http"
	if h.Scheme == corev1.URISchemeHTTPS {
		scheme = "https"
	}
	timeout := time.Duration(threshold(pr.TimeoutSeconds, 1)) * time.Second
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	url := scheme + "://" + net.JoinHostPort(host, strconv.Itoa(port)) + h.Path
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("User-Agent", "kube-probe/1.34")
	for _, hd := range h.HTTPHeaders {
		req.Header.Set(hd.Name, hd.Value)
	}
	resp, err := c.w.k.probes.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 10<<10))
	if resp.StatusCode < 200 || resp.StatusCode >= 400 {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return nil
}

func (c *container) setReady(ready bool) {
	c.mu.Lock()
	changed := c.ready != ready
	c.ready = ready
	c.mu.Unlock()
	if changed {
		c.w.changed()
	}
}

func (c *container) restart(why string) {
	select {
	case c.failed <- why:
	default:
	}
}
