// Package otlptest is an OTLP trace receiver for tests and benchmarks: a
// gRPC TraceService and an HTTP /v1/traces handler, both decoding the
// protobuf requests an exporter sends, as a collector would, and keeping
// the spans in a form tests compare easily.
package otlptest

import (
	"compress/gzip"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
)

// Span is one received span.
type Span struct {
	Name         string
	TraceID      string // hex
	SpanID       string // hex
	ParentSpanID string // hex; empty for a root span
	Kind         tracepb.Span_SpanKind
	Attrs        map[string]string // values as text
	StatusCode   tracepb.Status_StatusCode
	Status       string
	Links        []Link
	Resource     map[string]string // the resource's attributes
	Protocol     string            // "grpc" or "http/protobuf": how it came
}

// Link is a link of a span to another.
type Link struct{ TraceID, SpanID string }

// Receiver takes OTLP trace exports over gRPC and HTTP until Close.
type Receiver struct {
	coltracepb.UnimplementedTraceServiceServer

	discard bool // keep only the count of the spans

	grpcLn, httpLn net.Listener
	grpcSrv        *grpc.Server
	httpSrv        *http.Server
	wg             sync.WaitGroup

	mu      sync.Mutex
	spans   []Span
	count   int
	changed chan struct{} // closed and replaced at each export
}

// Start listens on two loopback ports, one for each protocol, and serves
// until Close, keeping every span.
func Start() (*Receiver, error) { return start(false) }

// New starts a receiver for tb, closed when tb ends; it fails tb if the
// receiver cannot listen.
func New(tb testing.TB) *Receiver {
	tb.Helper()
	r, err := Start()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(r.Close)
	return r
}

// StartCounting is Start for a benchmark's sink: it keeps only the count
// of the spans.
func StartCounting() (*Receiver, error) { return start(true) }

func start(discard bool) (*Receiver, error) {
	r := &Receiver{changed: make(chan struct{}), discard: discard}
	var err error
	if r.grpcLn, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		return nil, fmt.Errorf("listen for otlp grpc: %w", err)
	}
	if r.httpLn, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		r.grpcLn.Close()
		return nil, fmt.Errorf("listen for otlp http: %w", err)
	}
	r.grpcSrv = grpc.NewServer()
	coltracepb.RegisterTraceServiceServer(r.grpcSrv, r)
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/traces", r.serveHTTP)
	r.httpSrv = &http.Server{Handler: mux}
	r.wg.Add(2)
	go func() {
		defer r.wg.Done()
		_ = r.grpcSrv.Serve(r.grpcLn)
	}()
	go func() {
		defer r.wg.Done()
		_ = r.httpSrv.Serve(r.httpLn)
	}()
	return r, nil
}

// Close stops both servers, closing their connections, and waits for
// them.
func (r *Receiver) Close() {
	r.grpcSrv.Stop()
	_ = r.httpSrv.Close()
	r.wg.Wait()
}

// Endpoint returns the value of OTEL_EXPORTER_OTLP_ENDPOINT for protocol
// ("grpc" or "http/protobuf").
func (r *Receiver) Endpoint(protocol string) string {
	if protocol == "grpc" {
		return "http://" + r.grpcLn.Addr().String()
	}
	return "http://" + r.httpLn.Addr().String()
}

// Env returns the variables that point an exporter at r over protocol.
func (r *Receiver) Env(protocol string) []string {
	return []string{"OTEL_EXPORTER_OTLP_ENDPOINT=" + r.Endpoint(protocol), "OTEL_EXPORTER_OTLP_PROTOCOL=" + protocol}
}

// Export is the gRPC TraceService's method.
func (r *Receiver) Export(_ context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	r.add(req, "grpc")
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

// serveHTTP decodes a protobuf export request, gzipped or not, as OTLP
// over HTTP sends it.
func (r *Receiver) serveHTTP(w http.ResponseWriter, req *http.Request) {
	if ct := req.Header.Get("Content-Type"); ct != "application/x-protobuf" {
		http.Error(w, "content type "+ct+": want application/x-protobuf", http.StatusUnsupportedMediaType)
		return
	}
	var body io.Reader = req.Body
	if req.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(req.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		defer zr.Close()
		body = zr
	}
	b, err := io.ReadAll(body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var msg coltracepb.ExportTraceServiceRequest
	if err := proto.Unmarshal(b, &msg); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	r.add(&msg, "http/protobuf")
	out, err := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/x-protobuf")
	_, _ = w.Write(out)
}

func (r *Receiver) add(req *coltracepb.ExportTraceServiceRequest, protocol string) {
	var got []Span
	n := 0
	for _, rs := range req.GetResourceSpans() {
		res := attrs(rs.GetResource().GetAttributes())
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				n++
				if r.discard {
					continue
				}
				sp := Span{
					Name:         s.GetName(),
					TraceID:      hex.EncodeToString(s.GetTraceId()),
					SpanID:       hex.EncodeToString(s.GetSpanId()),
					ParentSpanID: hex.EncodeToString(s.GetParentSpanId()),
					Kind:         s.GetKind(),
					Attrs:        attrs(s.GetAttributes()),
					StatusCode:   s.GetStatus().GetCode(),
					Status:       s.GetStatus().GetMessage(),
					Resource:     res,
					Protocol:     protocol,
				}
				for _, l := range s.GetLinks() {
					sp.Links = append(sp.Links, Link{TraceID: hex.EncodeToString(l.GetTraceId()), SpanID: hex.EncodeToString(l.GetSpanId())})
				}
				got = append(got, sp)
			}
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.spans = append(r.spans, got...)
	r.count += n
	close(r.changed)
	r.changed = make(chan struct{})
}

// attrs turns OTLP attributes into text values.
func attrs(kvs []*commonpb.KeyValue) map[string]string {
	m := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		v := kv.GetValue()
		var s string
		switch x := v.GetValue().(type) {
		case *commonpb.AnyValue_StringValue:
			s = x.StringValue
		case *commonpb.AnyValue_IntValue:
			s = strconv.FormatInt(x.IntValue, 10)
		case *commonpb.AnyValue_BoolValue:
			s = strconv.FormatBool(x.BoolValue)
		case *commonpb.AnyValue_DoubleValue:
			s = strconv.FormatFloat(x.DoubleValue, 'g', -1, 64)
		default:
			s = v.String()
		}
		m[kv.GetKey()] = s
	}
	return m
}

// Spans returns the spans received so far, in the order they came.
func (r *Receiver) Spans() []Span {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.spans)
}

// Count returns how many spans were received, kept or not.
func (r *Receiver) Count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.count
}

// Named returns the spans received so far whose name is name.
func (r *Receiver) Named(name string) []Span {
	var out []Span
	for _, s := range r.Spans() {
		if s.Name == name {
			out = append(out, s)
		}
	}
	return out
}

// SortBy sorts spans by the value of their attribute key, as text (the
// attempts of one message: "1", "2", ...).
func SortBy(spans []Span, key string) {
	slices.SortStableFunc(spans, func(a, b Span) int { return strings.Compare(a.Attrs[key], b.Attrs[key]) })
}

// ErrTimeout is returned by Wait when ctx ends first.
var ErrTimeout = errors.New("otlptest: spans not received in time")

// Wait waits until cond holds for the spans received, or ctx ends.
func (r *Receiver) Wait(ctx context.Context, cond func([]Span) bool) error {
	for {
		r.mu.Lock()
		ok := cond(r.spans)
		changed := r.changed
		r.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ErrTimeout
		}
	}
}
