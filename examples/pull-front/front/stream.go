package front

import (
	"errors"
	"log/slog"
	"mime"
	"net/http"
	"strconv"
	"strings"

	vregistryv1 "github.com/vregistry/vregistry/clients/go/gen/vregistry/v1"
)

// relayResponse answers the client with the upstream's 200: its headers, and for a GET the
// body, verified as it streams (relay). A failed check before any byte went out is answered
// 502; after that, the response is aborted (http.ErrAbortHandler): the connection is cut
// short of the Content-Length (or of the final chunk), so no client takes it as complete.
func (h *Handler) relayResponse(w *recorder, r *http.Request, rt route, resolved *vregistryv1.ResolveUpstreamResponse, resp *http.Response) {
	want, oerr := h.expectationFor(r, rt, resolved, resp, w.upstreamID)
	if oerr != nil {
		oerr.write(w, r)
		return
	}
	commit := func() {
		passHeaders(w.Header(), resp, rt, want)
		w.WriteHeader(http.StatusOK)
	}
	if r.Method == http.MethodHead {
		commit()
		return
	}
	_, committed, err := relay(w, resp.Body, want, commit)
	if err == nil {
		return
	}
	var ce *contentError
	var we *clientWriteError
	switch {
	case errors.As(err, &ce):
		h.log.LogAttrs(r.Context(), slog.LevelError, ce.kind.Error(), slog.String("upstream_id", w.upstreamID),
			slog.String("path", rt.servicePath()), slog.String("expected", ce.want), slog.String("got", ce.got))
	case errors.As(err, &we):
		// The client went away; there is nobody to answer.
		h.log.LogAttrs(r.Context(), slog.LevelDebug, "client write failed", slog.String("path", rt.servicePath()))
		return
	default:
		h.log.LogAttrs(r.Context(), slog.LevelWarn, "upstream body failed", slog.String("upstream_id", w.upstreamID),
			slog.String("path", rt.servicePath()), slog.String("error", redactURLError(err)))
	}
	if !committed {
		newOCIError(http.StatusBadGateway, codeUnknown, "the upstream's content failed verification").write(w, r)
		return
	}
	w.aborted = true
	panic(http.ErrAbortHandler)
}

// expectationFor is what the body must match. A blob and a manifest by digest must match the
// requested digest (and the upstream must not claim another one). A manifest by tag must match
// the digest the service resolved when the upstream serves the same media type (the same
// representation); else the upstream's own Docker-Content-Digest, if any. The length is the
// upstream's Content-Length, which for a blob must equal the size the service resolved.
func (h *Handler) expectationFor(r *http.Request, rt route, resolved *vregistryv1.ResolveUpstreamResponse, resp *http.Response, upstreamID string) (expectation, *ociError) {
	want := expectation{length: resp.ContentLength}
	claimed := resp.Header.Get("Docker-Content-Digest")
	mismatch := func(what, expected, got string) *ociError {
		h.log.LogAttrs(r.Context(), slog.LevelError, what, slog.String("upstream_id", upstreamID),
			slog.String("path", rt.servicePath()), slog.String("expected", expected), slog.String("got", got))
		return newOCIError(http.StatusBadGateway, codeUnknown, "the upstream's answer does not match the requested content")
	}
	if rt.digest != nil {
		want.digest = rt.digest
		if claimed != "" && claimed != rt.ref {
			return want, mismatch("digest mismatch", rt.ref, claimed)
		}
		if size := resolved.GetSize(); rt.kind == kindBlob && size >= 0 && want.length >= 0 && size != want.length {
			return want, mismatch("content length mismatch", strconv.FormatInt(size, 10), strconv.FormatInt(want.length, 10))
		}
		return want, nil
	}
	if rt.kind != kindManifest {
		return want, nil
	}
	expected := claimed
	if d := resolved.GetDigest(); d != "" && sameMediaType(resp.Header.Get("Content-Type"), resolved.GetMediaType()) {
		expected = d
	}
	if expected == "" {
		return want, nil
	}
	d, err := parseDigest(expected)
	if err != nil {
		return want, mismatch("digest unusable", "a digest", expected)
	}
	want.digest = d
	return want, nil
}

func sameMediaType(a, b string) bool {
	ma, _, errA := mime.ParseMediaType(a)
	mb, _, errB := mime.ParseMediaType(b)
	return errA == nil && errB == nil && ma == mb
}

// passHeaders sets the response headers from the upstream's: only those the distribution API
// defines for the answer, never the upstream's cookies, auth challenges or Location.
func passHeaders(dst http.Header, resp *http.Response, rt route, want expectation) {
	dst.Set("Docker-Distribution-API-Version", apiVersion)
	for _, k := range []string{"Content-Type", "Docker-Content-Digest", "ETag", "Last-Modified"} {
		if v := resp.Header.Get(k); v != "" {
			dst.Set(k, v)
		}
	}
	if dst.Get("Content-Type") == "" {
		dst["Content-Type"] = nil // no type from the upstream: none to the client (net/http would sniff one)
	}
	if dst.Get("Docker-Content-Digest") == "" && want.digest != nil && rt.kind != kindTags {
		dst.Set("Docker-Content-Digest", want.digest.String())
	}
	if resp.ContentLength >= 0 {
		dst.Set("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
	}
	// The tag list's pagination: the upstream's link is a path below /v2/ of the same name,
	// which is this front's path too; anything else (an absolute URL) is not passed.
	if link := resp.Header.Get("Link"); rt.kind == kindTags && strings.HasPrefix(link, "</v2/") {
		dst.Set("Link", link)
	}
}
