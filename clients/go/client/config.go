package client

import (
	"context"
	"iter"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	vregistryv1 "github.com/vregistry/vregistry/clients/go/gen/vregistry/v1"
)

// DefaultPageSize is the page size List* asks for when given 0 (the server caps it).
const DefaultPageSize = 100

// GroupName is "groups/{group}", the parent of upstreams and registries; "-" lists every group
// the caller may see.
func GroupName(group string) string { return "groups/" + group }

// UpstreamName is "groups/{group}/upstreams/{id}".
func UpstreamName(group, id string) string { return GroupName(group) + "/upstreams/" + id }

// RegistryName is "groups/{group}/registries/{id}".
func RegistryName(group, id string) string { return GroupName(group) + "/registries/" + id }

// ConfigClient calls the ConfigService: upstreams, registries and their members, with etags
// (a stale one fails with ABORTED, reason ETAG_MISMATCH) and field masks. Get it from
// (*Client).Config; it shares the client's connection, deadline, token and retry policy.
type ConfigClient struct {
	stub     vregistryv1.ConfigServiceClient
	deadline func(context.Context) (context.Context, context.CancelFunc)
}

// Stub returns the generated stub, for calls with options this wrapper does not expose.
func (c *ConfigClient) Stub() vregistryv1.ConfigServiceClient { return c.stub }

// call runs one unary RPC under the client's default deadline and converts its error.
func call[Req, Resp any](c *ConfigClient, ctx context.Context, rpc func(context.Context, Req, ...grpc.CallOption) (Resp, error), req Req, opts []grpc.CallOption) (Resp, error) {
	ctx, cancel := c.deadline(ctx)
	defer cancel()
	reply, err := rpc(ctx, req, opts...)
	if err != nil {
		var zero Resp
		return zero, FromError(err)
	}
	return reply, nil
}

// Mask builds a field mask from plain field names of message m ("display_name", "url"),
// refusing a name m does not have. An empty list gives an empty mask: the server then updates
// the fields set in the request; "*" updates every field.
func Mask(m proto.Message, fields ...string) (*fieldmaskpb.FieldMask, error) {
	if len(fields) == 1 && fields[0] == "*" {
		return &fieldmaskpb.FieldMask{Paths: fields}, nil
	}
	mask, err := fieldmaskpb.New(m, fields...)
	if err != nil {
		// Refused before any call: the same shape as the server's INVALID_ARGUMENT.
		return nil, &Error{Code: codes.InvalidArgument, Message: err.Error(), status: status.New(codes.InvalidArgument, err.Error())}
	}
	return mask, nil
}

// CreateUpstream creates groups/{group}/upstreams/{id}. Username and password are write-only:
// the reply carries HasCredentials instead.
func (c *ConfigClient) CreateUpstream(ctx context.Context, group, id string, upstream *vregistryv1.UpstreamConfig, opts ...grpc.CallOption) (*vregistryv1.UpstreamConfig, error) {
	req := &vregistryv1.CreateUpstreamRequest{Parent: GroupName(group), UpstreamId: id, Upstream: upstream}
	reply, err := call(c, ctx, c.stub.CreateUpstream, req, opts)
	return reply.GetUpstream(), err
}

// GetUpstream reads one upstream by name ("groups/{group}/upstreams/{id}").
func (c *ConfigClient) GetUpstream(ctx context.Context, name string, opts ...grpc.CallOption) (*vregistryv1.UpstreamConfig, error) {
	reply, err := call(c, ctx, c.stub.GetUpstream, &vregistryv1.GetUpstreamRequest{Name: name}, opts)
	return reply.GetUpstream(), err
}

// ListUpstreams yields every upstream of group ("-": every group the caller may see), asking
// for pageSize at a time (0: DefaultPageSize) and following next_page_token. Stop early by
// breaking out of the loop; an error is yielded once, last.
//
//	for up, err := range c.Config().ListUpstreams(ctx, "acme", 0) { ... }
func (c *ConfigClient) ListUpstreams(ctx context.Context, group string, pageSize int32, opts ...grpc.CallOption) iter.Seq2[*vregistryv1.UpstreamConfig, error] {
	return pages(func(token string) ([]*vregistryv1.UpstreamConfig, string, error) {
		req := &vregistryv1.ListUpstreamsRequest{Parent: GroupName(group), PageSize: pageSizeOr(pageSize), PageToken: token}
		reply, err := call(c, ctx, c.stub.ListUpstreams, req, opts)
		return reply.GetUpstreams(), reply.GetNextPageToken(), err
	})
}

// UpdateUpstream changes the named fields ("display_name", "url", "username", "password", ...;
// none: the fields set in upstream; "*": all) of upstream.Name. Set upstream.Etag to the etag
// read before to make the write conditional.
func (c *ConfigClient) UpdateUpstream(ctx context.Context, upstream *vregistryv1.UpstreamConfig, fields []string, opts ...grpc.CallOption) (*vregistryv1.UpstreamConfig, error) {
	mask, err := Mask(&vregistryv1.UpstreamConfig{}, fields...)
	if err != nil {
		return nil, err
	}
	req := &vregistryv1.UpdateUpstreamRequest{Upstream: upstream, UpdateMask: mask}
	reply, err := call(c, ctx, c.stub.UpdateUpstream, req, opts)
	return reply.GetUpstream(), err
}

// DeleteUpstream deletes an upstream (etag "" : unconditionally). One that registries use needs
// force; the reply names the registries it was removed from.
func (c *ConfigClient) DeleteUpstream(ctx context.Context, name, etag string, force bool, opts ...grpc.CallOption) ([]string, error) {
	req := &vregistryv1.DeleteUpstreamRequest{Name: name, Etag: etag, Force: force}
	reply, err := call(c, ctx, c.stub.DeleteUpstream, req, opts)
	return reply.GetRemovedFrom(), err
}

// TestUpstream checks a stored upstream (ping, token exchange, HEAD of path; "" : the server's
// default path) and stores nothing.
func (c *ConfigClient) TestUpstream(ctx context.Context, name, path string, opts ...grpc.CallOption) (*vregistryv1.TestUpstreamResponse, error) {
	req := &vregistryv1.TestUpstreamRequest{Target: &vregistryv1.TestUpstreamRequest_Name{Name: name}, Path: path}
	return call(c, ctx, c.stub.TestUpstream, req, opts)
}

// TestUnsavedUpstream checks an upstream that is not stored (validated like a create).
func (c *ConfigClient) TestUnsavedUpstream(ctx context.Context, upstream *vregistryv1.UpstreamConfig, path string, opts ...grpc.CallOption) (*vregistryv1.TestUpstreamResponse, error) {
	req := &vregistryv1.TestUpstreamRequest{Target: &vregistryv1.TestUpstreamRequest_Upstream{Upstream: upstream}, Path: path}
	return call(c, ctx, c.stub.TestUpstream, req, opts)
}

// CreateRegistry creates groups/{group}/registries/{id} (members are added with AddUpstream).
func (c *ConfigClient) CreateRegistry(ctx context.Context, group, id string, registry *vregistryv1.RegistryConfig, opts ...grpc.CallOption) (*vregistryv1.RegistryConfig, error) {
	req := &vregistryv1.CreateRegistryRequest{Parent: GroupName(group), RegistryId: id, Registry: registry}
	reply, err := call(c, ctx, c.stub.CreateRegistry, req, opts)
	return reply.GetRegistry(), err
}

// GetRegistry reads one registry by name, with its members in position order.
func (c *ConfigClient) GetRegistry(ctx context.Context, name string, opts ...grpc.CallOption) (*vregistryv1.RegistryConfig, error) {
	reply, err := call(c, ctx, c.stub.GetRegistry, &vregistryv1.GetRegistryRequest{Name: name}, opts)
	return reply.GetRegistry(), err
}

// ListRegistries yields every registry of group, like ListUpstreams.
func (c *ConfigClient) ListRegistries(ctx context.Context, group string, pageSize int32, opts ...grpc.CallOption) iter.Seq2[*vregistryv1.RegistryConfig, error] {
	return pages(func(token string) ([]*vregistryv1.RegistryConfig, string, error) {
		req := &vregistryv1.ListRegistriesRequest{Parent: GroupName(group), PageSize: pageSizeOr(pageSize), PageToken: token}
		reply, err := call(c, ctx, c.stub.ListRegistries, req, opts)
		return reply.GetRegistries(), reply.GetNextPageToken(), err
	})
}

// UpdateRegistry changes the named fields ("display_name", "description") of registry.Name,
// conditional on registry.Etag when set.
func (c *ConfigClient) UpdateRegistry(ctx context.Context, registry *vregistryv1.RegistryConfig, fields []string, opts ...grpc.CallOption) (*vregistryv1.RegistryConfig, error) {
	mask, err := Mask(&vregistryv1.RegistryConfig{}, fields...)
	if err != nil {
		return nil, err
	}
	req := &vregistryv1.UpdateRegistryRequest{Registry: registry, UpdateMask: mask}
	reply, err := call(c, ctx, c.stub.UpdateRegistry, req, opts)
	return reply.GetRegistry(), err
}

// DeleteRegistry deletes a registry (etag "": unconditionally); its upstreams stay.
func (c *ConfigClient) DeleteRegistry(ctx context.Context, name, etag string, opts ...grpc.CallOption) error {
	_, err := call(c, ctx, c.stub.DeleteRegistry, &vregistryv1.DeleteRegistryRequest{Name: name, Etag: etag}, opts)
	return err
}

// AddUpstream inserts upstream (a name) into registry at position (1 is tried first; 0
// appends), conditional on the registry's etag when given.
func (c *ConfigClient) AddUpstream(ctx context.Context, registry, upstream string, position int32, etag string, opts ...grpc.CallOption) (*vregistryv1.RegistryConfig, error) {
	req := &vregistryv1.AddUpstreamRequest{Registry: registry, Upstream: upstream, Position: position, Etag: etag}
	reply, err := call(c, ctx, c.stub.AddUpstream, req, opts)
	return reply.GetRegistry(), err
}

// RemoveUpstream takes upstream out of registry; the positions after it close the gap.
func (c *ConfigClient) RemoveUpstream(ctx context.Context, registry, upstream, etag string, opts ...grpc.CallOption) (*vregistryv1.RegistryConfig, error) {
	req := &vregistryv1.RemoveUpstreamRequest{Registry: registry, Upstream: upstream, Etag: etag}
	reply, err := call(c, ctx, c.stub.RemoveUpstream, req, opts)
	return reply.GetRegistry(), err
}

// ReorderUpstreams gives every member of registry its new position (unique, 1..n).
func (c *ConfigClient) ReorderUpstreams(ctx context.Context, registry string, members []*vregistryv1.RegistryMember, etag string, opts ...grpc.CallOption) (*vregistryv1.RegistryConfig, error) {
	req := &vregistryv1.ReorderUpstreamsRequest{Registry: registry, Upstreams: members, Etag: etag}
	reply, err := call(c, ctx, c.stub.ReorderUpstreams, req, opts)
	return reply.GetRegistry(), err
}

func pageSizeOr(n int32) int32 {
	if n <= 0 {
		return DefaultPageSize
	}
	return n
}

// maxPages bounds a listing whose server kept handing out tokens (a bug, not a big group).
const maxPages = 10000

// pages turns a page fetcher into an iterator that follows next_page_token.
func pages[T any](fetch func(token string) ([]T, string, error)) iter.Seq2[T, error] {
	return func(yield func(T, error) bool) {
		token := ""
		for range maxPages {
			items, next, err := fetch(token)
			if err != nil {
				var zero T
				yield(zero, err)
				return
			}
			for _, item := range items {
				if !yield(item, nil) {
					return
				}
			}
			if next == "" {
				return
			}
			token = next
		}
	}
}
