// Package front is a read-only OCI distribution front for one vregistry virtual registry: it
// asks the service which upstream has each manifest, blob or tag list (ResolveUpstream) and
// relays the upstream's answer, verifying digests and lengths while it streams.
package front

import (
	"context"
	"log/slog"
	"net/http"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/vregistry/vregistry/clients/go/client"

	vregistryv1 "github.com/vregistry/vregistry/clients/go/gen/vregistry/v1"
)

// apiVersion is the Docker-Distribution-API-Version every answer carries.
const apiVersion = "registry/2.0"

// DefaultUpstreamTimeout bounds one upstream fetch, body included.
const DefaultUpstreamTimeout = 5 * time.Minute

// Resolver is the part of the vregistry client the front uses; *client.Client is one.
type Resolver interface {
	ResolveUpstream(ctx context.Context, registryID, path string, opts ...grpc.CallOption) (*vregistryv1.ResolveUpstreamResponse, error)
}

// Config is what a Handler needs.
type Config struct {
	// RegistryID is the virtual registry served (the service's registry id).
	RegistryID string
	// Resolver answers ResolveUpstream.
	Resolver Resolver
	// Client fetches from the upstreams; nil means NewUpstreamClient().
	Client *http.Client
	// Logger receives the request lines and errors; nil means slog.Default().
	Logger *slog.Logger
	// UpstreamTimeout bounds one upstream fetch, body included; 0 means DefaultUpstreamTimeout.
	UpstreamTimeout time.Duration
	// ReconnectWait bounds the second, wait-for-ready try of a resolve that failed because the
	// gRPC channel was down (resolve); 0 means DefaultReconnectWait.
	ReconnectWait time.Duration
}

// DefaultReconnectWait is how long a request waits for the channel to vregistry-server to come
// back (a restart, a rolling update) before it is answered 503.
const DefaultReconnectWait = 3 * time.Second

// Handler is the http.Handler of the front.
type Handler struct {
	registryID      string
	resolver        Resolver
	client          *http.Client
	log             *slog.Logger
	upstreamTimeout time.Duration
	reconnectWait   time.Duration
}

// New builds the Handler.
func New(cfg Config) *Handler {
	h := &Handler{
		registryID: cfg.RegistryID, resolver: cfg.Resolver, client: cfg.Client,
		log: cfg.Logger, upstreamTimeout: cfg.UpstreamTimeout, reconnectWait: cfg.ReconnectWait,
	}
	if h.client == nil {
		h.client = NewUpstreamClient()
	}
	if h.log == nil {
		h.log = slog.Default()
	}
	if h.upstreamTimeout <= 0 {
		h.upstreamTimeout = DefaultUpstreamTimeout
	}
	if h.reconnectWait <= 0 {
		h.reconnectWait = DefaultReconnectWait
	}
	return h
}

// ServeHTTP answers the read side of the distribution API; every other method is 405.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rec := &recorder{ResponseWriter: w, started: time.Now()}
	// Deferred so the line is written also when a response is aborted by panic.
	defer h.logRequest(rec, r)
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		methodNotAllowed(r.Method).write(rec, r)
		return
	}
	// The escaped path: a name never holds an escape, so "a%2Fb" must reach the service (and
	// its INVALID_PATH) as it came, not decoded into another repository.
	rt, oerr := parseRoute(r.URL.EscapedPath())
	if oerr != nil {
		oerr.write(rec, r)
		return
	}
	if rt.kind == kindBase {
		writeBase(rec, r)
		return
	}
	h.proxy(rec, r, rt)
}

// writeBase answers GET /v2/: this is a registry, and it asks its clients for no auth.
func writeBase(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Docker-Distribution-API-Version", apiVersion)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", "2")
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write([]byte("{}"))
	}
}

// proxy resolves the path with the service, fetches it from the upstream that has it and
// relays the answer.
func (h *Handler) proxy(w *recorder, r *http.Request, rt route) {
	ctx := r.Context()
	resolved, err := h.resolve(ctx, w, rt.servicePath())
	if err != nil {
		oerr := fromResolveError(rt, err)
		h.log.LogAttrs(ctx, levelFor(oerr.status), "resolve failed",
			slog.String("path", rt.servicePath()), slog.Int("status", oerr.status), slog.String("error", err.Error()))
		oerr.write(w, r)
		return
	}
	w.upstreamID = resolved.GetUpstream().GetId()
	w.position = resolved.GetUpstream().GetPosition()
	w.cacheHit = resolved.GetCacheHit()

	fetchCtx, cancel := context.WithTimeout(ctx, h.upstreamTimeout)
	defer cancel()
	resp, err := h.fetch(fetchCtx, r, rt, resolved)
	if err != nil {
		oerr := fetchError(fetchCtx, err)
		h.log.LogAttrs(ctx, slog.LevelWarn, "upstream fetch failed", slog.String("upstream_id", w.upstreamID),
			slog.String("path", rt.servicePath()), slog.String("error", redactURLError(err)))
		oerr.write(w, r)
		return
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		oerr := fromUpstreamStatus(rt, resp)
		h.log.LogAttrs(ctx, slog.LevelWarn, "upstream answered an error", slog.String("upstream_id", w.upstreamID),
			slog.String("path", rt.servicePath()), slog.Int("upstream_status", resp.StatusCode))
		oerr.write(w, r)
		return
	}
	h.relayResponse(w, r, rt, resolved, resp)
}

// resolve asks the service. A call that failed because the channel itself is down (UNAVAILABLE
// without the service's ErrorInfo: connection refused, the channel in reconnect backoff) is
// tried once more, waiting up to reconnectWait for the channel to be ready: right after a
// restart of the service the channel can still be backing off while the server is back
// (measured: the first pull after a restart got a 503), and a client should not see that blip.
// A service that stays down is answered 503 after reconnectWait, not after the call's deadline.
func (h *Handler) resolve(ctx context.Context, w *recorder, path string) (*vregistryv1.ResolveUpstreamResponse, error) {
	w.rpcs++
	resolved, err := h.resolver.ResolveUpstream(ctx, h.registryID, path)
	if !channelDown(err) {
		return resolved, err
	}
	waitCtx, cancel := context.WithTimeout(ctx, h.reconnectWait)
	defer cancel()
	w.rpcs++
	resolved, retryErr := h.resolver.ResolveUpstream(waitCtx, h.registryID, path, grpc.WaitForReady(true))
	if retryErr != nil && waitCtx.Err() != nil && ctx.Err() == nil {
		return nil, err // still down after the wait: the first answer (UNAVAILABLE) says so
	}
	return resolved, retryErr
}

func channelDown(err error) bool {
	e, ok := client.AsError(client.FromError(err))
	return ok && e.Code == codes.Unavailable && e.Reason == ""
}

func levelFor(status int) slog.Level {
	if status == http.StatusNotFound || status == http.StatusBadRequest {
		return slog.LevelInfo
	}
	return slog.LevelWarn
}
