// Package client is a small Go client for the vregistry UpstreamService.
//
//	c, err := client.New("127.0.0.1:50051", client.WithInsecure(), client.WithTimeout(5*time.Second))
//	if err != nil { ... }
//	defer c.Close()
//	url, err := c.URLFor(ctx, "dockerhub", "library/alpine/manifests/latest")
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
	"errors"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	vregistryv1 "github.com/vregistry/vregistry/clients/go/gen/vregistry/v1"
)

// DefaultTimeout is the per-call deadline applied when neither the context nor WithTimeout
// sets one. It is the same in every vregistry client, and longer than the server's own
// per-request budget (10 s by default), so that the server answers with what its upstreams did
// (UNAVAILABLE and the attempts) before the caller's deadline turns it into DEADLINE_EXCEEDED.
const DefaultTimeout = 30 * time.Second

// Client calls the UpstreamService over one gRPC connection. It is safe for concurrent use.
type Client struct {
	conn    *grpc.ClientConn
	stub    vregistryv1.UpstreamServiceClient
	timeout time.Duration
}

type options struct {
	creds       credentials.TransportCredentials
	timeout     time.Duration
	dialOptions []grpc.DialOption
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
func New(target string, opts ...Option) (*Client, error) {
	o := options{timeout: DefaultTimeout}
	for _, opt := range opts {
		opt(&o)
	}
	if o.creds == nil {
		o.creds = credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS12})
	}
	dial := append([]grpc.DialOption{grpc.WithTransportCredentials(o.creds)}, o.dialOptions...)
	conn, err := grpc.NewClient(target, dial...)
	if err != nil {
		return nil, err
	}
	return &Client{conn: conn, stub: vregistryv1.NewUpstreamServiceClient(conn), timeout: o.timeout}, nil
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
// none does, the *Error's Attempts say what each upstream answered.
func (c *Client) ResolveUpstream(ctx context.Context, registryID, path string, opts ...grpc.CallOption) (*vregistryv1.ResolveUpstreamResponse, error) {
	ctx, cancel := c.withDeadline(ctx)
	defer cancel()
	req := &vregistryv1.ResolveUpstreamRequest{RegistryId: registryID, Path: path}
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
