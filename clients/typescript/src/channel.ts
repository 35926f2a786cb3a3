// What the UpstreamService and ConfigService clients share: channel credentials and options
// (service config with retries and round-robin), per-call metadata and deadlines, and the
// promise wrapper that turns every failure into a VRegistryError.
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

import { VRegistryError } from "./errors";
import serviceConfigJson from "./service_config.json";

/**
 * Default per-call deadline, in milliseconds: 30 s, the same in every vregistry client. It is
 * longer than the server's own per-request budget (10 s by default), so a slow upstream comes
 * back as UNAVAILABLE with the attempts rather than as DEADLINE_EXCEEDED.
 */
export const DEFAULT_DEADLINE_MS = 30_000;

/**
 * The part of gRPC's service config (the JSON form of service_config.proto) that vregistry's
 * default sets. Spelled out, rather than inferred from the JSON file, so the published
 * declarations do not need the consumer's `resolveJsonModule`, and so a change to the shared
 * file that breaks this shape fails the build.
 */
export interface ServiceConfig {
  readonly loadBalancingConfig: readonly Readonly<Record<string, object>>[];
  readonly methodConfig: readonly {
    readonly name: readonly { readonly service: string; readonly method?: string }[];
    readonly retryPolicy: {
      readonly maxAttempts: number;
      readonly initialBackoff: string;
      readonly maxBackoff: string;
      readonly backoffMultiplier: number;
      readonly retryableStatusCodes: readonly string[];
    };
  }[];
}

/**
 * The gRPC service config every channel gets unless `serviceConfig` replaces it (the standard
 * JSON of gRPC's service_config.proto). Its one definition is `clients/service_config.json`;
 * `src/service_config.json` is the copy scripts/gen_clients.sh writes (and `--check` compares),
 * so every vregistry client has the same values:
 * - round_robin over every address the target resolves to, so `dns:///vregistry-headless:50051`
 *   (the chart's headless Service) spreads calls over all pods instead of pinning one;
 * - UNAVAILABLE (a pod going away, a refused connection, a server-side outage) retried up to
 *   3 attempts in all with exponential backoff from 0.1 s to 1 s, inside the call's deadline.
 */
export const DEFAULT_SERVICE_CONFIG: ServiceConfig = serviceConfigJson;

/** The metadata key that carries the caller token. */
export const AUTHORIZATION_KEY = "authorization";

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
  /** "host:port" (or any @grpc/grpc-js target, e.g. "dns:///vregistry-headless:50051"). */
  target: string;
  /**
   * Transport security. `true` (the default): TLS with the system roots. An object: TLS with
   * those settings (a client certificate and key give mutual TLS). `false`: plaintext, for a
   * server on loopback or behind a sidecar.
   */
  tls?: boolean | TlsOptions;
  /** Ready-made channel credentials; when given, `tls` is ignored. */
  credentials?: ChannelCredentials;
  /**
   * The caller token (from the server's callers file) sent as `authorization: Bearer TOKEN` on
   * every call unless the call gives its own `callerToken`.
   */
  callerToken?: string;
  /**
   * Deadline of each call unless the call says otherwise; default {@link DEFAULT_DEADLINE_MS}
   * (30 s). `Infinity`: none.
   */
  defaultDeadlineMs?: number;
  /**
   * The gRPC service config (retry policy, load balancing), as the standard JSON object;
   * default {@link DEFAULT_SERVICE_CONFIG}. `null`: none (pick_first, no retries).
   */
  serviceConfig?: object | null;
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
  /** This call's caller token; overrides the client's `callerToken`. `""`: send none. */
  callerToken?: string;
  /** Cancels the call (it then fails with CANCELLED). */
  signal?: AbortSignal;
}

export type Unary<Req, Res> = (
  request: Req,
  metadata: Metadata,
  options: Partial<CallOptions>,
  callback: (error: ServiceError | null, response: Res) => void,
) => ClientUnaryCall;

export function buildCredentials(options: VRegistryClientOptions): ChannelCredentials {
  if (options.credentials) {
    return options.credentials;
  }
  const tls = options.tls ?? true;
  if (tls === false) {
    return grpcCredentials.createInsecure();
  }
  const settings: TlsOptions = tls === true ? {} : tls;
  if (Boolean(settings.privateKey) !== Boolean(settings.certChain)) {
    throw new TypeError("VRegistryClient: mutual TLS needs both privateKey and certChain");
  }
  return grpcCredentials.createSsl(
    settings.rootCerts ?? null,
    settings.privateKey ?? null,
    settings.certChain ?? null,
  );
}

export function buildChannelOptions(options: VRegistryClientOptions): ChannelOptions {
  const channel: ChannelOptions = {};
  const serviceConfig = options.serviceConfig === undefined ? DEFAULT_SERVICE_CONFIG : options.serviceConfig;
  if (serviceConfig !== null) {
    channel["grpc.service_config"] = JSON.stringify(serviceConfig);
    // The config above is the one in force: a DNS TXT record must not replace it (and no TXT
    // lookup leaves the machine for it).
    channel["grpc.service_config_disable_resolution"] = 1;
  }
  const tls = options.tls;
  if (typeof tls === "object" && tls.serverNameOverride) {
    channel["grpc.ssl_target_name_override"] = tls.serverNameOverride;
    channel["grpc.default_authority"] = tls.serverNameOverride;
  }
  return { ...channel, ...options.channelOptions };
}

function toMetadata(value: RpcOptions["metadata"], callerToken: string | undefined): Metadata {
  const metadata = value instanceof Metadata ? value.clone() : new Metadata();
  if (!(value instanceof Metadata)) {
    for (const [key, item] of Object.entries(value ?? {})) {
      metadata.set(key, item);
    }
  }
  if (callerToken) {
    metadata.set(AUTHORIZATION_KEY, `Bearer ${callerToken}`);
  }
  return metadata;
}

/** The per-client settings every call starts from. */
export interface CallDefaults {
  deadlineMs: number;
  callerToken?: string;
}

export function checkedDefaults(options: VRegistryClientOptions): CallDefaults {
  if (!options.target) {
    throw new TypeError("VRegistryClient: target is required");
  }
  const deadlineMs = options.defaultDeadlineMs ?? DEFAULT_DEADLINE_MS;
  if (!(deadlineMs > 0)) {
    throw new RangeError("VRegistryClient: defaultDeadlineMs must be positive");
  }
  return { deadlineMs, callerToken: options.callerToken };
}

function deadlineFor(defaults: CallDefaults, options: RpcOptions | undefined): Date | number {
  if (options?.deadline) {
    return options.deadline;
  }
  const ms = options?.deadlineMs ?? defaults.deadlineMs;
  return Number.isFinite(ms) ? new Date(Date.now() + ms) : Infinity;
}

/** One unary call as a promise that rejects with a {@link VRegistryError}. */
export function unary<Req, Res>(
  stub: object,
  method: Unary<Req, Res>,
  request: Req,
  defaults: CallDefaults,
  options?: RpcOptions,
): Promise<Res> {
  return new Promise<Res>((resolve, reject) => {
    const signal = options?.signal;
    if (signal?.aborted) {
      reject(new VRegistryError({ code: GrpcStatus.CANCELLED, details: "Cancelled before start" }));
      return;
    }
    const token = options?.callerToken ?? defaults.callerToken;
    let onAbort: (() => void) | undefined;
    const call = method.call(
      stub,
      request,
      toMetadata(options?.metadata, token),
      { deadline: deadlineFor(defaults, options) },
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
