package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vregistry/vregistry/clients/go/client"
	vregistryv1 "github.com/vregistry/vregistry/clients/go/gen/vregistry/v1"
)

// stack is the file named by VREGISTRY_STACK (written by tests/system/test_clients.py).
type stack struct {
	Target string `json:"target"`
	URLFor struct {
		UpstreamID  string `json:"upstream_id"`
		Path        string `json:"path"`
		ExpectedURL string `json:"expected_url"`
	} `json:"url_for"`
	Auth struct {
		UpstreamID string `json:"upstream_id"`
		Path       string `json:"path"`
	} `json:"auth"`
	ResolveHit struct {
		RegistryID         string `json:"registry_id"`
		Path               string `json:"path"`
		ExpectedUpstreamID string `json:"expected_upstream_id"`
		ExpectedPosition   int32  `json:"expected_position"`
		ExpectedDigest     string `json:"expected_digest"`
	} `json:"resolve_hit"`
	ResolveMiss struct {
		RegistryID string `json:"registry_id"`
		Path       string `json:"path"`
	} `json:"resolve_miss"`
	Invalid struct {
		UpstreamID string `json:"upstream_id"`
		Path       string `json:"path"`
	} `json:"invalid"`
}

// answers is what every language writes to $VREGISTRY_ANSWERS_DIR/<lang>.json.
type answers struct {
	URLFor string `json:"url_for"`
	Auth   struct {
		Scheme              string `json:"scheme"`
		AuthorizationPrefix string `json:"authorization_prefix"`
		CacheHitSecondCall  bool   `json:"cache_hit_second_call"`
	} `json:"auth"`
	ResolveHit struct {
		UpstreamID string      `json:"upstream_id"`
		Position   int32       `json:"position"`
		Digest     string      `json:"digest"`
		MediaType  string      `json:"media_type"`
		Size       int64       `json:"size"`
		Outcomes   [][2]string `json:"outcomes"`
	} `json:"resolve_hit"`
	ResolveMiss struct {
		Code     string      `json:"code"`
		Reason   string      `json:"reason"`
		Outcomes [][2]string `json:"outcomes"`
	} `json:"resolve_miss"`
	Invalid struct {
		Code   string `json:"code"`
		Reason string `json:"reason"`
	} `json:"invalid"`
}

func loadStack(t *testing.T) stack {
	t.Helper()
	path := os.Getenv("VREGISTRY_STACK")
	if path == "" {
		t.Skip("VREGISTRY_STACK is not set: run through tests/system/test_clients.py (make test)")
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read stack file: %v", err)
	}
	var s stack
	if err := json.Unmarshal(data, &s); err != nil {
		t.Fatalf("parse stack file %s: %v", path, err)
	}
	return s
}

func outcomes(attempts []*vregistryv1.UpstreamAttempt) [][2]string {
	out := make([][2]string, 0, len(attempts))
	for _, a := range attempts {
		out = append(out, [2]string{a.GetUpstreamId(), a.GetOutcome().String()})
	}
	return out
}

// TestAgainstServer runs the shared request set against the live server and, when
// VREGISTRY_ANSWERS_DIR is set, writes go.json for the cross-language comparison.
func TestAgainstServer(t *testing.T) {
	s := loadStack(t)
	c, err := client.New(s.Target, client.WithInsecure(), client.WithTimeout(20*time.Second))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer c.Close()
	ctx := context.Background()
	var got answers

	t.Run("UrlFor", func(t *testing.T) {
		url, err := c.URLFor(ctx, s.URLFor.UpstreamID, s.URLFor.Path)
		if err != nil {
			t.Fatalf("URLFor: %v", err)
		}
		if url != s.URLFor.ExpectedURL {
			t.Fatalf("URLFor = %q, want %q", url, s.URLFor.ExpectedURL)
		}
		got.URLFor = url
	})

	t.Run("GetAuthHeaders", func(t *testing.T) {
		first, err := c.GetAuthHeaders(ctx, s.Auth.UpstreamID, s.Auth.Path, nil)
		if err != nil {
			t.Fatalf("GetAuthHeaders: %v", err)
		}
		authz := first.GetHeaders()["Authorization"]
		prefix, token, _ := strings.Cut(authz, " ")
		if first.GetScheme() != "bearer" || prefix != "Bearer" || token == "" {
			t.Fatalf("scheme %q, Authorization %q: want a bearer token", first.GetScheme(), authz)
		}
		if first.GetExpiresAt() == nil || !first.GetExpiresAt().AsTime().After(time.Now()) {
			t.Fatalf("expires_at %v is not in the future", first.GetExpiresAt())
		}
		second, err := c.GetAuthHeaders(ctx, s.Auth.UpstreamID, s.Auth.Path, nil)
		if err != nil {
			t.Fatalf("second GetAuthHeaders: %v", err)
		}
		if !second.GetCacheHit() || second.GetHeaders()["Authorization"] != authz {
			t.Fatalf("second call: cache_hit %v, same header %v", second.GetCacheHit(), second.GetHeaders()["Authorization"] == authz)
		}
		got.Auth.Scheme = first.GetScheme()
		got.Auth.AuthorizationPrefix = prefix
		got.Auth.CacheHitSecondCall = second.GetCacheHit()
	})

	t.Run("ResolveUpstreamHit", func(t *testing.T) {
		r, err := c.ResolveUpstream(ctx, s.ResolveHit.RegistryID, s.ResolveHit.Path)
		if err != nil {
			t.Fatalf("ResolveUpstream: %v", err)
		}
		if r.GetUpstream().GetId() != s.ResolveHit.ExpectedUpstreamID ||
			r.GetUpstream().GetPosition() != s.ResolveHit.ExpectedPosition ||
			r.GetDigest() != s.ResolveHit.ExpectedDigest {
			t.Fatalf("resolved %s at %d with %s, want %s at %d with %s",
				r.GetUpstream().GetId(), r.GetUpstream().GetPosition(), r.GetDigest(),
				s.ResolveHit.ExpectedUpstreamID, s.ResolveHit.ExpectedPosition, s.ResolveHit.ExpectedDigest)
		}
		if !strings.HasSuffix(r.GetUrl(), "/v2/"+s.ResolveHit.Path) || r.GetHeaders()["Authorization"] == "" {
			t.Fatalf("url %q, headers %v", r.GetUrl(), r.GetHeaders())
		}
		h := &got.ResolveHit
		h.UpstreamID, h.Position, h.Digest = r.GetUpstream().GetId(), r.GetUpstream().GetPosition(), r.GetDigest()
		h.MediaType, h.Size, h.Outcomes = r.GetMediaType(), r.GetSize(), outcomes(r.GetAttempts())
	})

	t.Run("ResolveUpstreamMiss", func(t *testing.T) {
		_, err := c.ResolveUpstream(ctx, s.ResolveMiss.RegistryID, s.ResolveMiss.Path)
		e, ok := client.AsError(err)
		if !ok {
			t.Fatalf("want *client.Error, got %v", err)
		}
		if e.Code != codes.NotFound || e.ReasonCode() != vregistryv1.ErrorReason_NOT_FOUND_ON_UPSTREAMS || len(e.Attempts) != 2 {
			t.Fatalf("got %v with %d attempts", e, len(e.Attempts))
		}
		if status.Code(err) != codes.NotFound || e.Domain != client.ErrorDomain {
			t.Fatalf("status.Code %v, domain %q", status.Code(err), e.Domain)
		}
		m := &got.ResolveMiss
		m.Code, m.Reason, m.Outcomes = client.CodeName(e.Code), e.Reason, outcomes(e.Attempts)
	})

	t.Run("InvalidArgument", func(t *testing.T) {
		_, err := c.URLFor(ctx, s.Invalid.UpstreamID, s.Invalid.Path)
		e, ok := client.AsError(err)
		if !ok || e.Code != codes.InvalidArgument || e.ReasonCode() != vregistryv1.ErrorReason_INVALID_PATH {
			t.Fatalf("want INVALID_ARGUMENT/INVALID_PATH, got %v", err)
		}
		if !strings.Contains(e.Error(), "INVALID_ARGUMENT (INVALID_PATH)") {
			t.Fatalf("Error() = %q", e.Error())
		}
		got.Invalid.Code, got.Invalid.Reason = client.CodeName(e.Code), e.Reason
	})

	t.Run("DefaultTimeout", func(t *testing.T) {
		short, err := client.New(s.Target, client.WithInsecure(), client.WithTimeout(time.Nanosecond))
		if err != nil {
			t.Fatal(err)
		}
		defer short.Close()
		_, err = short.ResolveUpstream(ctx, s.ResolveHit.RegistryID, s.ResolveHit.Path)
		// Expired in the client (no reason) or refused by the server on arrival.
		if e, ok := client.AsError(err); !ok || e.Code != codes.DeadlineExceeded ||
			(e.Reason != "" && e.ReasonCode() != vregistryv1.ErrorReason_DEADLINE_EXCEEDED) {
			t.Fatalf("want DEADLINE_EXCEEDED, got %v", err)
		}
		// A deadline on the context wins over the default.
		ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		if _, err := short.URLFor(ctx, s.URLFor.UpstreamID, s.URLFor.Path); err != nil {
			t.Fatalf("with a context deadline: %v", err)
		}
	})

	if t.Failed() {
		return
	}
	if dir := os.Getenv("VREGISTRY_ANSWERS_DIR"); dir != "" {
		data, err := json.MarshalIndent(got, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "go.json"), append(data, '\n'), 0o644); err != nil {
			t.Fatalf("write answers: %v", err)
		}
	}
}

// TestFromErrorDecodesDetails needs no server: it builds the status the server sends.
func TestFromErrorDecodesDetails(t *testing.T) {
	st, err := status.New(codes.NotFound, "not on any upstream").WithDetails(
		&errdetails.ErrorInfo{Reason: vregistryv1.ErrorReason_NOT_FOUND_ON_UPSTREAMS.String(), Domain: client.ErrorDomain, Metadata: map[string]string{"registry_id": "r"}},
		&vregistryv1.ResolveUpstreamFailure{Attempts: []*vregistryv1.UpstreamAttempt{
			{UpstreamId: "a", Outcome: vregistryv1.AttemptOutcome_ATTEMPT_OUTCOME_NOT_FOUND, Position: 1},
			{UpstreamId: "b", Outcome: vregistryv1.AttemptOutcome_ATTEMPT_OUTCOME_RATE_LIMITED, Position: 2, RetryAfterSeconds: 7},
		}},
	)
	if err != nil {
		t.Fatal(err)
	}
	wrapped := client.FromError(st.Err())
	e, ok := client.AsError(wrapped)
	if !ok {
		t.Fatalf("not an *Error: %v", wrapped)
	}
	if e.Code != codes.NotFound || e.Reason != "NOT_FOUND_ON_UPSTREAMS" || e.Metadata["registry_id"] != "r" ||
		e.ReasonCode() != vregistryv1.ErrorReason_NOT_FOUND_ON_UPSTREAMS {
		t.Fatalf("decoded %+v", e)
	}
	if len(e.Attempts) != 2 || e.Attempts[1].GetRetryAfterSeconds() != 7 {
		t.Fatalf("attempts %v", e.Attempts)
	}
	if status.Code(wrapped) != codes.NotFound {
		t.Fatalf("status.Code does not see through: %v", status.Code(wrapped))
	}
	if got, want := e.Error(), "vregistry: NOT_FOUND (NOT_FOUND_ON_UPSTREAMS): not on any upstream"; got != want {
		t.Fatalf("Error() = %q, want %q", got, want)
	}
	if client.FromError(nil) != nil {
		t.Fatal("FromError(nil) != nil")
	}
	if e, _ := client.AsError(client.FromError(errors.New("plain"))); e.Code != codes.Unknown {
		t.Fatalf("plain error -> %v", e.Code)
	}
}

func TestCodeName(t *testing.T) {
	for code, want := range map[codes.Code]string{codes.InvalidArgument: "INVALID_ARGUMENT", codes.Canceled: "CANCELLED", codes.Code(99): "CODE(99)"} {
		if got := client.CodeName(code); got != want {
			t.Errorf("CodeName(%v) = %q, want %q", code, got, want)
		}
	}
}

// TestReasonCode: the string on the wire becomes the generated enum, for every value of it.
func TestReasonCode(t *testing.T) {
	withInfo := func(reason, domain string) *client.Error {
		st, err := status.New(codes.FailedPrecondition, "x").WithDetails(&errdetails.ErrorInfo{Reason: reason, Domain: domain})
		if err != nil {
			t.Fatal(err)
		}
		e, _ := client.AsError(client.FromError(st.Err()))
		return e
	}
	if len(vregistryv1.ErrorReason_name) < 25 {
		t.Fatalf("ErrorReason has %d values, want the 24 reasons and UNSPECIFIED", len(vregistryv1.ErrorReason_name))
	}
	for number, name := range vregistryv1.ErrorReason_name {
		if got := withInfo(name, client.ErrorDomain).ReasonCode(); got != vregistryv1.ErrorReason(number) {
			t.Errorf("reason %q: ReasonCode() = %v, want %v", name, got, vregistryv1.ErrorReason(number))
		}
	}
	// The reasons the Go client had no constant for before the enum.
	for _, want := range []vregistryv1.ErrorReason{
		vregistryv1.ErrorReason_UPSTREAM_REALM_REFUSED,
		vregistryv1.ErrorReason_DEADLINE_EXCEEDED,
		vregistryv1.ErrorReason_UPSTREAM_RATE_LIMITED,
	} {
		if got := withInfo(want.String(), client.ErrorDomain).ReasonCode(); got != want {
			t.Errorf("ReasonCode() = %v, want %v", got, want)
		}
	}
	unspecified := vregistryv1.ErrorReason_ERROR_REASON_UNSPECIFIED
	for _, e := range []*client.Error{
		withInfo("SOMETHING_NEWER", client.ErrorDomain), // a reason from a newer server
		withInfo("NOT_FOUND", "proxy.example"),          // another domain's reason
	} {
		if got := e.ReasonCode(); got != unspecified || e.Reason == "" {
			t.Errorf("%v: ReasonCode() = %v (Reason %q), want %v and the string kept", e, got, e.Reason, unspecified)
		}
	}
	plain, _ := client.AsError(client.FromError(status.Error(codes.DeadlineExceeded, "late")))
	if plain.Reason != "" || plain.ReasonCode() != unspecified {
		t.Errorf("no ErrorInfo: Reason %q, ReasonCode() %v", plain.Reason, plain.ReasonCode())
	}
}

// TestDefaultTimeout needs no server: an interceptor records the deadline each call carries.
func TestDefaultTimeout(t *testing.T) {
	if client.DefaultTimeout != 30*time.Second {
		t.Fatalf("DefaultTimeout = %v, want 30s (the same in every client)", client.DefaultTimeout)
	}
	var deadline time.Time
	var hasDeadline bool
	record := func(ctx context.Context, _ string, _, _ any, _ *grpc.ClientConn, _ grpc.UnaryInvoker, _ ...grpc.CallOption) error {
		deadline, hasDeadline = ctx.Deadline()
		return status.Error(codes.Unavailable, "not sent")
	}
	newClient := func(opts ...client.Option) *client.Client {
		opts = append(opts, client.WithInsecure(), client.WithDialOptions(grpc.WithUnaryInterceptor(record)))
		c, err := client.New("passthrough:///vregistry.invalid:1", opts...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	ctx := context.Background()

	before := time.Now()
	_, _ = newClient().URLFor(ctx, "u", "")
	if !hasDeadline || deadline.Before(before.Add(client.DefaultTimeout)) || deadline.After(time.Now().Add(client.DefaultTimeout)) {
		t.Fatalf("default: deadline %v (set %v), want about now+30s", deadline, hasDeadline)
	}
	_, _ = newClient(client.WithTimeout(2*time.Second)).URLFor(ctx, "u", "")
	if left := time.Until(deadline); !hasDeadline || left > 2*time.Second || left < time.Second {
		t.Fatalf("WithTimeout(2s): %v left (set %v)", left, hasDeadline)
	}
	_, _ = newClient(client.WithTimeout(0)).URLFor(ctx, "u", "")
	if hasDeadline {
		t.Fatalf("WithTimeout(0): deadline %v, want none", deadline)
	}
	// A deadline on the context wins over the default (per call overridable).
	short, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	want, _ := short.Deadline()
	_, _ = newClient().ResolveUpstream(short, "r", "a/manifests/latest")
	if !hasDeadline || !deadline.Equal(want) {
		t.Fatalf("context deadline: got %v, want %v", deadline, want)
	}
}
