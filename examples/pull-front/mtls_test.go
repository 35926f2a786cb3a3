package main

// The command's gRPC channel: mTLS with --tls-ca/--tls-cert/--tls-key and the caller token,
// against a gRPC server on 127.0.0.1 that requires a client certificate. Its ResolveUpstream is
// the fake answer (the e2e test runs the same flags against the real, mTLS vregistry-server);
// the upstream is a real httptest server.

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	vregistryv1 "github.com/vregistry/vregistry/clients/go/gen/vregistry/v1"
)

type testPKI struct {
	caFile, serverCert, serverKey, clientCert, clientKey string
}

func writePEM(t *testing.T, path, kind string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// newPKI makes a CA, a server certificate for 127.0.0.1 and a client certificate.
func newPKI(t *testing.T) testPKI {
	t.Helper()
	dir := t.TempDir()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	p := testPKI{caFile: filepath.Join(dir, "ca.pem")}
	writePEM(t, p.caFile, "CERTIFICATE", caDER)
	leaf := func(name string, serial int64, usage x509.ExtKeyUsage, ips []net.IP) (string, string) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}, IPAddresses: ips,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		keyDER, _ := x509.MarshalECPrivateKey(key)
		certFile, keyFile := filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
		writePEM(t, certFile, "CERTIFICATE", der)
		writePEM(t, keyFile, "EC PRIVATE KEY", keyDER)
		return certFile, keyFile
	}
	p.serverCert, p.serverKey = leaf("server", 2, x509.ExtKeyUsageServerAuth, []net.IP{net.ParseIP("127.0.0.1")})
	p.clientCert, p.clientKey = leaf("pull-front", 3, x509.ExtKeyUsageClientAuth, nil)
	return p
}

// resolverServer answers ResolveUpstream only to the right caller token over a verified
// client certificate.
type resolverServer struct {
	vregistryv1.UnimplementedUpstreamServiceServer
	upstream string
}

func (s *resolverServer) ResolveUpstream(ctx context.Context, req *vregistryv1.ResolveUpstreamRequest) (*vregistryv1.ResolveUpstreamResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	if got := md.Get("authorization"); len(got) != 1 || got[0] != "Bearer mtls-token" {
		return nil, status.Error(codes.Unauthenticated, "no caller token")
	}
	p, ok := peer.FromContext(ctx)
	info, isTLS := p.AuthInfo.(credentials.TLSInfo)
	if !ok || !isTLS || len(info.State.VerifiedChains) == 0 || info.State.PeerCertificates[0].Subject.CommonName != "pull-front" {
		return nil, status.Error(codes.PermissionDenied, "no client certificate")
	}
	return &vregistryv1.ResolveUpstreamResponse{
		Upstream: &vregistryv1.Upstream{Id: "up", Position: 1, Url: s.upstream},
		Url:      s.upstream + "/v2/" + req.GetPath(), Size: -1,
	}, nil
}

func TestRunOverMTLSWithCallerToken(t *testing.T) {
	blob := []byte("a layer over mtls")
	sum := sha256.Sum256(blob)
	dgst := "sha256:" + hex.EncodeToString(sum[:])
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(blob) }))
	t.Cleanup(up.Close)

	pki := newPKI(t)
	serverPair, err := tls.LoadX509KeyPair(pki.serverCert, pki.serverKey)
	if err != nil {
		t.Fatal(err)
	}
	caPEM, _ := os.ReadFile(pki.caFile)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	creds := credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{serverPair}, ClientCAs: pool,
		ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12,
	})
	gs := grpc.NewServer(grpc.Creds(creds))
	vregistryv1.RegisterUpstreamServiceServer(gs, &resolverServer{upstream: up.URL})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(ln) }()
	t.Cleanup(gs.Stop)

	logR, logW := io.Pipe()
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	args := []string{
		"--listen", "127.0.0.1:0", "--vregistry", ln.Addr().String(), "--registry-id", "r",
		"--tls-ca", pki.caFile, "--tls-cert", pki.clientCert, "--tls-key", pki.clientKey,
	}
	go func() {
		done <- run(ctx, args, env(map[string]string{"VREGISTRY_CALLER_TOKEN": "mtls-token"}), logW)
		_ = logW.Close()
	}()
	lines := bufio.NewScanner(logR)
	var start map[string]any
	if !lines.Scan() || json.Unmarshal(lines.Bytes(), &start) != nil || start["msg"] != "listening" {
		stop()
		t.Fatalf("first log line %q", lines.Text())
	}
	go func() { _, _ = io.Copy(io.Discard, logR) }() // keep the pipe drained
	if start["vregistry_transport"] != "mtls" {
		t.Fatalf("start line %v", start)
	}
	resp, err := http.Get("http://" + start["addr"].(string) + "/v2/app/blobs/" + dgst)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != string(blob) {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("run did not return after the stop")
	}
}
