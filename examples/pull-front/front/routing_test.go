package front

import (
	"net/http"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	vregistryv1 "github.com/vregistry/vregistry/clients/go/gen/vregistry/v1"
)

const goodDigest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

func TestParseRoute(t *testing.T) {
	cases := []struct {
		path       string
		kind       kind
		name, ref  string
		status     int
		code       string
		wantDigest bool
	}{
		{path: "/v2/", kind: kindBase},
		{path: "/v2", kind: kindBase},
		{path: "/v2/library/alpine/manifests/latest", kind: kindManifest, name: "library/alpine", ref: "latest"},
		{path: "/v2/a/manifests/b/manifests/v1", kind: kindManifest, name: "a/manifests/b", ref: "v1"},
		{path: "/v2/manifests/manifests/v1", kind: kindManifest, name: "manifests", ref: "v1"},
		{path: "/v2/a/blobs/manifests/v1", kind: kindManifest, name: "a/blobs", ref: "v1"},
		{path: "/v2/x/manifests/" + goodDigest, kind: kindManifest, name: "x", ref: goodDigest, wantDigest: true},
		{path: "/v2/x/y/blobs/" + goodDigest, kind: kindBlob, name: "x/y", ref: goodDigest, wantDigest: true},
		{path: "/v2/a/manifests/blobs/" + goodDigest, kind: kindBlob, name: "a/manifests", ref: goodDigest, wantDigest: true},
		{path: "/v2/x/tags/list", kind: kindTags, name: "x"},
		{path: "/v2/a/tags/b/tags/list", kind: kindTags, name: "a/tags/b"},
		{path: "/v2/tags/list", status: http.StatusNotFound, code: codeNameUnknown},
		{path: "/v2/x/blobs/sha256:abc", status: http.StatusBadRequest, code: codeDigestInvalid},
		{path: "/v2/x/blobs/" + strings.ToUpper(goodDigest), status: http.StatusBadRequest, code: codeDigestInvalid},
		{path: "/v2/x/blobs/md5:d41d8cd98f00b204e9800998ecf8427e", status: http.StatusBadRequest, code: codeDigestInvalid},
		{path: "/v2/x/blobs/latest", status: http.StatusBadRequest, code: codeDigestInvalid},
		{path: "/v2/x/manifests/sha256:zz", status: http.StatusBadRequest, code: codeDigestInvalid},
		{path: "/v2/x/manifests/.bad", status: http.StatusBadRequest, code: codeManifestInvalid},
		{path: "/v2/x/manifests/" + strings.Repeat("t", 129), status: http.StatusBadRequest, code: codeManifestInvalid},
		{path: "/v2/x/referrers/" + goodDigest, status: http.StatusNotFound, code: codeUnsupported},
		{path: "/v2/x/blobs/uploads/abc", status: http.StatusNotFound, code: codeNameUnknown},
		{path: "/v2/x/manifests/", status: http.StatusNotFound, code: codeNameUnknown},
		{path: "/v2/manifests/latest", status: http.StatusNotFound, code: codeNameUnknown},
		{path: "/v2/_catalog", status: http.StatusNotFound, code: codeNameUnknown},
		{path: "/v3/x/manifests/latest", status: http.StatusNotFound, code: codeNameUnknown},
	}
	for _, c := range cases {
		t.Run(c.path, func(t *testing.T) {
			rt, oerr := parseRoute(c.path)
			if c.status != 0 {
				if oerr == nil || oerr.status != c.status || oerr.code != c.code {
					t.Fatalf("got %+v, %+v; want %d %s", rt, oerr, c.status, c.code)
				}
				return
			}
			if oerr != nil {
				t.Fatalf("unexpected error %+v", oerr)
			}
			if rt.kind != c.kind || rt.name != c.name || rt.ref != c.ref || (rt.digest != nil) != c.wantDigest {
				t.Fatalf("got %+v", rt)
			}
		})
	}
}

func TestServicePath(t *testing.T) {
	for path, want := range map[string]string{
		"/v2/a/manifests/b/manifests/v1": "a/manifests/b/manifests/v1",
		"/v2/a/blobs/" + goodDigest:      "a/blobs/" + goodDigest,
		"/v2/a/b/tags/list":              "a/b/tags/list",
	} {
		rt, oerr := parseRoute(path)
		if oerr != nil || rt.servicePath() != want {
			t.Errorf("%s: got %q, %+v", path, rt.servicePath(), oerr)
		}
	}
}

func TestBaseAnswers200WithAPIVersion(t *testing.T) {
	srv, _ := newFront(t, &fakeResolver{})
	resp, body, err := do(t, http.MethodGet, srv.URL+"/v2/", nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || string(body) != "{}" || resp.Header.Get("Docker-Distribution-API-Version") != "registry/2.0" {
		t.Fatalf("got %d %q %v", resp.StatusCode, body, resp.Header)
	}
}

func TestPushMethodsAre405(t *testing.T) {
	r := &fakeResolver{}
	srv, _ := newFront(t, r)
	for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete} {
		for _, path := range []string{"/v2/x/blobs/uploads/", "/v2/x/manifests/v1", "/v2/x/blobs/" + goodDigest, "/v2/"} {
			resp, body, err := do(t, m, srv.URL+path, nil)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "GET, HEAD" ||
				resp.Header.Get("Content-Type") != "application/json" || ociCode(t, body) != codeUnsupported {
				t.Errorf("%s %s: got %d %v %q", m, path, resp.StatusCode, resp.Header, body)
			}
		}
	}
	if len(r.paths) != 0 {
		t.Fatalf("a push made RPCs: %v", r.paths)
	}
}

func TestBadDigestMakesNoRPC(t *testing.T) {
	r := &fakeResolver{}
	srv, _ := newFront(t, r)
	resp, body, err := do(t, http.MethodGet, srv.URL+"/v2/x/blobs/sha256:1234", nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusBadRequest || ociCode(t, body) != codeDigestInvalid || len(r.paths) != 0 {
		t.Fatalf("got %d %q, rpcs %v", resp.StatusCode, body, r.paths)
	}
}

func TestEscapedNameIsNotDecoded(t *testing.T) {
	r := &fakeResolver{answer: func(string) (*vregistryv1.ResolveUpstreamResponse, error) {
		return nil, status.Error(codes.InvalidArgument, "invalid path")
	}}
	srv, _ := newFront(t, r)
	resp, _, err := do(t, http.MethodGet, srv.URL+"/v2/a%2Fb/manifests/v1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.paths) != 1 || r.paths[0] != "reg a%2Fb/manifests/v1" || resp.StatusCode != 502 {
		t.Fatalf("resolved %v, answered %d", r.paths, resp.StatusCode)
	}
}
