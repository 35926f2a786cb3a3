// Command pull-front is a read-only OCI registry for one vregistry virtual registry: clients
// (docker, containerd, crane, skopeo) pull through it, and it asks vregistry-server which
// upstream has each manifest and blob. See README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/vregistry/vregistry/clients/go/client"

	"github.com/vregistry/vregistry/examples/pull-front/front"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "pull-front:", err)
		if errors.Is(err, errUsage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

var errUsage = errors.New("usage")

// options are the command line, after the environment filled in what the flags left out.
type options struct {
	listen, target, registryID        string
	tokenFile, tlsCA, tlsCert, tlsKey string
	logLevel                          string
	shutdownGrace, upstreamTimeout    time.Duration
	token                             string
}

func parseFlags(args []string, getenv func(string) string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("pull-front", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.listen, "listen", "127.0.0.1:5000", "address to serve the registry API on (port 0: a free one)")
	fs.StringVar(&o.target, "vregistry", envOr(getenv, "VREGISTRY_TARGET", "127.0.0.1:50051"), "gRPC target of vregistry-server [VREGISTRY_TARGET]")
	fs.StringVar(&o.registryID, "registry-id", getenv("VREGISTRY_REGISTRY_ID"), "the virtual registry served (required) [VREGISTRY_REGISTRY_ID]")
	fs.StringVar(&o.tokenFile, "caller-token-file", "", "file holding the caller token (else VREGISTRY_CALLER_TOKEN; none: no token)")
	fs.StringVar(&o.tlsCA, "tls-ca", "", "CA file for TLS to vregistry-server (without it: plaintext)")
	fs.StringVar(&o.tlsCert, "tls-cert", "", "client certificate for mTLS (with --tls-key)")
	fs.StringVar(&o.tlsKey, "tls-key", "", "client key for mTLS (with --tls-cert)")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.DurationVar(&o.shutdownGrace, "shutdown-grace", 10*time.Second, "on SIGTERM/SIGINT, how long in-flight pulls may take to finish")
	fs.DurationVar(&o.upstreamTimeout, "upstream-timeout", front.DefaultUpstreamTimeout, "deadline of one upstream fetch, body included")
	if err := fs.Parse(args); err != nil {
		return nil, fmt.Errorf("%w: %v", errUsage, err)
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	if o.registryID == "" {
		return nil, fmt.Errorf("%w: --registry-id (or VREGISTRY_REGISTRY_ID) is required", errUsage)
	}
	if o.tlsCA == "" && (o.tlsCert != "" || o.tlsKey != "") {
		return nil, fmt.Errorf("%w: --tls-cert and --tls-key need --tls-ca", errUsage)
	}
	o.token = getenv("VREGISTRY_CALLER_TOKEN")
	if o.tokenFile != "" {
		raw, err := os.ReadFile(o.tokenFile)
		if err != nil {
			return nil, fmt.Errorf("%w: --caller-token-file: %v", errUsage, err)
		}
		o.token = strings.TrimSpace(string(raw))
	}
	return o, nil
}

func envOr(getenv func(string) string, name, fallback string) string {
	if v := getenv(name); v != "" {
		return v
	}
	return fallback
}

func newLogger(level string, w io.Writer) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("%w: --log-level %q: debug, info, warn or error", errUsage, level)
	}
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l})), nil
}

// reconnect is the channel's reconnection backoff. gRPC's default starts at 1 s: after a
// restart of vregistry-server the channel would still be waiting out its backoff when the next
// pull comes, and that pull's RPC (and its retries) would fail UNAVAILABLE with the server
// already back (measured: the first pull after a restart got a 503). The service is on
// loopback or in the same cluster, so re-dialing sooner costs nothing.
var reconnect = grpc.ConnectParams{
	Backoff:           backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
	MinConnectTimeout: 5 * time.Second,
}

// run serves until ctx is done (a signal, in main) and returns nil after a clean shutdown.
func run(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) error {
	o, err := parseFlags(args, getenv, stderr)
	if err != nil {
		return err
	}
	log, err := newLogger(o.logLevel, stderr)
	if err != nil {
		return err
	}
	transport := "plaintext"
	copts := []client.Option{client.WithInsecure()}
	if o.tlsCA != "" {
		copts, transport = []client.Option{client.WithTLSFiles(o.tlsCA, o.tlsCert, o.tlsKey)}, "tls"
		if o.tlsCert != "" {
			transport = "mtls"
		}
	}
	if o.token != "" {
		copts = append(copts, client.WithCallerToken(o.token))
	}
	copts = append(copts, client.WithDialOptions(grpc.WithConnectParams(reconnect)))
	vc, err := client.New(o.target, copts...)
	if err != nil {
		return err
	}
	defer func() { _ = vc.Close() }()
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return err
	}
	handler := front.New(front.Config{RegistryID: o.registryID, Resolver: vc, Logger: log, UpstreamTimeout: o.upstreamTimeout})
	log.Info("listening", "addr", ln.Addr().String(), "registry_id", o.registryID, "vregistry", o.target,
		"vregistry_transport", transport, "caller_token", o.token != "")
	err = front.Serve(ctx, ln, handler, o.shutdownGrace)
	log.Info("stopped", "clean", err == nil)
	return err
}
