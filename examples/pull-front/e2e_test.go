package main

// The end-to-end test: real skopeo and crane pull through the front (run in-process with the
// command's own run(), flags and all) from the real vregistry-server and registries described
// by the stack file in PULL_FRONT_STACK (tests/system/test_pull_front.py writes it). Without
// the variable these tests skip; the front/ unit tests never need it. When the stack's
// "vregistry" section has "tls", the server is mTLS and every front presents the client
// certificate with the caller token, as a deployment's would.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vregistry/vregistry/examples/pull-front/front"
)

const clientTimeout = 60 * time.Second

type stackFile struct {
	Vregistry struct {
		Target      string `json:"target"`
		CallerToken string `json:"caller_token"`
		// TLS is set when vregistry-server requires mTLS (nil: plaintext on loopback).
		TLS *stackTLS `json:"tls"`
	} `json:"vregistry"`
	Tools struct {
		Skopeo       string `json:"skopeo"`
		SkopeoPolicy string `json:"skopeo_policy"`
		Crane        string `json:"crane"`
	} `json:"tools"`
	WorkDir    string                                  `json:"work_dir"`
	Registries map[string]struct{ Upstreams []string } `json:"registries"`
	Images     []stackImage                            `json:"images"`
}

// stackTLS are PEM files: the CA that signed the server's certificate and the client's.
type stackTLS struct {
	CA   string `json:"ca"`
	Cert string `json:"cert"`
	Key  string `json:"key"`
}

type stackImage struct {
	Name           string   `json:"name"`
	Registry       string   `json:"registry"`
	Repository     string   `json:"repository"`
	Tag            string   `json:"tag"`
	Digest         string   `json:"digest"`
	MediaType      string   `json:"media_type"`
	ExpectUpstream string   `json:"expect_upstream"`
	ExpectPosition int      `json:"expect_position"`
	Blobs          []string `json:"blobs"`
	CorruptBlob    string   `json:"corrupt_blob"`
}

// runningFront is one front started by run() for a registry id.
type runningFront struct {
	addr string
	log  *lineLog
	stop context.CancelFunc
	done chan error
}

var (
	stackOnce sync.Once
	stack     *stackFile
	stackErr  error
	frontsMu  sync.Mutex
	fronts    = map[string]*runningFront{}
)

func TestMain(m *testing.M) {
	code := m.Run()
	if err := stopFronts(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: front shutdown:", err)
		code = 1
	}
	os.Exit(code)
}

// loadStack skips the test without PULL_FRONT_STACK.
func loadStack(t *testing.T) *stackFile {
	t.Helper()
	path := os.Getenv("PULL_FRONT_STACK")
	if path == "" {
		t.Skip("PULL_FRONT_STACK is not set: the e2e tests need the stack of tests/system/test_pull_front.py")
	}
	stackOnce.Do(func() {
		raw, err := os.ReadFile(path)
		if err != nil {
			stackErr = err
			return
		}
		stack = &stackFile{}
		stackErr = json.Unmarshal(raw, stack)
	})
	if stackErr != nil {
		t.Fatalf("stack file: %v", stackErr)
	}
	return stack
}

func image(t *testing.T, s *stackFile, name string) stackImage {
	t.Helper()
	for _, img := range s.Images {
		if img.Name == name {
			return img
		}
	}
	t.Fatalf("the stack has no image %q", name)
	return stackImage{}
}

// lineLog is the front's stderr: every line goes to a file in the work dir (the harness checks
// those for secrets) and is kept for the assertions.
type lineLog struct {
	mu        sync.Mutex
	file      *os.File
	lines     []map[string]any
	partial   []byte
	listening chan string
}

func (l *lineLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, _ = l.file.Write(p)
	l.partial = append(l.partial, p...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		var rec map[string]any
		if json.Unmarshal(l.partial[:i], &rec) == nil {
			l.lines = append(l.lines, rec)
			if rec["msg"] == "listening" {
				if addr, ok := rec["addr"].(string); ok {
					l.listening <- addr
				}
			}
		}
		l.partial = l.partial[i+1:]
	}
	return len(p), nil
}

// records are the logged lines whose msg is msg.
func (l *lineLog) records(msg string) []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, rec := range l.lines {
		if rec["msg"] == msg {
			out = append(out, rec)
		}
	}
	return out
}

// tlsArgs are the front's flags for the stack's server: none for plaintext, else the CA and,
// withClientCert, the client certificate and key (mTLS).
func tlsArgs(s *stackFile, withClientCert bool) []string {
	tls := s.Vregistry.TLS
	if tls == nil {
		return nil
	}
	if !withClientCert {
		return []string{"--tls-ca", tls.CA}
	}
	return []string{"--tls-ca", tls.CA, "--tls-cert", tls.Cert, "--tls-key", tls.Key}
}

// startFront is the front for registryID, started once per test binary with the command's flags:
// a free loopback port, the caller token from a file, mTLS to the server when the stack has it.
func startFront(t *testing.T, s *stackFile, registryID string) *runningFront {
	t.Helper()
	f := startNamedFront(t, s, registryID, registryID, tlsArgs(s, true)...)
	want := "plaintext"
	if s.Vregistry.TLS != nil {
		want = "mtls"
	}
	if got := f.log.records("listening")[0]["vregistry_transport"]; got != want {
		t.Fatalf("the front for %s started with transport %v, want %s", registryID, got, want)
	}
	return f
}

// startNamedFront starts (once per name) a front for registryID with these extra flags; its log
// is front-<name>.log in the work dir.
func startNamedFront(t *testing.T, s *stackFile, name, registryID string, extra ...string) *runningFront {
	t.Helper()
	frontsMu.Lock()
	defer frontsMu.Unlock()
	if f, ok := fronts[name]; ok {
		return f
	}
	tokenFile := filepath.Join(s.WorkDir, "front-caller-token")
	if err := os.WriteFile(tokenFile, []byte(s.Vregistry.CallerToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	file, err := os.Create(filepath.Join(s.WorkDir, "front-"+name+".log"))
	if err != nil {
		t.Fatal(err)
	}
	log := &lineLog{file: file, listening: make(chan string, 1)}
	ctx, stop := context.WithCancel(context.Background())
	f := &runningFront{log: log, stop: stop, done: make(chan error, 1)}
	args := []string{
		"--listen", "127.0.0.1:0", "--vregistry", s.Vregistry.Target, "--registry-id", registryID,
		"--caller-token-file", tokenFile, "--shutdown-grace", "5s", "--log-level", "debug",
	}
	args = append(args, extra...)
	go func() { f.done <- run(ctx, args, func(string) string { return "" }, log) }()
	select {
	case f.addr = <-log.listening:
	case err := <-f.done:
		t.Fatalf("the front %s stopped: %v", name, err)
	case <-time.After(10 * time.Second):
		t.Fatalf("the front %s did not log listening", name)
	}
	fronts[name] = f
	return f
}

func stopFronts() error {
	frontsMu.Lock()
	defer frontsMu.Unlock()
	var errs []string
	for id, f := range fronts {
		f.stop()
		select {
		case err := <-f.done:
			if err != nil {
				errs = append(errs, id+": "+err.Error())
			}
		case <-time.After(15 * time.Second):
			errs = append(errs, id+": did not stop")
		}
		_ = f.log.file.Close()
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return nil
}

// tool runs a client with a bounded time; only 127.0.0.1 addresses are ever passed to it.
func tool(t *testing.T, name string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), clientTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr, cmd.Stdin = &out, &errb, nil
	err = cmd.Run()
	return out.String(), errb.String(), err
}

func skopeoCopy(t *testing.T, s *stackFile, addr string, img stackImage, dir string) (string, error) {
	t.Helper()
	args := []string{}
	if s.Tools.SkopeoPolicy != "" {
		args = append(args, "--policy", s.Tools.SkopeoPolicy)
	}
	args = append(args, "copy", "--src-tls-verify=false",
		"docker://"+addr+"/"+img.Repository+":"+img.Tag, "oci:"+dir+":"+img.Tag)
	_, stderr, err := tool(t, s.Tools.Skopeo, args...)
	return stderr, err
}

func cranePull(t *testing.T, s *stackFile, addr string, img stackImage, dir string) (string, error) {
	t.Helper()
	_, stderr, err := tool(t, s.Tools.Crane, "pull", "--insecure", "--format=oci", addr+"/"+img.Repository+":"+img.Tag, dir)
	return stderr, err
}

// freshDir is a new directory in the work dir (a client writing into an existing layout would
// add to its index); an OCI layout destination must not exist yet, so it is a name inside it.
func freshDir(t *testing.T, s *stackFile, prefix string) string {
	t.Helper()
	parent, err := os.MkdirTemp(s.WorkDir, prefix+"-")
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(parent, "layout")
}

// checkLayout reads an OCI image layout: its one manifest is img's digest, and that manifest
// and every blob of img are there with the right bytes.
func checkLayout(t *testing.T, dir string, img stackImage) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		t.Fatal(err)
	}
	var index struct {
		Manifests []struct {
			Digest string `json:"digest"`
		} `json:"manifests"`
	}
	if err := json.Unmarshal(raw, &index); err != nil || len(index.Manifests) != 1 {
		t.Fatalf("index.json %s: %v", raw, err)
	}
	if got := index.Manifests[0].Digest; got != img.Digest {
		t.Fatalf("%s: pulled manifest %s, want %s", img.Name, got, img.Digest)
	}
	for _, d := range append([]string{img.Digest}, img.Blobs...) {
		alg, hexd, _ := strings.Cut(d, ":")
		data, err := os.ReadFile(filepath.Join(dir, "blobs", alg, hexd))
		if err != nil {
			t.Fatalf("%s: blob %s: %v", img.Name, d, err)
		}
		sum := sha256.Sum256(data)
		if alg != "sha256" || hex.EncodeToString(sum[:]) != hexd {
			t.Fatalf("%s: blob %s holds other bytes", img.Name, d)
		}
	}
}

// checkServedBy says the front's manifest answer for img came from the expected upstream.
func checkServedBy(t *testing.T, f *runningFront, img stackImage) {
	t.Helper()
	path := "/v2/" + img.Repository + "/manifests/" + img.Tag
	var seen []string
	// Bounded wait: the request line is written just after the response went out.
	for deadline := time.Now().Add(2 * time.Second); ; {
		seen = seen[:0]
		for _, rec := range f.log.records("request") {
			if rec["path"] == path && rec["status"] == 200.0 {
				seen = append(seen, fmt.Sprintf("%v@%v", rec["upstream_id"], rec["position"]))
			}
		}
		if len(seen) > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	want := fmt.Sprintf("%s@%d", img.ExpectUpstream, img.ExpectPosition)
	if len(seen) == 0 {
		t.Fatalf("%s: no 200 for %s in the front's log", img.Name, path)
	}
	for _, got := range seen {
		if got != want {
			t.Fatalf("%s: served by %s, want %s", img.Name, got, want)
		}
	}
}

var pulled = []string{"both", "second_only"}

func TestE2ESkopeoCopy(t *testing.T) {
	s := loadStack(t)
	for _, name := range pulled {
		img := image(t, s, name)
		f := startFront(t, s, img.Registry)
		dir := freshDir(t, s, "skopeo-"+name)
		if stderr, err := skopeoCopy(t, s, f.addr, img, dir); err != nil {
			t.Fatalf("skopeo copy %s: %v\n%s", name, err, stderr)
		}
		checkLayout(t, dir, img)
		checkServedBy(t, f, img)
	}
}

func TestE2ECraneDigest(t *testing.T) {
	s := loadStack(t)
	other := image(t, s, "other_copy")
	for _, name := range pulled {
		img := image(t, s, name)
		f := startFront(t, s, img.Registry)
		out, stderr, err := tool(t, s.Tools.Crane, "digest", "--insecure", f.addr+"/"+img.Repository+":"+img.Tag)
		if err != nil {
			t.Fatalf("crane digest %s: %v\n%s", name, err, stderr)
		}
		got := strings.TrimSpace(out)
		if got != img.Digest {
			t.Fatalf("crane digest %s = %s, want %s", name, got, img.Digest)
		}
		if img.Repository == other.Repository && img.Tag == other.Tag && got == other.Digest {
			t.Fatalf("%s came from the position-2 copy", name)
		}
	}
}

func TestE2ECranePull(t *testing.T) {
	s := loadStack(t)
	other := image(t, s, "other_copy")
	for _, name := range pulled {
		img := image(t, s, name)
		f := startFront(t, s, img.Registry)
		dir := freshDir(t, s, "crane-"+name)
		if stderr, err := cranePull(t, s, f.addr, img, dir); err != nil {
			t.Fatalf("crane pull %s: %v\n%s", name, err, stderr)
		}
		checkLayout(t, dir, img)
		checkServedBy(t, f, img)
		if img.Repository == other.Repository {
			for _, b := range other.Blobs {
				if !contains(img.Blobs, b) {
					if _, err := os.Stat(filepath.Join(dir, "blobs", "sha256", strings.TrimPrefix(b, "sha256:"))); err == nil {
						t.Fatalf("%s: crane got a blob of the position-2 copy", name)
					}
				}
			}
		}
	}
}

func TestE2ECraneLs(t *testing.T) {
	s := loadStack(t)
	img := image(t, s, "both")
	f := startFront(t, s, img.Registry)
	out, stderr, err := tool(t, s.Tools.Crane, "ls", "--insecure", f.addr+"/"+img.Repository)
	if err != nil || !contains(strings.Fields(out), img.Tag) {
		t.Fatalf("crane ls: %q %v\n%s", out, err, stderr)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestE2EMissingTag(t *testing.T) {
	s := loadStack(t)
	img := image(t, s, "missing")
	f := startFront(t, s, img.Registry)
	stderr, err := skopeoCopy(t, s, f.addr, img, freshDir(t, s, "skopeo-missing"))
	if err == nil || !strings.Contains(strings.ToLower(stderr), "manifest unknown") {
		t.Fatalf("skopeo of a missing tag: %v\n%s", err, stderr)
	}
	_, stderr, err = tool(t, s.Tools.Crane, "digest", "--insecure", f.addr+"/"+img.Repository+":"+img.Tag)
	if err == nil || !strings.Contains(strings.ToLower(stderr), "manifest_unknown") {
		t.Fatalf("crane digest of a missing tag: %v\n%s", err, stderr)
	}
	stderr, err = cranePull(t, s, f.addr, img, freshDir(t, s, "crane-missing"))
	if err == nil || !strings.Contains(strings.ToLower(stderr), "manifest_unknown") {
		t.Fatalf("crane pull of a missing tag: %v\n%s", err, stderr)
	}
}

func TestE2ECorruptBlob(t *testing.T) {
	s := loadStack(t)
	img := image(t, s, "corrupt")
	f := startFront(t, s, img.Registry)
	if stderr, err := skopeoCopy(t, s, f.addr, img, freshDir(t, s, "skopeo-corrupt")); err == nil {
		t.Fatalf("skopeo copied an image with a corrupt blob\n%s", stderr)
	}
	if stderr, err := cranePull(t, s, f.addr, img, freshDir(t, s, "crane-corrupt")); err == nil {
		t.Fatalf("crane pulled an image with a corrupt blob\n%s", stderr)
	}
	var refused int
	for _, rec := range f.log.records("digest mismatch") {
		if rec["expected"] == img.CorruptBlob && rec["upstream_id"] == "corrupt" && rec["level"] == "ERROR" {
			refused++
		}
	}
	if refused < 2 { // once for each client (a client may retry the blob)
		t.Fatalf("the front logged %d refusals of %s", refused, img.CorruptBlob)
	}
	// The layer is larger than the relay's buffers, so bytes had gone out: the response is cut.
	var cut int
	for _, rec := range f.log.records("request") {
		if rec["aborted"] == true && strings.HasSuffix(fmt.Sprint(rec["path"]), img.CorruptBlob) {
			cut++
		}
	}
	if cut == 0 {
		t.Fatalf("no response for %s was cut off after the mismatch", img.CorruptBlob)
	}
}

// TestE2EFrontNeedsClientCert: a front that trusts the server's CA but has no client
// certificate cannot reach the mTLS vregistry-server (the handshake is refused; the caller
// token alone is not enough). A pull gets the README's answer for a service it cannot reach,
// 503 UNAVAILABLE as an OCI error body, after the one wait-for-ready retry (rpcs: 2) bounded
// by front.DefaultReconnectWait, not a hang; and the front's log holds no caller token.
func TestE2EFrontNeedsClientCert(t *testing.T) {
	s := loadStack(t)
	if s.Vregistry.TLS == nil {
		t.Fatal("the stack's vregistry-server is plaintext: this test needs the mTLS world (pull_world(tls=True))")
	}
	img := image(t, s, "both")
	f := startNamedFront(t, s, img.Registry+"-no-client-cert", img.Registry, tlsArgs(s, false)...)
	if got := f.log.records("listening")[0]["vregistry_transport"]; got != "tls" {
		t.Fatalf("the front without a client certificate started with transport %v, want tls", got)
	}
	path := "/v2/" + img.Repository + "/manifests/" + img.Tag
	httpc := &http.Client{Timeout: front.DefaultReconnectWait + 20*time.Second}
	started := time.Now()
	resp, err := httpc.Get("http://" + f.addr + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	elapsed := time.Since(started)
	var oci struct {
		Errors []struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"errors"`
	}
	if resp.StatusCode != http.StatusServiceUnavailable || json.Unmarshal(body, &oci) != nil ||
		len(oci.Errors) != 1 || oci.Errors[0].Code != "UNAVAILABLE" {
		t.Fatalf("pull without a client certificate: %d %s", resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type %q", ct)
	}
	if limit := front.DefaultReconnectWait + 5*time.Second; elapsed > limit {
		t.Fatalf("the 503 took %s, more than %s", elapsed, limit)
	}
	if strings.Contains(string(body), s.Vregistry.CallerToken) {
		t.Fatal("the error body holds the caller token")
	}
	checkRefusedRequest(t, f, path)
	_ = f.log.file.Sync()
	raw, err := os.ReadFile(f.log.file.Name())
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(raw), s.Vregistry.CallerToken) {
		t.Fatal("the front's log holds the caller token")
	}
}

// checkRefusedRequest: the front logged the failed resolve (503) and the request line, which
// counts the retry that waited for the channel.
func checkRefusedRequest(t *testing.T, f *runningFront, path string) {
	t.Helper()
	servicePath := strings.TrimPrefix(path, "/v2/")
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		var failed, requests int
		for _, rec := range f.log.records("resolve failed") {
			if rec["path"] == servicePath && rec["status"] == 503.0 {
				failed++
			}
		}
		for _, rec := range f.log.records("request") {
			if rec["path"] == path && rec["status"] == 503.0 && rec["rpcs"] == 2.0 {
				requests++
			}
		}
		if failed == 1 && requests == 1 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("front log: %d 'resolve failed' 503 lines and %d 503 request lines with rpcs 2 for %s, want 1 and 1",
				failed, requests, path)
		}
	}
}
