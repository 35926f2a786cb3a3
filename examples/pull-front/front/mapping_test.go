package front

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"

	vregistryv1 "github.com/vregistry/vregistry/clients/go/gen/vregistry/v1"
)

// serviceError is a status as vregistry-server sends it: ErrorInfo, the attempts, RetryInfo.
func serviceError(t *testing.T, code codes.Code, reason string, retry time.Duration, attempts ...*vregistryv1.UpstreamAttempt) error {
	t.Helper()
	st := status.New(code, "service says "+strings.ToLower(code.String()))
	var details []protoadapt.MessageV1
	if reason != "" {
		details = append(details, &errdetails.ErrorInfo{Reason: reason, Domain: "vregistry.dev"})
	}
	if len(attempts) > 0 {
		details = append(details, &vregistryv1.ResolveUpstreamFailure{Attempts: attempts})
	}
	if retry > 0 {
		details = append(details, &errdetails.RetryInfo{RetryDelay: durationpb.New(retry)})
	}
	if len(details) > 0 {
		var err error
		if st, err = st.WithDetails(details...); err != nil {
			t.Fatal(err)
		}
	}
	return st.Err()
}

func attempt(id string, pos int32, outcome vregistryv1.AttemptOutcome, httpStatus, retryAfter int32) *vregistryv1.UpstreamAttempt {
	return &vregistryv1.UpstreamAttempt{UpstreamId: id, Position: pos, Outcome: outcome, HttpStatus: httpStatus, RetryAfterSeconds: retryAfter}
}

const (
	outNotFound    = vregistryv1.AttemptOutcome_ATTEMPT_OUTCOME_NOT_FOUND
	outUnavailable = vregistryv1.AttemptOutcome_ATTEMPT_OUTCOME_UNAVAILABLE
	outLimited     = vregistryv1.AttemptOutcome_ATTEMPT_OUTCOME_RATE_LIMITED
	outAuthFailed  = vregistryv1.AttemptOutcome_ATTEMPT_OUTCOME_AUTH_FAILED
)

const (
	manifestPath = "/v2/app/manifests/v1"
	blobPath     = "/v2/app/blobs/" + goodDigest
	tagsPath     = "/v2/app/tags/list"
)

// checkResolveRow sends GET and HEAD of path to a front whose resolve fails with err, and
// checks the status, the OCI code, Retry-After, the JSON content type, and that HEAD has no body.
func checkResolveRow(t *testing.T, path string, err error, wantStatus int, wantCode, wantRetryAfter string) {
	t.Helper()
	srv, _ := newFront(t, &fakeResolver{answer: func(string) (*vregistryv1.ResolveUpstreamResponse, error) { return nil, err }})
	resp, body, herr := do(t, http.MethodGet, srv.URL+path, nil)
	if herr != nil {
		t.Fatal(herr)
	}
	if resp.StatusCode != wantStatus || ociCode(t, body) != wantCode || resp.Header.Get("Retry-After") != wantRetryAfter {
		t.Fatalf("got %d %q Retry-After %q; want %d %s %q", resp.StatusCode, body, resp.Header.Get("Retry-After"), wantStatus, wantCode, wantRetryAfter)
	}
	if resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("content type %q", resp.Header.Get("Content-Type"))
	}
	var parsed ociErrorBody
	_ = json.Unmarshal(body, &parsed)
	if !strings.HasPrefix(parsed.Errors[0].Message, "service says") {
		t.Fatalf("the service's message is not passed on: %q", body)
	}
	resp, body, herr = do(t, http.MethodHead, srv.URL+path, nil)
	if herr != nil || resp.StatusCode != wantStatus || len(body) != 0 {
		t.Fatalf("HEAD: %v %d %q", herr, resp.StatusCode, body)
	}
}

func TestMapNotFoundOnUpstreamsManifest(t *testing.T) {
	err := serviceError(t, codes.NotFound, "NOT_FOUND_ON_UPSTREAMS", 0, attempt("a", 1, outNotFound, 404, 0))
	checkResolveRow(t, manifestPath, err, 404, codeManifestUnknown, "")
}

func TestMapNotFoundOnUpstreamsBlob(t *testing.T) {
	err := serviceError(t, codes.NotFound, "NOT_FOUND_ON_UPSTREAMS", 0, attempt("a", 1, outNotFound, 404, 0))
	checkResolveRow(t, blobPath, err, 404, codeBlobUnknown, "")
}

func TestMapNotFoundOnUpstreamsTags(t *testing.T) {
	err := serviceError(t, codes.NotFound, "NOT_FOUND_ON_UPSTREAMS", 0, attempt("a", 1, outNotFound, 404, 0))
	checkResolveRow(t, tagsPath, err, 404, codeNameUnknown, "")
}

func TestMapRegistryNotFoundIs502(t *testing.T) {
	checkResolveRow(t, manifestPath, serviceError(t, codes.NotFound, "REGISTRY_NOT_FOUND", 0), 502, codeUnknown, "")
}

func TestMapInvalidPathIs400NameInvalid(t *testing.T) {
	checkResolveRow(t, manifestPath, serviceError(t, codes.InvalidArgument, "INVALID_PATH", 0), 400, codeNameInvalid, "")
}

func TestMapInvalidArgumentIs502(t *testing.T) {
	checkResolveRow(t, manifestPath, serviceError(t, codes.InvalidArgument, "INVALID_ARGUMENT", 0), 502, codeUnknown, "")
}

func TestMapUnreachableIs503WithRetryInfo(t *testing.T) {
	err := serviceError(t, codes.Unavailable, "UPSTREAM_UNREACHABLE", 3*time.Second, attempt("a", 1, outUnavailable, 0, 0))
	checkResolveRow(t, manifestPath, err, 503, codeUnavailable, "3")
}

func TestMapUnreachableWithoutRetryInfoHasNoRetryAfter(t *testing.T) {
	err := serviceError(t, codes.Unavailable, "UPSTREAM_UNREACHABLE", 0, attempt("a", 1, outUnavailable, 502, 0))
	checkResolveRow(t, blobPath, err, 503, codeUnavailable, "")
}

func TestMapAllRateLimitedIs429WithAttemptsRetryAfter(t *testing.T) {
	err := serviceError(t, codes.Unavailable, "UPSTREAM_UNREACHABLE", 0,
		attempt("a", 1, outNotFound, 404, 0), attempt("b", 2, outLimited, 429, 7), attempt("c", 3, outLimited, 429, 4))
	checkResolveRow(t, manifestPath, err, 429, codeTooManyRequests, "7")
}

func TestMapRateLimitedReasonIs429WithRetryInfo(t *testing.T) {
	err := serviceError(t, codes.Unavailable, "UPSTREAM_RATE_LIMITED", 2500*time.Millisecond)
	checkResolveRow(t, blobPath, err, 429, codeTooManyRequests, "3")
}

func TestMapRateLimitedAndUnavailableIs503(t *testing.T) {
	err := serviceError(t, codes.Unavailable, "UPSTREAM_UNREACHABLE", 0,
		attempt("a", 1, outUnavailable, 0, 0), attempt("b", 2, outLimited, 429, 7))
	checkResolveRow(t, manifestPath, err, 503, codeUnavailable, "7")
}

func TestMapResourceExhaustedIs429(t *testing.T) {
	checkResolveRow(t, manifestPath, serviceError(t, codes.ResourceExhausted, "", 5*time.Second), 429, codeTooManyRequests, "5")
}

func TestMapServiceUnreachableIs503(t *testing.T) {
	// What the client reports when vregistry-server itself cannot be reached: no reason.
	checkResolveRow(t, manifestPath, serviceError(t, codes.Unavailable, "", 0), 503, codeUnavailable, "")
}

func TestMapCredentialsRejectedIs502(t *testing.T) {
	err := serviceError(t, codes.FailedPrecondition, "UPSTREAM_CREDENTIALS_REJECTED", 0, attempt("a", 1, outAuthFailed, 401, 0))
	checkResolveRow(t, manifestPath, err, 502, codeUnknown, "")
}

func TestMapCredentialsUnreadableIs502(t *testing.T) {
	checkResolveRow(t, blobPath, serviceError(t, codes.FailedPrecondition, "CREDENTIALS_UNREADABLE", 0), 502, codeUnknown, "")
}

func TestMapEgressRefusedIs502(t *testing.T) {
	checkResolveRow(t, blobPath, serviceError(t, codes.FailedPrecondition, "EGRESS_REFUSED", 0), 502, codeUnknown, "")
}

func TestMapRegistryWithoutUpstreamsIs502(t *testing.T) {
	checkResolveRow(t, manifestPath, serviceError(t, codes.FailedPrecondition, "REGISTRY_HAS_NO_UPSTREAMS", 0), 502, codeUnknown, "")
}

func TestMapPermissionDeniedIs502(t *testing.T) {
	checkResolveRow(t, manifestPath, serviceError(t, codes.PermissionDenied, "PERMISSION_DENIED", 0), 502, codeUnknown, "")
}

func TestMapUnauthenticatedIs502(t *testing.T) {
	checkResolveRow(t, manifestPath, serviceError(t, codes.Unauthenticated, "UNAUTHENTICATED", 0), 502, codeUnknown, "")
}

func TestMapDeadlineExceededIs504(t *testing.T) {
	checkResolveRow(t, manifestPath, serviceError(t, codes.DeadlineExceeded, "DEADLINE_EXCEEDED", 0), 504, codeUnavailable, "")
}

func TestMapInternalIs502(t *testing.T) {
	checkResolveRow(t, manifestPath, serviceError(t, codes.Internal, "INTERNAL", 0), 502, codeUnknown, "")
}

func TestMapDetailListsAttempts(t *testing.T) {
	err := serviceError(t, codes.NotFound, "NOT_FOUND_ON_UPSTREAMS", 0, attempt("a", 1, outNotFound, 404, 0), attempt("b", 2, outNotFound, 404, 0))
	srv, _ := newFront(t, &fakeResolver{answer: func(string) (*vregistryv1.ResolveUpstreamResponse, error) { return nil, err }})
	_, body, herr := do(t, http.MethodGet, srv.URL+manifestPath, nil)
	if herr != nil {
		t.Fatal(herr)
	}
	var parsed struct {
		Errors []struct {
			Detail resolveDetail `json:"detail"`
		} `json:"errors"`
	}
	if err := json.Unmarshal(body, &parsed); err != nil {
		t.Fatal(err)
	}
	d := parsed.Errors[0].Detail
	if d.Reason != "NOT_FOUND_ON_UPSTREAMS" || len(d.Attempts) != 2 || d.Attempts[1].UpstreamID != "b" || d.Attempts[1].Outcome != "ATTEMPT_OUTCOME_NOT_FOUND" {
		t.Fatalf("detail %+v", d)
	}
}

// upstreamAnswering is an upstream that answers every request with status, a secret in a
// header and the body (which the front must not pass on).
func upstreamAnswering(t *testing.T, status int, retryAfter string) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="https://auth.example/token",secret="hunter2"`)
		if retryAfter != "" {
			w.Header().Set("Retry-After", retryAfter)
		}
		w.WriteHeader(status)
		_, _ = w.Write([]byte(`{"errors":[{"code":"X","message":"hunter2"}]}`))
	}))
	t.Cleanup(srv.Close)
	return srv
}

func checkUpstreamRow(t *testing.T, path string, upstreamStatus int, retryAfter string, wantStatus int, wantCode, wantRetryAfter string) {
	t.Helper()
	up := upstreamAnswering(t, upstreamStatus, retryAfter)
	srv, _ := newFront(t, &fakeResolver{answer: found(up.URL, map[string]string{"Authorization": "Bearer hunter2"}, "", "", -1)})
	resp, body, err := do(t, http.MethodGet, srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != wantStatus || ociCode(t, body) != wantCode || resp.Header.Get("Retry-After") != wantRetryAfter {
		t.Fatalf("got %d %q Retry-After %q", resp.StatusCode, body, resp.Header.Get("Retry-After"))
	}
	if strings.Contains(string(body), "hunter2") || resp.Header.Get("WWW-Authenticate") != "" {
		t.Fatalf("upstream header or body passed on: %v %q", resp.Header, body)
	}
}

func TestUpstream404IsManifestUnknown(t *testing.T) {
	checkUpstreamRow(t, manifestPath, 404, "", 404, codeManifestUnknown, "")
}

func TestUpstream404IsBlobUnknown(t *testing.T) {
	checkUpstreamRow(t, blobPath, 404, "", 404, codeBlobUnknown, "")
}

func TestUpstream401Is502(t *testing.T) {
	checkUpstreamRow(t, manifestPath, 401, "", 502, codeUnknown, "")
}

func TestUpstream403Is502(t *testing.T) {
	checkUpstreamRow(t, blobPath, 403, "", 502, codeUnknown, "")
}

func TestUpstream429PassesRetryAfter(t *testing.T) {
	checkUpstreamRow(t, blobPath, 429, "11", 429, codeTooManyRequests, "11")
}

func TestUpstream503Is503(t *testing.T) {
	checkUpstreamRow(t, manifestPath, 503, "2", 503, codeUnavailable, "2")
}

func TestUpstream500Is502(t *testing.T) {
	checkUpstreamRow(t, manifestPath, 500, "", 502, codeUnknown, "")
}

func TestUpstreamUnreachableIs502(t *testing.T) {
	up := httptest.NewServer(http.NotFoundHandler())
	base := up.URL
	up.Close() // nothing listens there any more: connection refused
	srv, _ := newFront(t, &fakeResolver{answer: found(base, nil, "", "", -1)})
	resp, body, err := do(t, http.MethodGet, srv.URL+blobPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 502 || ociCode(t, body) != codeUnknown {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for v, want := range map[string]int{
		"": 0, "30": 30, "-4": 0, "soon": 0,
		now.Add(90 * time.Second).Format(http.TimeFormat): 90,
		now.Add(-time.Hour).Format(http.TimeFormat):       0,
	} {
		if got := parseRetryAfter(v, now); got != want {
			t.Errorf("%q: %d, want %d", v, got, want)
		}
	}
}

// waitingResolver fails like a channel that is down (UNAVAILABLE, no ErrorInfo) unless the
// call waits for the channel to be ready, and then answers with the upstream (recovers) or
// blocks until the call's deadline (stays down).
type waitingResolver struct {
	upstream string
	recovers bool
	calls    atomic.Int32
}

func (r *waitingResolver) ResolveUpstream(ctx context.Context, _, path string, opts ...grpc.CallOption) (*vregistryv1.ResolveUpstreamResponse, error) {
	r.calls.Add(1)
	waits := false
	for _, o := range opts {
		if ff, ok := o.(grpc.FailFastCallOption); ok && !ff.FailFast {
			waits = true
		}
	}
	if !waits {
		return nil, status.Error(codes.Unavailable, "connection refused")
	}
	if !r.recovers {
		<-ctx.Done()
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	return found(r.upstream, nil, "", "", -1)(path)
}

func TestChannelDownIsRetriedWaitingForReady(t *testing.T) {
	blob := []byte("after a restart")
	path := "/v2/app/blobs/" + sha(blob)
	up := newRegistry(t, map[string][]byte{path: blob})
	r := &waitingResolver{upstream: up.srv.URL, recovers: true}
	srv, logs := newFront(t, r)
	resp, body, err := do(t, http.MethodGet, srv.URL+path, nil)
	if err != nil || resp.StatusCode != 200 || string(body) != string(blob) || r.calls.Load() != 2 {
		t.Fatalf("%v %v %q calls=%d", err, resp, body, r.calls.Load())
	}
	if req := logs.waitLines(t, "request", 1); len(req) != 1 || req[0]["rpcs"] != 2.0 {
		t.Fatalf("request log %v", req)
	}
}

func TestChannelStayingDownIs503AfterTheWait(t *testing.T) {
	r := &waitingResolver{}
	h := New(Config{RegistryID: "reg", Resolver: r, ReconnectWait: 200 * time.Millisecond})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	started := time.Now()
	resp, body, err := do(t, http.MethodGet, srv.URL+manifestPath, nil)
	if err != nil || resp.StatusCode != 503 || ociCode(t, body) != codeUnavailable || !strings.Contains(string(body), "connection refused") {
		t.Fatalf("%v %v %q", err, resp, body)
	}
	if took := time.Since(started); took < 200*time.Millisecond || took > 5*time.Second {
		t.Fatalf("answered after %v", took)
	}
}
