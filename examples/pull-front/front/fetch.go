package front

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"

	vregistryv1 "github.com/vregistry/vregistry/clients/go/gen/vregistry/v1"
)

// fetch sends the client's method (HEAD or GET) to the URL the service resolved, with the
// headers it returned (Authorization; Accept for manifests). Redirects are followed by the
// client's checkRedirect, never handed to the client.
func (h *Handler) fetch(ctx context.Context, r *http.Request, rt route, resolved *vregistryv1.ResolveUpstreamResponse) (*http.Response, error) {
	target := resolved.GetUrl()
	if rt.kind == kindTags {
		target = withTagsQuery(target, r.URL.Query())
	}
	req, err := http.NewRequestWithContext(ctx, r.Method, target, nil)
	if err != nil {
		return nil, err
	}
	for k, v := range resolved.GetHeaders() {
		req.Header.Set(k, v)
	}
	if rt.kind == kindManifest {
		if accept := clientAccept(r.Header); accept != "" {
			req.Header.Set("Accept", accept)
		}
	}
	return h.client.Do(req)
}

// clientAccept is the client's manifest Accept list, when it sent one that says more than
// "anything" ("" otherwise: the service's list stands). The client's own list wins over the
// service's: a client that asks for Docker schema 2 only (or OCI only) cannot parse the other,
// and crane and skopeo send both kinds themselves.
func clientAccept(h http.Header) string {
	var types []string
	seen := map[string]bool{}
	for _, line := range h.Values("Accept") {
		for _, t := range strings.Split(line, ",") {
			t = strings.TrimSpace(t)
			mt, _, _ := strings.Cut(t, ";")
			mt = strings.TrimSpace(mt)
			if mt == "" || mt == "*/*" || seen[t] {
				continue
			}
			seen[t] = true
			types = append(types, t)
		}
	}
	return strings.Join(types, ", ")
}

// withTagsQuery passes the tag list's pagination (n, last) on, and nothing else.
func withTagsQuery(target string, q url.Values) string {
	pass := url.Values{}
	for _, k := range []string{"n", "last"} {
		if v := q.Get(k); v != "" {
			pass.Set(k, v)
		}
	}
	if len(pass) == 0 {
		return target
	}
	sep := "?"
	if strings.Contains(target, "?") {
		sep = "&"
	}
	return target + sep + pass.Encode()
}

// fetchError answers a fetch that got no response: 504 when the fetch's deadline ran out,
// 502 otherwise (connection refused, a redirect loop or downgrade, a TLS failure).
func fetchError(ctx context.Context, err error) *ociError {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return newOCIError(http.StatusGatewayTimeout, codeUnavailable, "the upstream did not answer in time")
	}
	if errors.Is(err, errRedirectDowngrade) {
		return newOCIError(http.StatusBadGateway, codeUnknown, "the upstream redirected from https to http")
	}
	return newOCIError(http.StatusBadGateway, codeUnknown, "the upstream could not be fetched")
}

// redactURLError is err for the log without the URL's query: a followed redirect's URL can be
// a presigned blob-store URL whose query is a credential.
func redactURLError(err error) string {
	var ue *url.Error
	if !errors.As(err, &ue) {
		return err.Error()
	}
	shown := ue.URL
	if u, perr := url.Parse(ue.URL); perr == nil {
		u.RawQuery, u.Fragment, u.User = "", "", nil
		shown = u.String()
	} else if i := strings.IndexAny(shown, "?#"); i >= 0 {
		shown = shown[:i]
	}
	return ue.Op + " " + shown + ": " + ue.Err.Error()
}
