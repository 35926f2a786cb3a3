package client_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/vregistry/vregistry/clients/go/client"
	vregistryv1 "github.com/vregistry/vregistry/clients/go/gen/vregistry/v1"
)

// The README's example; compiled by go vet and go test (it has no Output, so it is not run).
func ExampleNew() {
	c, err := client.New("127.0.0.1:50051", client.WithInsecure(), client.WithTimeout(5*time.Second))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	url, err := c.URLFor(ctx, "dockerhub", "library/alpine/manifests/latest")
	if err != nil {
		log.Fatal(err)
	}
	auth, err := c.GetAuthHeaders(ctx, "dockerhub", "library/alpine", nil) // nil actions: pull
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(url, auth.GetScheme(), auth.GetHeaders()["Authorization"] != "", auth.GetCacheHit())
	hit, err := c.ResolveUpstream(ctx, "default", "library/alpine/manifests/latest")
	if e, ok := client.AsError(err); ok {
		if e.ReasonCode() == vregistryv1.ErrorReason_NOT_FOUND_ON_UPSTREAMS {
			fmt.Println("on no upstream:", e.Metadata["path"])
		}
		fmt.Println(e.Code, e.Reason, e.Metadata)
		for _, a := range e.Attempts {
			fmt.Println(a.GetUpstreamId(), a.GetOutcome(), a.GetHttpStatus(), a.GetMessage())
		}
		return
	}
	fmt.Println(hit.GetUpstream().GetId(), hit.GetUrl(), hit.GetDigest(), hit.GetHeaders())
}

// The seed's flow through ConfigService, over mTLS with a caller token (the README's example).
func ExampleClient_Config() {
	c, err := client.New("vregistry.example:50051",
		client.WithTLSFiles("ca.crt", "client.crt", "client.key"),
		client.WithCallerToken("token-of-an-admin-caller"))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	admin := c.Config()
	up, err := admin.CreateUpstream(ctx, "acme", "dockerhub", &vregistryv1.UpstreamConfig{DisplayName: "Docker Hub", Url: "https://registry-1.docker.io"})
	if err != nil {
		log.Fatal(err)
	}
	reg, err := admin.CreateRegistry(ctx, "acme", "default", &vregistryv1.RegistryConfig{DisplayName: "Default"})
	if err != nil {
		log.Fatal(err)
	}
	if _, err := admin.AddUpstream(ctx, reg.GetName(), up.GetName(), 1, reg.GetEtag()); err != nil {
		log.Fatal(err)
	}
	for u, err := range admin.ListUpstreams(ctx, "acme", 0) {
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(u.GetName(), u.GetEtag(), u.GetHasCredentials())
	}
	// A conditional rename: fails with ETAG_MISMATCH if someone changed it since.
	renamed := &vregistryv1.UpstreamConfig{Name: up.GetName(), Etag: up.GetEtag(), DisplayName: "Hub"}
	if _, err := admin.UpdateUpstream(ctx, renamed, []string{"display_name"}); err != nil {
		if e, ok := client.AsError(err); ok && e.ReasonCode() == vregistryv1.ErrorReason_ETAG_MISMATCH {
			fmt.Println("changed meanwhile; read it again")
		}
	}
}
