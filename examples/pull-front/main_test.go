package main

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func env(vars map[string]string) func(string) string {
	return func(k string) string { return vars[k] }
}

func TestFlagsDefaultsAndEnvironment(t *testing.T) {
	o, err := parseFlags(nil, env(map[string]string{
		"VREGISTRY_REGISTRY_ID": "main", "VREGISTRY_TARGET": "127.0.0.1:6000", "VREGISTRY_CALLER_TOKEN": "tok",
	}), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.listen != "127.0.0.1:5000" || o.target != "127.0.0.1:6000" || o.registryID != "main" || o.token != "tok" ||
		o.shutdownGrace != 10*time.Second || o.upstreamTimeout != 5*time.Minute || o.logLevel != "info" {
		t.Fatalf("%+v", o)
	}
}

func TestFlagsWinOverEnvironment(t *testing.T) {
	o, err := parseFlags([]string{"--registry-id", "flag", "--vregistry", "127.0.0.1:7000"},
		env(map[string]string{"VREGISTRY_REGISTRY_ID": "env", "VREGISTRY_TARGET": "127.0.0.1:6000"}), io.Discard)
	if err != nil || o.registryID != "flag" || o.target != "127.0.0.1:7000" {
		t.Fatalf("%+v %v", o, err)
	}
}

func TestCallerTokenFileWinsOverEnvironment(t *testing.T) {
	file := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(file, []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	o, err := parseFlags([]string{"--registry-id", "r", "--caller-token-file", file},
		env(map[string]string{"VREGISTRY_CALLER_TOKEN": "from-env"}), io.Discard)
	if err != nil || o.token != "from-file" {
		t.Fatalf("%+v %v", o, err)
	}
}

func TestBadCommandLinesAreUsageErrors(t *testing.T) {
	for name, args := range map[string][]string{
		"no registry id":     {},
		"cert without ca":    {"--registry-id", "r", "--tls-cert", "c", "--tls-key", "k"},
		"missing token file": {"--registry-id", "r", "--caller-token-file", "/nonexistent/token"},
		"stray argument":     {"--registry-id", "r", "extra"},
		"unknown flag":       {"--registry-id", "r", "--push"},
	} {
		if _, err := parseFlags(args, env(nil), io.Discard); !errors.Is(err, errUsage) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := newLogger("loud", io.Discard); !errors.Is(err, errUsage) {
		t.Errorf("log level: %v", err)
	}
}

func TestTLSFileThatCannotBeReadStopsTheStart(t *testing.T) {
	args := []string{"--registry-id", "r", "--listen", "127.0.0.1:0", "--tls-ca", "/nonexistent/ca.pem"}
	if err := run(t.Context(), args, env(nil), io.Discard); err == nil {
		t.Fatal("run started without its CA file")
	}
}
