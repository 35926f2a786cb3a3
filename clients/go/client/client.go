// Package client is a Go client for the vregistry UpstreamService and, through Config, the
// ConfigService (the admin API).
//
//	c, err := client.New("127.0.0.1:50051", client.WithInsecure(), client.WithTimeout(5*time.Second))
//	if err != nil { ... }
//	defer c.Close()
//	url, err := c.URLFor(ctx, "dockerhub", "library/alpine/manifests/latest")
//	up, err := c.Config().CreateUpstream(ctx, "acme", "ghcr", &vregistryv1.UpstreamConfig{Url: "https://ghcr.io"})
//
// The connection uses the service config in service_config.json (a copy of
// clients/service_config.json, the one definition for every vregistry client): calls that end
// UNAVAILABLE are retried by gRPC (retryPolicy), and the addresses of a "dns:///host:port"
// target (a Kubernetes headless Service) are used round-robin.
//
// Every method takes a context.Context; when it carries no deadline, the client's default
// timeout applies (DefaultTimeout, 30 s; WithTimeout changes it). Failed calls return an *Error
// carrying the gRPC status code, the google.rpc.ErrorInfo reason (Reason, and ReasonCode as the
// generated vregistryv1.ErrorReason) and metadata, and, for ResolveUpstream, every upstream's
// attempt (decoded from the vregistry.v1.ResolveUpstreamFailure status detail).
package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	_ "embed"
	"errors"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	vregistryv1 "github.com/vregistry/vregistry/clients/go/gen/vregistry/v1"
)

// DefaultTimeout is the per-call deadline applied when neither the context nor WithTimeout
// sets one. It is the same in every vregistry client, and longer than the server's own
// per-request budget (10 s by default), so that the server answers with what its upstreams did
// (UNAVAILABLE and the attempts) before the caller's deadline turns it into DEADLINE_EXCEEDED.
const DefaultTimeout = 30 * time.Second

// ServiceConfig is the gRPC service config every connection starts with (WithServiceConfig
// replaces it): retries of UNAVAILABLE and round_robin load balancing.
//
//go:embed service_config.json
var ServiceConfig string

// Client calls the UpstreamService, and through Config the ConfigService, over one gRPC
// connection. It is safe for concurrent use.
type Client struct {
	conn    *grpc.ClientConn
	stub    vregistryv1.UpstreamServiceClient
	config  *ConfigClient
	timeout time.Duration
}

type options struct {
	creds         credentials.TransportCredentials
	tlsErr        error
	timeout       time.Duration
	token         string
	serviceConfig string
	dialOptions   []grpc.DialOption
}

// Option configures New.
type Option func(*options)

// WithInsecure talks plaintext gRPC (a loopback or sidecar-encrypted connection).
func WithInsecure() Option {
	return func(o *options) { o.creds = insecure.NewCredentials() }
}

// WithTLS talks gRPC over TLS with the given configuration (nil: the system roots).
func WithTLS(cfg *tls.Config) Option {
	return func(o *options) {
		if cfg == nil {
			cfg = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		o.creds = credentials.NewTLS(cfg)
	}
}

// WithTransportCredentials uses any gRPC transport credentials (mTLS, ALTS, xDS...).
func WithTransportCredentials(creds credentials.TransportCredentials) Option {
	return func(o *options) { o.creds = creds }
}

// WithTLSFiles talks TLS trusting the CA in caFile (PEM; "" means the system roots) and, when
// certFile and keyFile are given, presents that client certificate (mTLS). A file that cannot
// be read or parsed makes New fail.
func WithTLSFiles(caFile, certFile, keyFile string) Option {
	return func(o *options) {
		cfg, err := tlsConfigFromFiles(caFile, certFile, keyFile)
		if err != nil {
			o.tlsErr = err
			return
		}
		o.creds = credentials.NewTLS(cfg)
	}
}

func tlsConfigFromFiles(caFile, certFile, keyFile string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("vregistry: CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("vregistry: CA file %s holds no PEM certificate", caFile)
		}
		cfg.RootCAs = pool
	}
	if (certFile == "") != (keyFile == "") {
		return nil, errors.New("vregistry: give both the client certificate and its key, or neither")
	}
	if certFile != "" {
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("vregistry: client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

// WithCallerToken sends "authorization: Bearer <token>" on every call (the caller token of
// the server's --callers-file); CallerToken overrides it for one call.
func WithCallerToken(token string) Option {
	return func(o *options) { o.token = token }
}

// WithServiceConfig replaces ServiceConfig (a gRPC service config JSON document).
func WithServiceConfig(json string) Option {
	return func(o *options) { o.serviceConfig = json }
}

// WithTimeout sets the deadline of a call whose context has none; 0 disables it.
func WithTimeout(d time.Duration) Option {
	return func(o *options) { o.timeout = d }
}

// WithDialOptions passes extra options to grpc.NewClient (interceptors, keepalive, ...).
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(o *options) { o.dialOptions = append(o.dialOptions, opts...) }
}

// New creates a client for target ("host:port" or any gRPC target URI). Without WithInsecure,
// WithTLS or WithTransportCredentials it uses TLS with the system roots. The connection is made
// lazily, on the first call.
//
// A "dns:///host:port" target resolves every address of host and spreads calls over them
// (round_robin, from the service config).
func New(target string, opts ...Option) (*Client, error) {
	o := options{timeout: DefaultTimeout, serviceConfig: ServiceConfig}
	for _, opt := range opts {
		opt(&o)
	}
	if o.tlsErr != nil {
		return nil, o.tlsErr
	}
	if o.creds == nil {
		o.creds = credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS12})
	}
	dial := []grpc.DialOption{grpc.WithTransportCredentials(o.creds)}
	if o.serviceConfig != "" {
		dial = append(dial, grpc.WithDefaultServiceConfig(o.serviceConfig))
	}
	dial = append(dial, grpc.WithChainUnaryInterceptor(tokenInterceptor(o.token)))
	dial = append(dial, o.dialOptions...)
	conn, err := grpc.NewClient(target, dial...)
	if err != nil {
		return nil, err
	}
	c := &Client{conn: conn, stub: vregistryv1.NewUpstreamServiceClient(conn), timeout: o.timeout}
	c.config = &ConfigClient{stub: vregistryv1.NewConfigServiceClient(conn), deadline: c.withDeadline}
	return c, nil
}

// Config is the ConfigService client over the same connection (the admin API: role admin).
func (c *Client) Config() *ConfigClient { return c.config }

// callerToken is the per-call option CallerToken; tokenInterceptor reads it.
type callerToken struct {
	grpc.EmptyCallOption
	token string
}

// CallerToken is a per-call option: send this caller token on this call only, in place of the
// client's WithCallerToken ("" sends none).
func CallerToken(token string) grpc.CallOption { return callerToken{token: token} }

// tokenInterceptor sends "authorization: Bearer <token>": the call's CallerToken, else the
// client's. Metadata on the context goes with every retry attempt. Over WithInsecure the token
// travels in the clear, which is right only on loopback or behind a mesh sidecar that encrypts
// the hop.
func tokenInterceptor(clientToken string) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		token := clientToken
		for _, opt := range opts {
			if t, ok := opt.(callerToken); ok {
				token = t.token
			}
		}
		if token != "" {
			ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Stub returns the generated stub, for calls with options this wrapper does not expose.
func (c *Client) Stub() vregistryv1.UpstreamServiceClient { return c.stub }

func (c *Client) withDeadline(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok || c.timeout <= 0 {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, c.timeout)
}

// URLFor returns "{upstream url}/v2/{path}" after the server checked path against the OCI
// distribution grammar.
func (c *Client) URLFor(ctx context.Context, upstreamID, path string, opts ...grpc.CallOption) (string, error) {
	ctx, cancel := c.withDeadline(ctx)
	defer cancel()
	reply, err := c.stub.UrlFor(ctx, &vregistryv1.UrlForRequest{UpstreamId: upstreamID, Path: path}, opts...)
	if err != nil {
		return "", FromError(err)
	}
	return reply.GetUrl(), nil
}

// GetAuthHeaders returns the headers that authorize actions (none: "pull") on path's
// repository on the upstream.
func (c *Client) GetAuthHeaders(ctx context.Context, upstreamID, path string, actions []string, opts ...grpc.CallOption) (*vregistryv1.GetAuthHeadersResponse, error) {
	ctx, cancel := c.withDeadline(ctx)
	defer cancel()
	req := &vregistryv1.GetAuthHeadersRequest{UpstreamId: upstreamID, Path: path, Actions: actions}
	reply, err := c.stub.GetAuthHeaders(ctx, req, opts...)
	if err != nil {
		return nil, FromError(err)
	}
	return reply, nil
}

// ResolveUpstream finds the first upstream of the registry, by position, that has path. When
// none does, the *Error's Attempts say what each upstream answered. The reply's CacheHit,
// Stale and CheckedAt say whether the server answered from its resolution cache.
func (c *Client) ResolveUpstream(ctx context.Context, registryID, path string, opts ...grpc.CallOption) (*vregistryv1.ResolveUpstreamResponse, error) {
	return c.Resolve(ctx, &vregistryv1.ResolveUpstreamRequest{RegistryId: registryID, Path: path}, opts...)
}

// Resolve is ResolveUpstream with the whole request, e.g. Refresh: true to check the upstreams
// even when the server holds a cached answer.
func (c *Client) Resolve(ctx context.Context, req *vregistryv1.ResolveUpstreamRequest, opts ...grpc.CallOption) (*vregistryv1.ResolveUpstreamResponse, error) {
	ctx, cancel := c.withDeadline(ctx)
	defer cancel()
	reply, err := c.stub.ResolveUpstream(ctx, req, opts...)
	if err != nil {
		return nil, FromError(err)
	}
	return reply, nil
}

// AsError returns err's *Error, if it is or wraps one.
func AsError(err error) (*Error, bool) {
	var e *Error
	ok := errors.As(err, &e)
	return e, ok
}
