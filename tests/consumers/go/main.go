// The seed's flow through the vregistry Go client, from a module outside the repository:
// two upstreams, a registry, the upstreams at positions 1 and 2 (ConfigService), then
// ResolveUpstream (UpstreamService). Input: the JSON file in os.Args[1]
// (tests/support/consumers.py describes it). Output: one JSON line on stdout.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"

	"github.com/vregistry/vregistry/clients/go/client"
	vregistryv1 "github.com/vregistry/vregistry/clients/go/gen/vregistry/v1"
)

type upstreamInput struct {
	ID              string   `json:"id"`
	DisplayName     string   `json:"display_name"`
	URL             string   `json:"url"`
	AllowHTTP       bool     `json:"allow_http"`
	RealmAllowHosts []string `json:"realm_allow_hosts"`
	Username        string   `json:"username"`
	Password        string   `json:"password"`
}

type input struct {
	Target string  `json:"target"`
	Token  *string `json:"token"`
	TLS    *struct {
		CA   string  `json:"ca"`
		Cert *string `json:"cert"`
		Key  *string `json:"key"`
	} `json:"tls"`
	Group      string          `json:"group"`
	Upstreams  []upstreamInput `json:"upstreams"`
	RegistryID string          `json:"registry_id"`
	Path       string          `json:"path"`
}

type answer struct {
	UpstreamID string      `json:"upstream_id"`
	Position   int32       `json:"position"`
	URL        string      `json:"url"`
	Digest     string      `json:"digest"`
	MediaType  string      `json:"media_type"`
	Size       int64       `json:"size"`
	Outcomes   [][2]string `json:"outcomes"`
}

func options(in input) []client.Option {
	if in.TLS == nil {
		return []client.Option{client.WithInsecure()}
	}
	cert, key := "", ""
	if in.TLS.Cert != nil && in.TLS.Key != nil {
		cert, key = *in.TLS.Cert, *in.TLS.Key
	}
	return []client.Option{client.WithTLSFiles(in.TLS.CA, cert, key)}
}

func run(in input) (answer, error) {
	opts := options(in)
	if in.Token != nil {
		opts = append(opts, client.WithCallerToken(*in.Token))
	}
	c, err := client.New(in.Target, opts...)
	if err != nil {
		return answer{}, err
	}
	defer c.Close()
	ctx := context.Background()
	admin := c.Config()
	for _, u := range in.Upstreams {
		_, err := admin.CreateUpstream(ctx, in.Group, u.ID, &vregistryv1.UpstreamConfig{
			DisplayName: u.DisplayName, Url: u.URL, AllowHttp: u.AllowHTTP,
			RealmAllowHosts: u.RealmAllowHosts, Username: u.Username, Password: u.Password,
		})
		if err != nil {
			return answer{}, fmt.Errorf("CreateUpstream %s: %w", u.ID, err)
		}
	}
	reg, err := admin.CreateRegistry(ctx, in.Group, in.RegistryID, &vregistryv1.RegistryConfig{DisplayName: "Registry " + in.RegistryID})
	if err != nil {
		return answer{}, fmt.Errorf("CreateRegistry: %w", err)
	}
	for i, u := range in.Upstreams {
		// Each write is conditional on the etag of the one before.
		reg, err = admin.AddUpstream(ctx, reg.GetName(), client.UpstreamName(in.Group, u.ID), int32(i+1), reg.GetEtag())
		if err != nil {
			return answer{}, fmt.Errorf("AddUpstream %s: %w", u.ID, err)
		}
	}
	hit, err := c.ResolveUpstream(ctx, in.RegistryID, in.Path)
	if err != nil {
		return answer{}, fmt.Errorf("ResolveUpstream: %w", err)
	}
	out := answer{
		UpstreamID: hit.GetUpstream().GetId(), Position: hit.GetUpstream().GetPosition(),
		URL: hit.GetUrl(), Digest: hit.GetDigest(), MediaType: hit.GetMediaType(), Size: hit.GetSize(),
		Outcomes: [][2]string{},
	}
	for _, a := range hit.GetAttempts() {
		out.Outcomes = append(out.Outcomes, [2]string{a.GetUpstreamId(), a.GetOutcome().String()})
	}
	return out, nil
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: consumer INPUT.json")
		os.Exit(2)
	}
	data, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	var in input
	if err := json.Unmarshal(data, &in); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	out, err := run(in)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	line, err := json.Marshal(out)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(string(line))
}
