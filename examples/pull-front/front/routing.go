package front

import (
	"net/http"
	"regexp"
	"strings"
)

// kind is the read-side endpoint a request addresses.
type kind int

const (
	kindBase     kind = iota // GET /v2/
	kindManifest             // /v2/<name>/manifests/<reference>
	kindBlob                 // /v2/<name>/blobs/<digest>
	kindTags                 // /v2/<name>/tags/list
)

// route is a parsed request path. The repository name itself is checked by the service
// (INVALID_PATH), which holds the one OCI name grammar; the front checks only what it needs to
// act on: the reference (tag or digest, to know what to verify) and the endpoint.
type route struct {
	kind kind
	name string
	// ref is the tag or digest of a manifest, the digest of a blob.
	ref string
	// digest is set when ref is a digest (every blob, a manifest by digest).
	digest *digest
}

// servicePath is the path ResolveUpstream takes: the request path below /v2/.
func (r route) servicePath() string {
	switch r.kind {
	case kindManifest:
		return r.name + "/manifests/" + r.ref
	case kindBlob:
		return r.name + "/blobs/" + r.ref
	case kindTags:
		return r.name + "/tags/list"
	}
	return ""
}

// unknownCode is the OCI code of "the upstreams do not have it" for this endpoint.
func (r route) unknownCode() string {
	switch r.kind {
	case kindManifest:
		return codeManifestUnknown
	case kindBlob:
		return codeBlobUnknown
	}
	return codeNameUnknown
}

// invalidCode is the OCI code of "the service refused the path" for this endpoint: the front
// checked the reference itself, so what is left is the name.
func (r route) invalidCode() string {
	return codeNameInvalid
}

// tagPattern is the distribution spec's tag grammar.
var tagPattern = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)

// parseRoute maps a request path to a route, or to the OCI error to answer. Names are parsed
// from the right, as the distribution spec and the service do: the last segment is the
// reference and the one before it the endpoint, so a repository called "a/manifests/b" is
// still a name.
func parseRoute(path string) (route, *ociError) {
	if path == "/v2/" || path == "/v2" {
		return route{kind: kindBase}, nil
	}
	rest, ok := strings.CutPrefix(path, "/v2/")
	if !ok || rest == "" {
		return route{}, notFoundEndpoint()
	}
	if name, ok := strings.CutSuffix(rest, "/tags/list"); ok && name != "" {
		return route{kind: kindTags, name: name}, nil
	}
	slash := strings.LastIndexByte(rest, '/')
	if slash <= 0 || slash == len(rest)-1 {
		return route{}, notFoundEndpoint()
	}
	ref := rest[slash+1:]
	head := rest[:slash]
	endpointSlash := strings.LastIndexByte(head, '/')
	if endpointSlash <= 0 {
		return route{}, notFoundEndpoint()
	}
	name, endpoint := head[:endpointSlash], head[endpointSlash+1:]
	switch endpoint {
	case "manifests":
		return manifestRoute(name, ref)
	case "blobs":
		d, err := parseDigest(ref)
		if err != nil {
			return route{}, newOCIError(http.StatusBadRequest, codeDigestInvalid, err.Error())
		}
		return route{kind: kindBlob, name: name, ref: ref, digest: d}, nil
	case "referrers":
		return route{}, newOCIError(http.StatusNotFound, codeUnsupported,
			"this front serves manifests, blobs and tags; the referrers API is not implemented")
	}
	return route{}, notFoundEndpoint()
}

func manifestRoute(name, ref string) (route, *ociError) {
	if strings.Contains(ref, ":") {
		d, err := parseDigest(ref)
		if err != nil {
			return route{}, newOCIError(http.StatusBadRequest, codeDigestInvalid, err.Error())
		}
		return route{kind: kindManifest, name: name, ref: ref, digest: d}, nil
	}
	if !tagPattern.MatchString(ref) {
		return route{}, newOCIError(http.StatusBadRequest, codeManifestInvalid,
			"the manifest reference is neither a valid tag nor a digest")
	}
	return route{kind: kindManifest, name: name, ref: ref}, nil
}

// notFoundEndpoint answers a path that is no read endpoint of the distribution API (the
// spec's 404 for an unsupported endpoint; the blob upload paths are push, answered 405 by
// method before routing).
func notFoundEndpoint() *ociError {
	return newOCIError(http.StatusNotFound, codeNameUnknown, "no such endpoint on this registry")
}
