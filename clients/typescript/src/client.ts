import {
  type CallOptions,
  type ChannelCredentials,
  type ChannelOptions,
  type ClientUnaryCall,
  credentials as grpcCredentials,
  Metadata,
  type ServiceError,
  status as GrpcStatus,
} from "@grpc/grpc-js";

import {
  type GetAuthHeadersRequest,
  type GetAuthHeadersResponse,
  type ResolveUpstreamRequest,
  type ResolveUpstreamResponse,
  type UrlForRequest,
  type UrlForResponse,
  UpstreamServiceClient,
} from "./gen/vregistry/v1/upstream_service";
import { VRegistryError } from "./errors";

/**
 * Default per-call deadline, in milliseconds: 30 s, the same in every vregistry client. It is
 * longer than the server's own per-request budget (10 s by default), so a slow upstream comes
 * back as UNAVAILABLE with the attempts rather than as DEADLINE_EXCEEDED.
 */
export const DEFAULT_DEADLINE_MS = 30_000;

/** TLS settings; every field is optional (system roots, no client certificate). */
export interface TlsOptions {
  /** PEM root certificates to trust instead of the system's. */
  rootCerts?: Buffer;
  /** PEM private key of a client certificate (mutual TLS). */
  privateKey?: Buffer;
  /** PEM client certificate chain (mutual TLS). */
  certChain?: Buffer;
  /** Expected server name in the certificate when it differs from the target host. */
  serverNameOverride?: string;
}

export interface VRegistryClientOptions {
  /** "host:port" (or any @grpc/grpc-js target, e.g. "dns:///vregistry.internal:443"). */
  target: string;
  /**
   * Transport security. `true` (the default): TLS with the system roots. An object: TLS with
   * those settings. `false`: plaintext, for a server on loopback or behind a sidecar.
   */
  tls?: boolean | TlsOptions;
  /** Ready-made channel credentials; when given, `tls` is ignored. */
  credentials?: ChannelCredentials;
  /**
   * Deadline of each call unless the call says otherwise; default {@link DEFAULT_DEADLINE_MS}
   * (30 s). `Infinity`: none.
   */
  defaultDeadlineMs?: number;
  /** Extra @grpc/grpc-js channel options. */
  channelOptions?: ChannelOptions;
}

export interface RpcOptions {
  /** This call's deadline, in milliseconds from now; overrides the client default. */
  deadlineMs?: number;
  /** This call's absolute deadline; overrides `deadlineMs`. */
  deadline?: Date;
  /** Request metadata (headers) to send. */
  metadata?: Metadata | Record<string, string>;
  /** Cancels the call (it then fails with CANCELLED). */
  signal?: AbortSignal;
}

type Unary<Req, Res> = (
  request: Req,
  metadata: Metadata,
  options: Partial<CallOptions>,
  callback: (error: ServiceError | null, response: Res) => void,
) => ClientUnaryCall;

function buildCredentials(options: VRegistryClientOptions): ChannelCredentials {
  if (options.credentials) {
    return options.credentials;
  }
  const tls = options.tls ?? true;
  if (tls === false) {
    return grpcCredentials.createInsecure();
  }
  const settings: TlsOptions = tls === true ? {} : tls;
  return grpcCredentials.createSsl(
    settings.rootCerts ?? null,
    settings.privateKey ?? null,
    settings.certChain ?? null,
  );
}

function buildChannelOptions(options: VRegistryClientOptions): ChannelOptions {
  const channel: ChannelOptions = { ...options.channelOptions };
  const tls = options.tls;
  if (typeof tls === "object" && tls.serverNameOverride) {
    channel["grpc.ssl_target_name_override"] = tls.serverNameOverride;
    channel["grpc.default_authority"] = tls.serverNameOverride;
  }
  return channel;
}

function toMetadata(value: RpcOptions["metadata"]): Metadata {
  if (value instanceof Metadata) {
    return value;
  }
  const metadata = new Metadata();
  for (const [key, item] of Object.entries(value ?? {})) {
    metadata.set(key, item);
  }
  return metadata;
}

/**
 * A promise-based client for vregistry.v1.UpstreamService.
 *
 * Every method rejects with a {@link VRegistryError} carrying the gRPC code, the
 * google.rpc.ErrorInfo reason and metadata and, for ResolveUpstream, the attempts.
 */
export class VRegistryClient {
  /** The generated @grpc/grpc-js client, for anything the wrapper does not cover. */
  readonly stub: UpstreamServiceClient;
  private readonly defaultDeadlineMs: number;

  constructor(options: VRegistryClientOptions) {
    if (!options.target) {
      throw new TypeError("VRegistryClient: target is required");
    }
    const deadline = options.defaultDeadlineMs ?? DEFAULT_DEADLINE_MS;
    if (!(deadline > 0)) {
      throw new RangeError("VRegistryClient: defaultDeadlineMs must be positive");
    }
    this.defaultDeadlineMs = deadline;
    this.stub = new UpstreamServiceClient(
      options.target,
      buildCredentials(options),
      buildChannelOptions(options),
    );
  }

  /** UrlFor: the absolute URL of `path` on the upstream `upstreamId`. */
  urlFor(request: Partial<UrlForRequest>, options?: RpcOptions): Promise<UrlForResponse> {
    const full: UrlForRequest = { upstreamId: "", path: "", ...request };
    return this.call(this.stub.urlFor, full, options);
  }

  /** GetAuthHeaders: the headers that authorize pulling `path` from `upstreamId`. */
  getAuthHeaders(
    request: Partial<GetAuthHeadersRequest>,
    options?: RpcOptions,
  ): Promise<GetAuthHeadersResponse> {
    const full: GetAuthHeadersRequest = { upstreamId: "", path: "", actions: [], ...request };
    return this.call(this.stub.getAuthHeaders, full, options);
  }

  /** ResolveUpstream: the first upstream of `registryId`, by position, that has `path`. */
  resolveUpstream(
    request: Partial<ResolveUpstreamRequest>,
    options?: RpcOptions,
  ): Promise<ResolveUpstreamResponse> {
    const full: ResolveUpstreamRequest = { registryId: "", path: "", ...request };
    return this.call(this.stub.resolveUpstream, full, options);
  }

  /** Resolves once the channel is connected, or rejects when the deadline passes first. */
  waitForReady(deadlineMs: number = this.defaultDeadlineMs): Promise<void> {
    return new Promise((resolve, reject) => {
      this.stub.waitForReady(Date.now() + deadlineMs, (error) => (error ? reject(error) : resolve()));
    });
  }

  /** Closes the channel; calls made afterwards fail. */
  close(): void {
    this.stub.close();
  }

  private deadlineFor(options: RpcOptions | undefined): Date | number {
    if (options?.deadline) {
      return options.deadline;
    }
    const ms = options?.deadlineMs ?? this.defaultDeadlineMs;
    return Number.isFinite(ms) ? new Date(Date.now() + ms) : Infinity;
  }

  private call<Req, Res>(method: Unary<Req, Res>, request: Req, options?: RpcOptions): Promise<Res> {
    return new Promise<Res>((resolve, reject) => {
      const signal = options?.signal;
      if (signal?.aborted) {
        reject(new VRegistryError({ code: GrpcStatus.CANCELLED, details: "Cancelled before start" }));
        return;
      }
      let onAbort: (() => void) | undefined;
      const call = method.call(
        this.stub,
        request,
        toMetadata(options?.metadata),
        { deadline: this.deadlineFor(options) },
        (error, response) => {
          if (onAbort) {
            signal?.removeEventListener("abort", onAbort);
          }
          if (error) {
            reject(VRegistryError.from(error));
          } else {
            resolve(response);
          }
        },
      );
      if (signal) {
        onAbort = () => call.cancel();
        signal.addEventListener("abort", onAbort, { once: true });
      }
    });
  }
}
