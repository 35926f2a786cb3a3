package front

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	vregistryv1 "github.com/vregistry/vregistry/clients/go/gen/vregistry/v1"
)

// fakeResolver is the one fake of these tests: the gRPC answer. Upstreams are real httptest
// servers on 127.0.0.1.
type fakeResolver struct {
	mu    sync.Mutex
	paths []string
	// answer builds the reply for a path; the test's upstream URL goes into it.
	answer func(path string) (*vregistryv1.ResolveUpstreamResponse, error)
}

func (f *fakeResolver) ResolveUpstream(_ context.Context, registryID, path string, _ ...grpc.CallOption) (*vregistryv1.ResolveUpstreamResponse, error) {
	f.mu.Lock()
	f.paths = append(f.paths, registryID+" "+path)
	f.mu.Unlock()
	return f.answer(path)
}

// found answers every path with upstream "up" at baseURL, the way the service does: the URL of
// the path on the upstream, its headers, digest, media type and size.
func found(baseURL string, headers map[string]string, dgst, mediaType string, size int64) func(string) (*vregistryv1.ResolveUpstreamResponse, error) {
	return func(path string) (*vregistryv1.ResolveUpstreamResponse, error) {
		return &vregistryv1.ResolveUpstreamResponse{
			Upstream: &vregistryv1.Upstream{Id: "up", Position: 1, Url: baseURL},
			Url:      baseURL + "/v2/" + path, Headers: headers, Digest: dgst, MediaType: mediaType, Size: size,
		}, nil
	}
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// logBuffer is a concurrency-safe log sink with a JSON-lines reader.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// lines are the logged records whose msg is msg.
func (l *logBuffer) lines(t *testing.T, msg string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(l.String()), "\n") {
		if line == "" {
			continue
		}
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line is not JSON: %q", line)
		}
		if rec["msg"] == msg {
			out = append(out, rec)
		}
	}
	return out
}

// waitLines waits (boundedly) for n records of msg: the request line is written after the
// response went out, so a client can finish reading before it is logged.
func (l *logBuffer) waitLines(t *testing.T, msg string, n int) []map[string]any {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		got := l.lines(t, msg)
		if len(got) >= n || time.Now().After(deadline) {
			return got
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// newFront serves a Handler over the resolver on a loopback httptest server.
func newFront(t *testing.T, r Resolver) (*httptest.Server, *logBuffer) {
	t.Helper()
	logs := &logBuffer{}
	h := New(Config{RegistryID: "reg", Resolver: r, Logger: slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv, logs
}

func do(t *testing.T, method, url string, header http.Header) (*http.Response, []byte, error) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	return resp, body, err
}

// ociCode is the first error code of an OCI error body.
func ociCode(t *testing.T, body []byte) string {
	t.Helper()
	var b ociErrorBody
	if err := json.Unmarshal(body, &b); err != nil || len(b.Errors) == 0 {
		t.Fatalf("not an OCI error body: %q", body)
	}
	return b.Errors[0].Code
}
