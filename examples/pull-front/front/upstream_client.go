package front

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"
)

// MaxRedirects is how many redirects one upstream fetch follows (a registry to its blob store
// is one; a CDN in front of that, two).
const MaxRedirects = 5

// ResponseHeaderTimeout bounds the wait for an upstream's response headers; the body is
// bounded by the fetch's own deadline (--upstream-timeout), as a blob may be big.
const ResponseHeaderTimeout = 30 * time.Second

// NewUpstreamClient is the HTTP client every request shares: one keep-alive pool per upstream
// host, redirects followed by the front itself (checkRedirect).
func NewUpstreamClient() *http.Client {
	return &http.Client{Transport: NewTransport(), CheckRedirect: checkRedirect}
}

// NewTransport is tuned for a few upstream hosts with many concurrent pulls each.
func NewTransport() *http.Transport {
	dialer := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           dialer.DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: ResponseHeaderTimeout,
		ExpectContinueTimeout: time.Second,
		// Compression off: the bytes relayed must be the upstream's own, byte for byte, for the
		// digest and Content-Length to hold (Go would otherwise ask for gzip and unpack it).
		DisableCompression: true,
	}
}

// errRedirectDowngrade refuses an https upstream sending the front to plain http.
var errRedirectDowngrade = errors.New("the upstream redirected from https to http")

// checkRedirect follows at most MaxRedirects hops and sends the upstream's Authorization only
// to the host it was issued for: a blob store's presigned URL (S3, GCS) carries its own
// authorization in the query, and the upstream's token must not leak to it. Go drops the
// header itself for a different domain, but keeps it for a subdomain or another port; the
// front drops it on any change of host:port.
func checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) > MaxRedirects {
		return fmt.Errorf("stopped after %d redirects", MaxRedirects)
	}
	first := via[0].URL
	if first.Scheme == "https" && req.URL.Scheme != "https" {
		return errRedirectDowngrade
	}
	if req.URL.Host != first.Host {
		req.Header.Del("Authorization")
	}
	return nil
}
