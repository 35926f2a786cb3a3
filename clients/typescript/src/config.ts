// A promise-based client for vregistry.v1.ConfigService: one method per RPC, requests as
// partial messages, resources (not response envelopes) returned, List* as async iterators,
// update masks from plain field names, etags passed through as the server sends them.
import type { ChannelCredentials, ChannelInterface, ChannelOptions } from "@grpc/grpc-js";

import {
  buildChannelOptions,
  buildCredentials,
  type CallDefaults,
  checkedDefaults,
  type RpcOptions,
  unary,
  type VRegistryClientOptions,
} from "./channel";
import {
  AddUpstreamRequest,
  ConfigServiceClient,
  CreateRegistryRequest,
  CreateUpstreamRequest,
  type DeepPartial,
  DeleteRegistryRequest,
  DeleteUpstreamRequest,
  GetRegistryRequest,
  GetUpstreamRequest,
  ListRegistriesRequest,
  type ListRegistriesResponse,
  ListUpstreamsRequest,
  type ListUpstreamsResponse,
  RegistryConfig,
  type RegistryMember,
  RemoveUpstreamRequest,
  ReorderUpstreamsRequest,
  TestUpstreamRequest,
  type TestUpstreamResponse,
  UpdateRegistryRequest,
  UpdateUpstreamRequest,
  UpstreamConfig,
} from "./gen/vregistry/v1/config_service";

/** "groups/{group}"; a name that already starts with "groups/" is kept. `"-"`: every group. */
export function groupName(group: string): string {
  return group.startsWith("groups/") ? group : `groups/${group}`;
}

/** "groups/{group}/upstreams/{upstreamId}". */
export function upstreamName(group: string, upstreamId: string): string {
  return `${groupName(group)}/upstreams/${upstreamId}`;
}

/** "groups/{group}/registries/{registryId}". */
export function registryName(group: string, registryId: string): string {
  return `${groupName(group)}/registries/${registryId}`;
}

/**
 * An update mask from plain field names: `["displayName", "url"]` or `["display_name", "url"]`
 * both give the proto paths `["display_name", "url"]`; `"*"` stays `"*"`.
 */
export function fieldMask(fields: readonly string[]): string[] {
  return fields.map((field) => field.replace(/[A-Z]/g, (letter) => `_${letter.toLowerCase()}`));
}

/** A request whose `updateMask` may hold plain (camelCase or snake_case) field names. */
type WithMask<T> = Omit<DeepPartial<T>, "updateMask"> & { updateMask?: readonly string[] };

/** A bound on pages per listing, so a server that repeated its page tokens cannot spin us. */
const MAX_PAGES = 100_000;

/** Walks every page of a List* RPC, yielding the items one by one. */
async function* pages<Item>(
  first: string,
  fetch: (pageToken: string) => Promise<{ items: Item[]; nextPageToken: string }>,
): AsyncGenerator<Item, void, undefined> {
  let token = first;
  const seen = new Set<string>();
  for (let page = 0; page < MAX_PAGES; page += 1) {
    const { items, nextPageToken } = await fetch(token);
    // Checked before this page's items: a repeated token would serve them a second time.
    if (nextPageToken && seen.has(nextPageToken)) {
      throw new Error(`ConfigClient: the server repeated page token ${JSON.stringify(nextPageToken)}`);
    }
    yield* items;
    if (!nextPageToken) {
      return;
    }
    seen.add(nextPageToken);
    token = nextPageToken;
  }
  throw new Error(`ConfigClient: more than ${MAX_PAGES} pages`);
}

function present<T>(value: T | undefined, what: string): T {
  if (value === undefined) {
    throw new Error(`ConfigClient: the server's reply has no ${what}`);
  }
  return value;
}

/**
 * vregistry.v1.ConfigService (the admin API: upstreams, registries and their order).
 *
 * Every method rejects with a {@link VRegistryError}; its `reasonCode` is the generated
 * `ErrorReason` (e.g. `ABORTED` with a stale etag, `ALREADY_EXISTS` with `DUPLICATE_UPSTREAM`).
 * Construct it alone, or use `VRegistryClient.config`, which shares that client's channel.
 */
export class ConfigClient {
  /** The generated @grpc/grpc-js client, for anything the wrapper does not cover. */
  readonly stub: ConfigServiceClient;
  private readonly defaults: CallDefaults;
  private readonly ownsChannel: boolean;

  constructor(options: VRegistryClientOptions, shared?: ChannelInterface) {
    this.defaults = checkedDefaults(options);
    const credentials: ChannelCredentials = buildCredentials(options);
    const channelOptions: ChannelOptions = shared ? { channelOverride: shared } : buildChannelOptions(options);
    this.stub = new ConfigServiceClient(options.target, credentials, channelOptions);
    this.ownsChannel = shared === undefined;
  }

  // --- upstreams ------------------------------------------------------------------------------

  /** CreateUpstream: `{ parent: "groups/acme", upstreamId, upstream: { displayName, url, ... } }`. */
  async createUpstream(request: DeepPartial<CreateUpstreamRequest>, options?: RpcOptions): Promise<UpstreamConfig> {
    const full = CreateUpstreamRequest.fromPartial(request);
    full.parent = groupName(full.parent);
    const reply = await unary(this.stub, this.stub.createUpstream, full, this.defaults, options);
    return present(reply.upstream, "upstream");
  }

  /** GetUpstream by resource name ("groups/acme/upstreams/dockerhub"). */
  async getUpstream(name: string, options?: RpcOptions): Promise<UpstreamConfig> {
    const request = GetUpstreamRequest.fromPartial({ name });
    const reply = await unary(this.stub, this.stub.getUpstream, request, this.defaults, options);
    return present(reply.upstream, "upstream");
  }

  /**
   * ListUpstreams as an async iterator over every upstream of `parent` ("groups/acme", "acme",
   * or "-" for every group), fetching `pageSize` at a time as the loop goes.
   */
  listUpstreams(
    request: DeepPartial<ListUpstreamsRequest>,
    options?: RpcOptions,
  ): AsyncGenerator<UpstreamConfig, void, undefined> {
    return pages(request.pageToken ?? "", async (pageToken) => {
      const page = await this.listUpstreamsPage({ ...request, pageToken }, options);
      return { items: page.upstreams, nextPageToken: page.nextPageToken };
    });
  }

  /** One page of ListUpstreams, with its `nextPageToken`. */
  listUpstreamsPage(request: DeepPartial<ListUpstreamsRequest>, options?: RpcOptions): Promise<ListUpstreamsResponse> {
    const full = ListUpstreamsRequest.fromPartial(request);
    full.parent = groupName(full.parent);
    return unary(this.stub, this.stub.listUpstreams, full, this.defaults, options);
  }

  /**
   * UpdateUpstream: `{ upstream: { name, etag?, ...new values }, updateMask: ["displayName"] }`.
   * The etag, when given, makes the write conditional (ABORTED when it no longer matches).
   */
  async updateUpstream(request: WithMask<UpdateUpstreamRequest>, options?: RpcOptions): Promise<UpstreamConfig> {
    const { updateMask, ...rest } = request;
    const full = UpdateUpstreamRequest.fromPartial(rest as DeepPartial<UpdateUpstreamRequest>);
    full.updateMask = updateMask === undefined ? undefined : fieldMask(updateMask);
    const reply = await unary(this.stub, this.stub.updateUpstream, full, this.defaults, options);
    return present(reply.upstream, "upstream");
  }

  /** DeleteUpstream: `{ name, etag?, force? }`; gives the registries it was removed from. */
  async deleteUpstream(request: DeepPartial<DeleteUpstreamRequest>, options?: RpcOptions): Promise<string[]> {
    const full = DeleteUpstreamRequest.fromPartial(request);
    const reply = await unary(this.stub, this.stub.deleteUpstream, full, this.defaults, options);
    return reply.removedFrom;
  }

  /** TestUpstream: `{ name }` (stored) or `{ upstream }` (unsaved), and an optional `path`. */
  testUpstream(request: DeepPartial<TestUpstreamRequest>, options?: RpcOptions): Promise<TestUpstreamResponse> {
    const full = TestUpstreamRequest.fromPartial(request);
    return unary(this.stub, this.stub.testUpstream, full, this.defaults, options);
  }

  // --- registries -----------------------------------------------------------------------------

  /** CreateRegistry: `{ parent: "groups/acme", registryId, registry: { displayName } }`. */
  async createRegistry(request: DeepPartial<CreateRegistryRequest>, options?: RpcOptions): Promise<RegistryConfig> {
    const full = CreateRegistryRequest.fromPartial(request);
    full.parent = groupName(full.parent);
    const reply = await unary(this.stub, this.stub.createRegistry, full, this.defaults, options);
    return present(reply.registry, "registry");
  }

  /** GetRegistry by resource name; its `upstreams` are in position order. */
  async getRegistry(name: string, options?: RpcOptions): Promise<RegistryConfig> {
    const request = GetRegistryRequest.fromPartial({ name });
    const reply = await unary(this.stub, this.stub.getRegistry, request, this.defaults, options);
    return present(reply.registry, "registry");
  }

  /** ListRegistries as an async iterator (see {@link listUpstreams}). */
  listRegistries(
    request: DeepPartial<ListRegistriesRequest>,
    options?: RpcOptions,
  ): AsyncGenerator<RegistryConfig, void, undefined> {
    return pages(request.pageToken ?? "", async (pageToken) => {
      const page = await this.listRegistriesPage({ ...request, pageToken }, options);
      return { items: page.registries, nextPageToken: page.nextPageToken };
    });
  }

  /** One page of ListRegistries, with its `nextPageToken`. */
  listRegistriesPage(
    request: DeepPartial<ListRegistriesRequest>,
    options?: RpcOptions,
  ): Promise<ListRegistriesResponse> {
    const full = ListRegistriesRequest.fromPartial(request);
    full.parent = groupName(full.parent);
    return unary(this.stub, this.stub.listRegistries, full, this.defaults, options);
  }

  /** UpdateRegistry: `{ registry: { name, etag?, displayName? }, updateMask: ["displayName"] }`. */
  async updateRegistry(request: WithMask<UpdateRegistryRequest>, options?: RpcOptions): Promise<RegistryConfig> {
    const { updateMask, ...rest } = request;
    const full = UpdateRegistryRequest.fromPartial(rest as DeepPartial<UpdateRegistryRequest>);
    full.updateMask = updateMask === undefined ? undefined : fieldMask(updateMask);
    const reply = await unary(this.stub, this.stub.updateRegistry, full, this.defaults, options);
    return present(reply.registry, "registry");
  }

  /** DeleteRegistry: `{ name, etag? }` (its upstreams stay). */
  async deleteRegistry(request: DeepPartial<DeleteRegistryRequest>, options?: RpcOptions): Promise<void> {
    const full = DeleteRegistryRequest.fromPartial(request);
    await unary(this.stub, this.stub.deleteRegistry, full, this.defaults, options);
  }

  // --- membership -----------------------------------------------------------------------------

  /** AddUpstream: `{ registry, upstream, position (1.., 0 appends), etag? }`. */
  async addUpstream(request: DeepPartial<AddUpstreamRequest>, options?: RpcOptions): Promise<RegistryConfig> {
    const full = AddUpstreamRequest.fromPartial(request);
    const reply = await unary(this.stub, this.stub.addUpstream, full, this.defaults, options);
    return present(reply.registry, "registry");
  }

  /** RemoveUpstream: `{ registry, upstream, etag? }`; the ones below move up. */
  async removeUpstream(request: DeepPartial<RemoveUpstreamRequest>, options?: RpcOptions): Promise<RegistryConfig> {
    const full = RemoveUpstreamRequest.fromPartial(request);
    const reply = await unary(this.stub, this.stub.removeUpstream, full, this.defaults, options);
    return present(reply.registry, "registry");
  }

  /**
   * ReorderUpstreams: `{ registry, upstreams: [{ upstream, position }, ...], etag? }`, or give
   * `order` (upstream names, first tried first) to number them 1..n.
   */
  async reorderUpstreams(
    request: DeepPartial<ReorderUpstreamsRequest> & { order?: readonly string[] },
    options?: RpcOptions,
  ): Promise<RegistryConfig> {
    const { order, ...rest } = request;
    const full = ReorderUpstreamsRequest.fromPartial(rest as DeepPartial<ReorderUpstreamsRequest>);
    if (order !== undefined) {
      full.upstreams = order.map((upstream, index): RegistryMember => ({ upstream, position: index + 1 }));
    }
    const reply = await unary(this.stub, this.stub.reorderUpstreams, full, this.defaults, options);
    return present(reply.registry, "registry");
  }

  /** Closes the channel when this client made it (not when it shares a VRegistryClient's). */
  close(): void {
    if (this.ownsChannel) {
      this.stub.close();
    }
  }
}
