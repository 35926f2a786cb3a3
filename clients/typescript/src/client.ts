import {
  type GetAuthHeadersRequest,
  type GetAuthHeadersResponse,
  ResolveUpstreamRequest,
  type ResolveUpstreamResponse,
  type UrlForRequest,
  type UrlForResponse,
  UpstreamServiceClient,
} from "./gen/vregistry/v1/upstream_service";
import {
  buildChannelOptions,
  buildCredentials,
  type CallDefaults,
  checkedDefaults,
  type RpcOptions,
  unary,
  type VRegistryClientOptions,
} from "./channel";
import { ConfigClient } from "./config";

/**
 * A promise-based client for vregistry.v1.UpstreamService, with the admin ConfigService on the
 * same channel as {@link VRegistryClient.config}.
 *
 * Every method rejects with a {@link VRegistryError} carrying the gRPC code, the
 * google.rpc.ErrorInfo reason and metadata and, for ResolveUpstream, the attempts.
 */
export class VRegistryClient {
  /** The generated @grpc/grpc-js client, for anything the wrapper does not cover. */
  readonly stub: UpstreamServiceClient;
  /** ConfigService on this client's channel, with the same defaults (deadline, caller token). */
  readonly config: ConfigClient;
  private readonly defaults: CallDefaults;

  constructor(options: VRegistryClientOptions) {
    this.defaults = checkedDefaults(options);
    this.stub = new UpstreamServiceClient(
      options.target,
      buildCredentials(options),
      buildChannelOptions(options),
    );
    this.config = new ConfigClient(options, this.stub.getChannel());
  }

  /** UrlFor: the absolute URL of `path` on the upstream `upstreamId`. */
  urlFor(request: Partial<UrlForRequest>, options?: RpcOptions): Promise<UrlForResponse> {
    const full: UrlForRequest = { upstreamId: "", path: "", ...request };
    return unary(this.stub, this.stub.urlFor, full, this.defaults, options);
  }

  /** GetAuthHeaders: the headers that authorize pulling `path` from `upstreamId`. */
  getAuthHeaders(
    request: Partial<GetAuthHeadersRequest>,
    options?: RpcOptions,
  ): Promise<GetAuthHeadersResponse> {
    const full: GetAuthHeadersRequest = { upstreamId: "", path: "", actions: [], ...request };
    return unary(this.stub, this.stub.getAuthHeaders, full, this.defaults, options);
  }

  /**
   * ResolveUpstream: the first upstream of `registryId`, by position, that has `path`
   * (`refresh: true` re-checks the upstreams instead of answering from the server's cache; the
   * reply says `cacheHit`, `stale` and `checkedAt`).
   */
  resolveUpstream(
    request: Partial<ResolveUpstreamRequest>,
    options?: RpcOptions,
  ): Promise<ResolveUpstreamResponse> {
    const full = ResolveUpstreamRequest.fromPartial(request);
    return unary(this.stub, this.stub.resolveUpstream, full, this.defaults, options);
  }

  /** Resolves once the channel is connected, or rejects when the deadline passes first. */
  waitForReady(deadlineMs: number = this.defaults.deadlineMs): Promise<void> {
    return new Promise((resolve, reject) => {
      this.stub.waitForReady(Date.now() + deadlineMs, (error) => (error ? reject(error) : resolve()));
    });
  }

  /** Closes the channel (ConfigService's calls too); calls made afterwards fail. */
  close(): void {
    this.stub.close();
  }
}
