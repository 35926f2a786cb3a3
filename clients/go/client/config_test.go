package client_test

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/vregistry/vregistry/clients/go/client"
	vregistryv1 "github.com/vregistry/vregistry/clients/go/gen/vregistry/v1"
)

// configStack is the "config" section of the stack file: the server runs ConfigService.
type configStack struct {
	Target string `json:"target"`
	Config *struct {
		Group           string   `json:"group"`
		OpenURL         string   `json:"open_url"`
		TokenURL        string   `json:"token_url"`
		RealmAllowHosts []string `json:"realm_allow_hosts"`
		HitPath         string   `json:"hit_path"`
		HitDigest       string   `json:"hit_digest"`
	} `json:"config"`
}

func TestMaskFromPlainFieldNames(t *testing.T) {
	mask, err := client.Mask(&vregistryv1.UpstreamConfig{}, "display_name", "url")
	if err != nil || !slices.Equal(mask.GetPaths(), []string{"display_name", "url"}) {
		t.Fatalf("Mask = %v, %v", mask, err)
	}
	if all, err := client.Mask(&vregistryv1.UpstreamConfig{}, "*"); err != nil || all.GetPaths()[0] != "*" {
		t.Fatalf("Mask(*) = %v, %v", all, err)
	}
	_, err = client.Mask(&vregistryv1.UpstreamConfig{}, "no_such_field")
	e, ok := client.AsError(err)
	if !ok || e.Code != codes.InvalidArgument {
		t.Fatalf("Mask(no_such_field) error = %v", err)
	}
}

func TestResourceNames(t *testing.T) {
	if got := client.UpstreamName("acme", "ghcr"); got != "groups/acme/upstreams/ghcr" {
		t.Fatal(got)
	}
	if got := client.RegistryName("acme", "default"); got != "groups/acme/registries/default" {
		t.Fatal(got)
	}
}

// The embedded service config is the shared one: retries of UNAVAILABLE, round_robin.
func TestServiceConfig(t *testing.T) {
	var sc struct {
		LoadBalancingConfig []map[string]any `json:"loadBalancingConfig"`
		MethodConfig        []struct {
			Name        []map[string]string `json:"name"`
			RetryPolicy struct {
				MaxAttempts          int      `json:"maxAttempts"`
				RetryableStatusCodes []string `json:"retryableStatusCodes"`
			} `json:"retryPolicy"`
		} `json:"methodConfig"`
	}
	if err := json.Unmarshal([]byte(client.ServiceConfig), &sc); err != nil {
		t.Fatal(err)
	}
	if _, ok := sc.LoadBalancingConfig[0]["round_robin"]; !ok {
		t.Fatalf("no round_robin: %v", sc.LoadBalancingConfig)
	}
	m := sc.MethodConfig[0]
	if m.RetryPolicy.MaxAttempts < 2 || !slices.Equal(m.RetryPolicy.RetryableStatusCodes, []string{"UNAVAILABLE"}) {
		t.Fatalf("retry policy: %+v", m.RetryPolicy)
	}
	shared, err := os.ReadFile(filepath.Join("..", "..", "service_config.json"))
	if err == nil && string(shared) != client.ServiceConfig {
		t.Fatal("service_config.json differs from clients/service_config.json: run scripts/gen_clients.sh")
	}
}

func TestTLSFilesErrors(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, opt := range map[string]client.Option{
		"missing CA":   client.WithTLSFiles(filepath.Join(dir, "absent.pem"), "", ""),
		"CA not PEM":   client.WithTLSFiles(notPEM, "", ""),
		"cert, no key": client.WithTLSFiles("", notPEM, ""),
		"bad key pair": client.WithTLSFiles("", notPEM, notPEM),
	} {
		if _, err := client.New("127.0.0.1:1", opt); err == nil {
			t.Errorf("%s: New succeeded", name)
		}
	}
}

// standIn is a ConfigService GetUpstream on 127.0.0.1 that records each call's authorization
// header and fails the first `failures` calls with UNAVAILABLE: a real server cannot be made to
// fail a chosen number of times, which the retry test needs.
type standIn struct {
	vregistryv1.UnimplementedConfigServiceServer
	mu             sync.Mutex
	failures       int
	authorizations []string
}

func (s *standIn) GetUpstream(ctx context.Context, req *vregistryv1.GetUpstreamRequest) (*vregistryv1.GetUpstreamResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.authorizations = append(s.authorizations, strings.Join(md.Get("authorization"), ","))
	if len(s.authorizations) <= s.failures {
		return nil, status.Error(codes.Unavailable, "try again")
	}
	return &vregistryv1.GetUpstreamResponse{Upstream: &vregistryv1.UpstreamConfig{Name: req.GetName()}}, nil
}

func startStandIn(t *testing.T, failures int) (*standIn, string) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	server := grpc.NewServer()
	s := &standIn{failures: failures}
	vregistryv1.RegisterConfigServiceServer(server, s)
	go func() { _ = server.Serve(lis) }()
	t.Cleanup(server.Stop)
	return s, "dns:///" + lis.Addr().String()
}

// Two UNAVAILABLE answers, then the answer: gRPC retried (the service config), each attempt
// with the client's token; a per-call token replaces it for one call.
func TestUnavailableIsRetriedAndTokensArePerCall(t *testing.T) {
	s, target := startStandIn(t, 2)
	c, err := client.New(target, client.WithInsecure(), client.WithCallerToken("client-wide"), client.WithTimeout(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	name := client.UpstreamName("g", "u")
	if got, err := c.Config().GetUpstream(ctx, name); err != nil || got.GetName() != name {
		t.Fatalf("GetUpstream = %v, %v", got, err)
	}
	if _, err := c.Config().GetUpstream(ctx, name, client.CallerToken("per-call")); err != nil {
		t.Fatal(err)
	}
	want := []string{"Bearer client-wide", "Bearer client-wide", "Bearer client-wide", "Bearer per-call"}
	if !slices.Equal(s.authorizations, want) {
		t.Fatalf("authorizations = %v", s.authorizations)
	}
}

func TestWithoutServiceConfigUnavailableIsNotRetried(t *testing.T) {
	s, target := startStandIn(t, 2)
	c, err := client.New(target, client.WithInsecure(), client.WithServiceConfig(""))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.Config().GetUpstream(context.Background(), client.UpstreamName("g", "u"))
	if e, ok := client.AsError(err); !ok || e.Code != codes.Unavailable || len(s.authorizations) != 1 {
		t.Fatalf("error = %v after %d calls", err, len(s.authorizations))
	}
}

// A server that is not there: the call ends UNAVAILABLE after the retry policy's attempts,
// within the deadline (the retries are gRPC's, from the service config).
func TestUnavailableIsRetriedThenReported(t *testing.T) {
	c, err := client.New("dns:///127.0.0.1:1", client.WithInsecure(), client.WithTimeout(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.Config().GetUpstream(context.Background(), client.UpstreamName("g", "x"))
	if e, ok := client.AsError(err); !ok || e.Code != codes.Unavailable {
		t.Fatalf("error = %v", err)
	}
}

func loadConfigStack(t *testing.T) configStack {
	t.Helper()
	path := os.Getenv("VREGISTRY_STACK")
	if path == "" {
		t.Skip("VREGISTRY_STACK is not set: run through tests/system/test_clients.py (make test)")
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var s configStack
	if err := json.Unmarshal(data, &s); err != nil {
		t.Fatal(err)
	}
	if s.Config == nil {
		t.Fatal("the stack file has no config section: the server runs without ConfigService")
	}
	return s
}

// Every ConfigService RPC through the wrapper, against the live server.
func TestConfigServiceAgainstServer(t *testing.T) {
	s := loadConfigStack(t)
	cfg := s.Config
	c, err := client.New(s.Target, client.WithInsecure(), client.WithTimeout(20*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	admin := c.Config()
	group := cfg.Group
	newUpstream := func(url string) *vregistryv1.UpstreamConfig {
		return &vregistryv1.UpstreamConfig{DisplayName: "go " + url, Url: url, AllowHttp: true, RealmAllowHosts: cfg.RealmAllowHosts}
	}

	open, err := admin.CreateUpstream(ctx, group, "go-open", newUpstream(cfg.OpenURL))
	if err != nil {
		t.Fatalf("CreateUpstream: %v", err)
	}
	token, err := admin.CreateUpstream(ctx, group, "go-token", newUpstream(cfg.TokenURL))
	if err != nil {
		t.Fatalf("CreateUpstream: %v", err)
	}
	if _, err := admin.CreateUpstream(ctx, group, "go-open", newUpstream(cfg.OpenURL)); err == nil {
		t.Fatal("second CreateUpstream with the same id succeeded")
	} else if e, _ := client.AsError(err); e.Code != codes.AlreadyExists {
		t.Fatalf("duplicate: %v", err)
	}

	got, err := admin.GetUpstream(ctx, open.GetName())
	if err != nil || got.GetEtag() != open.GetEtag() || got.GetUrl() != cfg.OpenURL {
		t.Fatalf("GetUpstream = %v, %v", got, err)
	}

	// Update with a plain field mask and the etag read before; then the old etag is stale.
	changed := &vregistryv1.UpstreamConfig{Name: open.GetName(), Etag: open.GetEtag(), DisplayName: "renamed"}
	updated, err := admin.UpdateUpstream(ctx, changed, []string{"display_name"})
	if err != nil || updated.GetDisplayName() != "renamed" || updated.GetEtag() == open.GetEtag() {
		t.Fatalf("UpdateUpstream = %v, %v", updated, err)
	}
	_, err = admin.UpdateUpstream(ctx, changed, []string{"display_name"})
	if e, ok := client.AsError(err); !ok || e.Code != codes.Aborted || e.ReasonCode() != vregistryv1.ErrorReason_ETAG_MISMATCH {
		t.Fatalf("stale etag: %v", err)
	}

	// Paging: page size 1 still yields both upstreams, through the iterator.
	var names []string
	for up, err := range admin.ListUpstreams(ctx, group, 1) {
		if err != nil {
			t.Fatalf("ListUpstreams: %v", err)
		}
		names = append(names, up.GetName())
	}
	if !slices.Contains(names, open.GetName()) || !slices.Contains(names, token.GetName()) {
		t.Fatalf("ListUpstreams = %v", names)
	}

	tested, err := admin.TestUpstream(ctx, open.GetName(), "library/alpine/manifests/latest")
	if err != nil || !tested.GetOk() {
		t.Fatalf("TestUpstream = %v, %v", tested, err)
	}
	unsaved, err := admin.TestUnsavedUpstream(ctx, newUpstream(cfg.OpenURL), "library/alpine/manifests/latest")
	if err != nil || !unsaved.GetOk() {
		t.Fatalf("TestUnsavedUpstream = %v, %v", unsaved, err)
	}

	reg, err := admin.CreateRegistry(ctx, group, "go-r", &vregistryv1.RegistryConfig{DisplayName: "go"})
	if err != nil {
		t.Fatalf("CreateRegistry: %v", err)
	}
	reg, err = admin.AddUpstream(ctx, reg.GetName(), open.GetName(), 1, reg.GetEtag())
	if err != nil {
		t.Fatalf("AddUpstream: %v", err)
	}
	reg, err = admin.AddUpstream(ctx, reg.GetName(), token.GetName(), 2, "")
	if err != nil || len(reg.GetUpstreams()) != 2 {
		t.Fatalf("AddUpstream = %v, %v", reg, err)
	}
	hit, err := c.Resolve(ctx, &vregistryv1.ResolveUpstreamRequest{RegistryId: "go-r", Path: cfg.HitPath, Refresh: true})
	if err != nil || hit.GetUpstream().GetId() != "go-token" || hit.GetUpstream().GetPosition() != 2 || hit.GetDigest() != cfg.HitDigest {
		t.Fatalf("Resolve = %v, %v", hit, err)
	}
	if hit.GetCacheHit() || !hit.GetCheckedAt().IsValid() {
		t.Fatalf("a refresh is no cache hit and has checked_at: %v", hit)
	}

	reg, err = admin.ReorderUpstreams(ctx, reg.GetName(), []*vregistryv1.RegistryMember{
		{Upstream: token.GetName(), Position: 1}, {Upstream: open.GetName(), Position: 2},
	}, reg.GetEtag())
	if err != nil || reg.GetUpstreams()[0].GetUpstream() != token.GetName() {
		t.Fatalf("ReorderUpstreams = %v, %v", reg, err)
	}
	reg, err = admin.UpdateRegistry(ctx, &vregistryv1.RegistryConfig{Name: reg.GetName(), Description: "two"}, []string{"description"})
	if err != nil || reg.GetDescription() != "two" {
		t.Fatalf("UpdateRegistry = %v, %v", reg, err)
	}
	var registries []string
	for r, err := range admin.ListRegistries(ctx, group, 0) {
		if err != nil {
			t.Fatal(err)
		}
		registries = append(registries, r.GetName())
	}
	if !slices.Contains(registries, reg.GetName()) {
		t.Fatalf("ListRegistries = %v", registries)
	}
	if got, err := admin.GetRegistry(ctx, reg.GetName()); err != nil || got.GetEtag() != reg.GetEtag() {
		t.Fatalf("GetRegistry = %v, %v", got, err)
	}

	reg, err = admin.RemoveUpstream(ctx, reg.GetName(), open.GetName(), "")
	if err != nil || len(reg.GetUpstreams()) != 1 {
		t.Fatalf("RemoveUpstream = %v, %v", reg, err)
	}
	_, err = admin.DeleteUpstream(ctx, token.GetName(), "", false)
	if e, ok := client.AsError(err); !ok || e.ReasonCode() != vregistryv1.ErrorReason_UPSTREAM_IN_USE {
		t.Fatalf("delete in use: %v", err)
	}
	removed, err := admin.DeleteUpstream(ctx, token.GetName(), "", true)
	if err != nil || !slices.Equal(removed, []string{reg.GetName()}) {
		t.Fatalf("DeleteUpstream(force) = %v, %v", removed, err)
	}
	if err := admin.DeleteRegistry(ctx, reg.GetName(), ""); err != nil {
		t.Fatalf("DeleteRegistry: %v", err)
	}
	if _, err := admin.DeleteUpstream(ctx, updated.GetName(), updated.GetEtag(), false); err != nil {
		t.Fatalf("DeleteUpstream: %v", err)
	}
	_, err = admin.GetRegistry(ctx, reg.GetName())
	if e, ok := client.AsError(err); !ok || e.Code != codes.NotFound {
		t.Fatalf("GetRegistry after delete: %v", err)
	}
}
