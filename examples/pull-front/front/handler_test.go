package front

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const ociManifest = "application/vnd.oci.image.manifest.v1+json"

// registry is a real HTTP upstream on 127.0.0.1 serving fixed content per path, recording
// the Authorization and Accept it got.
type registry struct {
	srv        *httptest.Server
	auth       atomic.Value
	accept     atomic.Value
	content    map[string][]byte
	mediaType  string
	lieDigest  string // a Docker-Content-Digest to claim instead of the true one
	noLength   bool   // send chunked, without Content-Length
	shortBy    int    // claim a Content-Length this much larger than the body
	gets, head atomic.Int32
}

func newRegistry(t *testing.T, content map[string][]byte) *registry {
	t.Helper()
	r := &registry{content: content, mediaType: ociManifest}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *registry) serve(w http.ResponseWriter, req *http.Request) {
	r.auth.Store(req.Header.Get("Authorization"))
	r.accept.Store(req.Header.Get("Accept"))
	body, ok := r.content[req.URL.Path]
	if !ok {
		http.NotFound(w, req)
		return
	}
	if req.Method == http.MethodHead {
		r.head.Add(1)
	} else {
		r.gets.Add(1)
	}
	d := sha(body)
	if r.lieDigest != "" {
		d = r.lieDigest
	}
	w.Header().Set("Docker-Content-Digest", d)
	w.Header().Set("Content-Type", r.mediaType)
	if !r.noLength {
		w.Header().Set("Content-Length", strconv.Itoa(len(body)+r.shortBy))
	}
	w.WriteHeader(http.StatusOK)
	if req.Method == http.MethodGet {
		_, _ = w.Write(body)
		if r.noLength {
			w.(http.Flusher).Flush()
		}
	}
}

func blobURL(name string, content []byte) string { return "/v2/" + name + "/blobs/" + sha(content) }

func TestBlobStreamsWithHeaders(t *testing.T) {
	blob := bytes.Repeat([]byte("layer-"), 50_000) // 300 kB: several relay buffers
	up := newRegistry(t, map[string][]byte{blobURL("app", blob): blob})
	up.mediaType = "application/octet-stream"
	r := &fakeResolver{answer: found(up.srv.URL, map[string]string{"Authorization": "Bearer tok"}, sha(blob), "application/octet-stream", int64(len(blob)))}
	srv, logs := newFront(t, r)
	resp, body, err := do(t, http.MethodGet, srv.URL+blobURL("app", blob), nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || !bytes.Equal(body, blob) {
		t.Fatalf("got %d, %d bytes", resp.StatusCode, len(body))
	}
	if resp.Header.Get("Docker-Content-Digest") != sha(blob) || resp.ContentLength != int64(len(blob)) ||
		resp.Header.Get("Content-Type") != "application/octet-stream" {
		t.Fatalf("headers %v", resp.Header)
	}
	if up.auth.Load() != "Bearer tok" {
		t.Fatalf("the upstream got Authorization %q", up.auth.Load())
	}
	if r.paths[0] != "reg app/blobs/"+sha(blob) {
		t.Fatalf("resolved %v", r.paths)
	}
	lines := logs.waitLines(t, "request", 1)
	if len(lines) != 1 || lines[0]["status"] != 200.0 || lines[0]["bytes"] != float64(len(blob)) ||
		lines[0]["upstream_id"] != "up" || lines[0]["rpcs"] != 1.0 || lines[0]["position"] != 1.0 {
		t.Fatalf("request log %v", lines)
	}
	if strings.Contains(logs.String(), "Bearer tok") {
		t.Fatal("the token reached the log")
	}
}

func TestNoContentTypeIsNotSniffed(t *testing.T) {
	blob := []byte("<html>not a web page</html>")
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header()["Content-Type"] = nil
		_, _ = w.Write(blob)
	}))
	t.Cleanup(up.Close)
	srv, _ := newFront(t, &fakeResolver{answer: found(up.URL, nil, sha(blob), "", -1)})
	resp, body, err := do(t, http.MethodGet, srv.URL+blobURL("app", blob), nil)
	if err != nil || resp.StatusCode != 200 || string(body) != string(blob) {
		t.Fatalf("%v %v %q", err, resp, body)
	}
	if ct, ok := resp.Header["Content-Type"]; ok {
		t.Fatalf("Content-Type %q was made up", ct)
	}
}

func TestHeadHasNoBody(t *testing.T) {
	manifest := []byte(`{"schemaVersion":2}`)
	up := newRegistry(t, map[string][]byte{"/v2/app/manifests/v1": manifest})
	srv, _ := newFront(t, &fakeResolver{answer: found(up.srv.URL, nil, sha(manifest), ociManifest, int64(len(manifest)))})
	resp, body, err := do(t, http.MethodHead, srv.URL+"/v2/app/manifests/v1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || len(body) != 0 || resp.ContentLength != int64(len(manifest)) ||
		resp.Header.Get("Docker-Content-Digest") != sha(manifest) || resp.Header.Get("Content-Type") != ociManifest {
		t.Fatalf("got %d %q %v", resp.StatusCode, body, resp.Header)
	}
	if up.head.Load() != 1 || up.gets.Load() != 0 {
		t.Fatalf("upstream got %d HEAD, %d GET", up.head.Load(), up.gets.Load())
	}
}

func TestManifestAcceptFromClientElseService(t *testing.T) {
	manifest := []byte(`{"schemaVersion":2}`)
	up := newRegistry(t, map[string][]byte{"/v2/app/manifests/v1": manifest})
	service := map[string]string{"Accept": "application/vnd.service.list"}
	srv, _ := newFront(t, &fakeResolver{answer: found(up.srv.URL, service, sha(manifest), ociManifest, int64(len(manifest)))})
	client := http.Header{"Accept": {ociManifest + ", application/vnd.docker.distribution.manifest.v2+json", ociManifest, "*/*"}}
	if _, _, err := do(t, http.MethodGet, srv.URL+"/v2/app/manifests/v1", client); err != nil {
		t.Fatal(err)
	}
	if got := up.accept.Load(); got != ociManifest+", application/vnd.docker.distribution.manifest.v2+json" {
		t.Fatalf("client's Accept became %q", got)
	}
	if _, _, err := do(t, http.MethodGet, srv.URL+"/v2/app/manifests/v1", http.Header{"Accept": {"*/*"}}); err != nil {
		t.Fatal(err)
	}
	if got := up.accept.Load(); got != "application/vnd.service.list" {
		t.Fatalf("without a client list the upstream got %q", got)
	}
}

// getExpectingCut GETs url and returns what the client saw: an error, a short body, or
// (failing the test) the whole thing.
func getExpectingCut(t *testing.T, url string, full int) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		return // cut before the headers: fine, the client saw an error
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	if resp.StatusCode == 200 && err == nil && len(body) == full {
		t.Fatalf("the client got a complete 200 of %d bytes", len(body))
	}
	if resp.StatusCode == 200 && err == nil {
		t.Fatalf("short body of %d/%d bytes without a read error", len(body), full)
	}
}

func TestBlobDigestMismatchAbortsResponse(t *testing.T) {
	blob := bytes.Repeat([]byte("a"), 200_000)
	corrupt := bytes.Repeat([]byte("a"), 200_000)
	corrupt[150_000] = 'b'
	path := blobURL("app", blob)
	up := newRegistry(t, map[string][]byte{path: corrupt})
	up.lieDigest = sha(blob) // the stand-in claims the right digest and serves other bytes
	srv, logs := newFront(t, &fakeResolver{answer: found(up.srv.URL, nil, sha(blob), "", int64(len(blob)))})
	getExpectingCut(t, srv.URL+path, len(blob))
	errs := logs.waitLines(t, "digest mismatch", 1)
	if len(errs) != 1 || errs[0]["level"] != "ERROR" || errs[0]["upstream_id"] != "up" ||
		errs[0]["expected"] != sha(blob) || errs[0]["got"] != sha(corrupt) {
		t.Fatalf("mismatch log %v", errs)
	}
	if req := logs.waitLines(t, "request", 1); len(req) != 1 || req[0]["aborted"] != true {
		t.Fatalf("request log %v", req)
	}
}

func TestChunkedDigestMismatchAbortsResponse(t *testing.T) {
	blob := bytes.Repeat([]byte("c"), 100_000)
	corrupt := bytes.Repeat([]byte("d"), 100_000)
	path := blobURL("app", blob)
	up := newRegistry(t, map[string][]byte{path: corrupt})
	up.noLength = true
	up.lieDigest = sha(blob)
	srv, _ := newFront(t, &fakeResolver{answer: found(up.srv.URL, nil, sha(blob), "", -1)})
	getExpectingCut(t, srv.URL+path, len(blob))
}

func TestSmallMismatchIsAnswered502(t *testing.T) {
	// A body that fails before any byte went out (one relay buffer) gets a clean error.
	manifest := []byte(`{"schemaVersion":2}`)
	other := []byte(`{"schemaVersion":3}`)
	path := "/v2/app/manifests/" + sha(manifest)
	up := newRegistry(t, map[string][]byte{path: other})
	up.lieDigest = sha(manifest)
	srv, logs := newFront(t, &fakeResolver{answer: found(up.srv.URL, nil, sha(manifest), ociManifest, int64(len(manifest)))})
	resp, body, err := do(t, http.MethodGet, srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 502 || ociCode(t, body) != codeUnknown || len(logs.lines(t, "digest mismatch")) != 1 {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
}

func TestTagManifestCheckedAgainstResolvedDigest(t *testing.T) {
	manifest := []byte(`{"schemaVersion":2,"tag":"v1"}`)
	up := newRegistry(t, map[string][]byte{"/v2/app/manifests/v1": manifest})
	resolved := sha([]byte("what the service saw"))
	srv, logs := newFront(t, &fakeResolver{answer: found(up.srv.URL, nil, resolved, ociManifest, int64(len(manifest)))})
	resp, _, err := do(t, http.MethodGet, srv.URL+"/v2/app/manifests/v1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 502 || len(logs.lines(t, "digest mismatch")) != 1 {
		t.Fatalf("got %d, logs %s", resp.StatusCode, logs.String())
	}
}

func TestUpstreamClaimingOtherDigestIsRefused(t *testing.T) {
	blob := []byte("blob")
	path := blobURL("app", blob)
	up := newRegistry(t, map[string][]byte{path: blob})
	up.lieDigest = sha([]byte("another"))
	srv, _ := newFront(t, &fakeResolver{answer: found(up.srv.URL, nil, sha(blob), "", int64(len(blob)))})
	for _, m := range []string{http.MethodHead, http.MethodGet} {
		resp, _, err := do(t, m, srv.URL+path, nil)
		if err != nil || resp.StatusCode != 502 {
			t.Fatalf("%s: %v %v", m, err, resp)
		}
	}
}

func TestContentLengthShortOfClaimAborts(t *testing.T) {
	blob := bytes.Repeat([]byte("x"), 100_000)
	path := blobURL("app", blob)
	up := newRegistry(t, map[string][]byte{path: blob})
	up.shortBy = 10 // claims 10 bytes more than it sends, then closes
	srv, logs := newFront(t, &fakeResolver{answer: found(up.srv.URL, nil, sha(blob), "", -1)})
	getExpectingCut(t, srv.URL+path, len(blob)+10)
	if len(logs.waitLines(t, "upstream body failed", 1)) != 1 {
		t.Fatalf("logs %s", logs.String())
	}
}

func TestBlobSizeDifferentFromResolvedIsRefused(t *testing.T) {
	blob := []byte("twelve bytes")
	path := blobURL("app", blob)
	up := newRegistry(t, map[string][]byte{path: blob})
	srv, logs := newFront(t, &fakeResolver{answer: found(up.srv.URL, nil, sha(blob), "", 13)})
	resp, _, err := do(t, http.MethodGet, srv.URL+path, nil)
	if err != nil || resp.StatusCode != 502 || len(logs.lines(t, "content length mismatch")) != 1 {
		t.Fatalf("%v %v %s", err, resp, logs.String())
	}
}

func TestRelayLengthCheck(t *testing.T) {
	var out bytes.Buffer
	_, committed, err := relay(&out, strings.NewReader("12345"), expectation{length: 4}, func() {})
	var ce *contentError
	if !errors.As(err, &ce) || !errors.Is(err, errLength) || committed || out.Len() != 0 {
		t.Fatalf("longer than claimed: %v committed=%v wrote %d", err, committed, out.Len())
	}
	_, _, err = relay(&out, strings.NewReader("123"), expectation{length: 4}, func() {})
	if !errors.Is(err, errLength) {
		t.Fatalf("shorter than claimed: %v", err)
	}
}

func TestRedirectDropsAuthorization(t *testing.T) {
	blob := bytes.Repeat([]byte("s3"), 40_000)
	var storeAuth atomic.Value
	store := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		storeAuth.Store(r.Header.Get("Authorization") + "|" + r.URL.RawQuery)
		_, _ = w.Write(blob)
	}))
	t.Cleanup(store.Close)
	var upstreamAuth atomic.Value
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		upstreamAuth.Store(r.Header.Get("Authorization"))
		w.Header().Set("Location", store.URL+"/bucket/blob?X-Amz-Signature=presigned")
		w.WriteHeader(http.StatusTemporaryRedirect)
	}))
	t.Cleanup(up.Close)
	srv, logs := newFront(t, &fakeResolver{answer: found(up.URL, map[string]string{"Authorization": "Bearer upstream-token"}, sha(blob), "", -1)})
	resp, body, err := do(t, http.MethodGet, srv.URL+blobURL("app", blob), nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || !bytes.Equal(body, blob) || resp.Header.Get("Location") != "" {
		t.Fatalf("got %d, %d bytes, %v", resp.StatusCode, len(body), resp.Header)
	}
	if upstreamAuth.Load() != "Bearer upstream-token" {
		t.Fatalf("the upstream got %q", upstreamAuth.Load())
	}
	if storeAuth.Load() != "|X-Amz-Signature=presigned" {
		t.Fatalf("the blob store got %q", storeAuth.Load())
	}
	if strings.Contains(logs.String(), "presigned") {
		t.Fatal("the presigned URL reached the log")
	}
}

func TestRedirectLoopIs502(t *testing.T) {
	var loop *httptest.Server
	loop = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, loop.URL+r.URL.Path+"?again=x", http.StatusFound)
	}))
	t.Cleanup(loop.Close)
	srv, logs := newFront(t, &fakeResolver{answer: found(loop.URL, nil, goodDigest, "", -1)})
	resp, body, err := do(t, http.MethodGet, srv.URL+blobPath, nil)
	if err != nil || resp.StatusCode != 502 || ociCode(t, body) != codeUnknown {
		t.Fatalf("%v %v %q", err, resp, body)
	}
	if len(logs.lines(t, "upstream fetch failed")) != 1 || strings.Contains(logs.String(), "again=x") {
		t.Fatalf("logs %s", logs.String())
	}
}

func TestTagsListPassesPagination(t *testing.T) {
	var query atomic.Value
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		query.Store(r.URL.RawQuery)
		w.Header().Set("Link", `</v2/app/tags/list?last=b&n=2>; rel="next"`)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"name":"app","tags":["a","b"]}`))
	}))
	t.Cleanup(up.Close)
	r := &fakeResolver{answer: found(up.URL, nil, "", "", -1)}
	srv, _ := newFront(t, r)
	resp, body, err := do(t, http.MethodGet, srv.URL+"/v2/app/tags/list?n=2&last=a&evil=1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || string(body) != `{"name":"app","tags":["a","b"]}` || resp.Header.Get("Link") == "" {
		t.Fatalf("got %d %q %v", resp.StatusCode, body, resp.Header)
	}
	if query.Load() != "last=a&n=2" || r.paths[0] != "reg app/tags/list" {
		t.Fatalf("query %q, resolved %v", query.Load(), r.paths)
	}
}

// generated is a blob produced on the fly: the test holds none of it in memory either.
type generated struct{ left int64 }

func (g *generated) Read(p []byte) (int, error) {
	if g.left <= 0 {
		return 0, io.EOF
	}
	n := min(int64(len(p)), g.left)
	for i := range p[:n] {
		p[i] = byte(g.left - int64(i))
	}
	g.left -= n
	return int(n), nil
}

func TestLargeBlobStreamsInBoundedMemory(t *testing.T) {
	const size = 64 << 20
	h := sha256.New()
	if _, err := io.Copy(h, &generated{left: size}); err != nil {
		t.Fatal(err)
	}
	dgst := "sha256:" + hex.EncodeToString(h.Sum(nil))
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(size))
		w.Header().Set("Docker-Content-Digest", dgst)
		_, _ = io.Copy(w, &generated{left: size})
	}))
	t.Cleanup(up.Close)
	srv, _ := newFront(t, &fakeResolver{answer: found(up.URL, nil, dgst, "", size)})

	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	resp, err := http.Get(srv.URL + "/v2/app/blobs/" + dgst)
	if err != nil {
		t.Fatal(err)
	}
	got := sha256.New()
	n, err := io.Copy(got, resp.Body)
	_ = resp.Body.Close()
	runtime.ReadMemStats(&after)
	if err != nil || n != size || "sha256:"+hex.EncodeToString(got.Sum(nil)) != dgst {
		t.Fatalf("relayed %d bytes, %v", n, err)
	}
	// TotalAlloc counts every allocation of the relay, whatever the GC freed since: well
	// under the blob's size means no copy of it was ever held.
	allocated := after.TotalAlloc - before.TotalAlloc
	t.Logf("64 MiB blob relayed: %d KiB allocated in all, heap in use %d -> %d KiB",
		allocated>>10, before.HeapInuse>>10, after.HeapInuse>>10)
	if allocated > 8<<20 {
		t.Fatalf("relaying 64 MiB allocated %d MiB", allocated>>20)
	}
}

func TestShutdownLetsInFlightRequestFinish(t *testing.T) {
	blob := bytes.Repeat([]byte("z"), 1<<20)
	release := make(chan struct{})
	var releaseOnce sync.Once
	releaseAll := func() { releaseOnce.Do(func() { close(release) }) }
	started := make(chan struct{}, 1)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(blob)))
		_, _ = w.Write(blob[:1000])
		w.(http.Flusher).Flush()
		started <- struct{}{}
		<-release // the rest comes after the shutdown began
		_, _ = w.Write(blob[1000:])
	}))
	t.Cleanup(up.Close)
	t.Cleanup(releaseAll) // runs first: a failed test does not leave the upstream blocked
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := New(Config{RegistryID: "reg", Resolver: &fakeResolver{answer: found(up.URL, nil, sha(blob), "", int64(len(blob)))}})
	ctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- Serve(ctx, ln, h, 10*time.Second) }()

	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	fmt.Fprintf(conn, "GET /v2/app/blobs/%s HTTP/1.1\r\nHost: front\r\n\r\n", sha(blob))
	select {
	case <-started:
	case <-time.After(5 * time.Second):
		t.Fatal("the request did not reach the upstream")
	}
	stop() // SIGTERM, in main
	time.Sleep(100 * time.Millisecond)
	if _, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second); err == nil {
		t.Fatal("the front still accepts connections during shutdown")
	}
	select {
	case err := <-served:
		t.Fatalf("Serve returned %v with a request in flight", err)
	default:
	}
	releaseAll()
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil || !bytes.Equal(body, blob) {
		t.Fatalf("in-flight body: %d bytes, %v", len(body), err)
	}
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after the last request finished")
	}
}
