import { Metadata, status as GrpcStatus, type ServiceError } from "@grpc/grpc-js";

import { ErrorInfo } from "./gen/google/rpc/error_details";
import { Status } from "./gen/google/rpc/status";
import { ErrorReason, errorReasonFromJSON } from "./gen/vregistry/v1/error_reason";
import { ResolveUpstreamFailure, type UpstreamAttempt } from "./gen/vregistry/v1/upstream_service";

/** The ErrorInfo domain of every error the vregistry service sends. */
export const ERROR_DOMAIN = "vregistry.dev";

/** The trailer carrying the serialized google.rpc.Status. */
export const STATUS_DETAILS_KEY = "grpc-status-details-bin";

const TYPE_URL_PREFIX = "type.googleapis.com/";
const ERROR_INFO_TYPE = "google.rpc.ErrorInfo";
const FAILURE_TYPE = "vregistry.v1.ResolveUpstreamFailure";

/** What the `grpc-status-details-bin` trailer said, decoded. */
export interface StatusDetails {
  /** The decoded google.rpc.Status, or undefined when the trailer was absent or unreadable. */
  status?: Status;
  /** ErrorInfo.reason, e.g. "NOT_FOUND_ON_UPSTREAMS"; "" when there was no ErrorInfo. */
  reason: string;
  /** ErrorInfo.domain ("vregistry.dev" for this service); "" when there was no ErrorInfo. */
  domain: string;
  /** ErrorInfo.metadata, e.g. { upstream_id: "dockerhub" }. */
  metadata: Record<string, string>;
  /** The attempts of a failed ResolveUpstream (ResolveUpstreamFailure), in position order. */
  attempts: UpstreamAttempt[];
}

function typeName(typeUrl: string): string {
  const slash = typeUrl.lastIndexOf("/");
  return slash >= 0 ? typeUrl.slice(slash + 1) : typeUrl;
}

/**
 * Decodes the google.rpc.Status that a gRPC server put in the `grpc-status-details-bin`
 * trailer: its google.rpc.ErrorInfo and, for ResolveUpstream, its
 * vregistry.v1.ResolveUpstreamFailure. Unknown detail types are ignored; a trailer that
 * is missing or malformed gives empty details rather than an exception.
 */
export function decodeStatusDetails(trailers: Metadata | undefined): StatusDetails {
  const details: StatusDetails = { reason: "", domain: "", metadata: {}, attempts: [] };
  const values = trailers?.get(STATUS_DETAILS_KEY) ?? [];
  const raw = values.find((value): value is Buffer => Buffer.isBuffer(value));
  if (raw === undefined) {
    return details;
  }
  let status: Status;
  try {
    status = Status.decode(raw);
  } catch {
    return details;
  }
  details.status = status;
  for (const packed of status.details) {
    try {
      switch (typeName(packed.typeUrl)) {
        case ERROR_INFO_TYPE: {
          const info = ErrorInfo.decode(packed.value);
          details.reason = info.reason;
          details.domain = info.domain;
          details.metadata = { ...info.metadata };
          break;
        }
        case FAILURE_TYPE:
          details.attempts = ResolveUpstreamFailure.decode(packed.value).attempts;
          break;
        default:
          break;
      }
    } catch {
      // A detail that does not decode is skipped; the status code still tells the story.
    }
  }
  return details;
}

/** The canonical upper-snake-case name of a gRPC status code, e.g. "NOT_FOUND". */
export function statusCodeName(code: number): string {
  const name = (GrpcStatus as unknown as Record<number, string | undefined>)[code];
  return name ?? `CODE_${code}`;
}

/**
 * The ErrorInfo reason string as the generated {@link ErrorReason} enum:
 * `ERROR_REASON_UNSPECIFIED` when there was no vregistry ErrorInfo (empty reason, or another
 * domain), `UNRECOGNIZED` for a reason this version of the client does not know yet.
 */
function reasonCodeOf(reason: string, domain: string): ErrorReason {
  if (reason === "" || domain !== ERROR_DOMAIN) {
    return ErrorReason.ERROR_REASON_UNSPECIFIED;
  }
  return errorReasonFromJSON(reason);
}

/**
 * A failed vregistry call: the gRPC status plus what the server's error details said.
 *
 * ```ts
 * try { await client.resolveUpstream({ registryId: "default", path }); }
 * catch (e) {
 *   if (e instanceof VRegistryError && e.reasonCode === ErrorReason.NOT_FOUND_ON_UPSTREAMS) {
 *     for (const a of e.attempts) console.log(a.upstreamId, attemptOutcomeToJSON(a.outcome));
 *   }
 * }
 * ```
 */
export class VRegistryError extends Error {
  /** The numeric gRPC status code (compare with `status` from @grpc/grpc-js). */
  readonly code: GrpcStatus;
  /** The canonical code name, e.g. "NOT_FOUND", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED". */
  readonly codeName: string;
  /** The server's status message. */
  readonly details: string;
  /** ErrorInfo.reason as sent, e.g. "INVALID_PATH"; "" when the server sent no ErrorInfo. */
  readonly reason: string;
  /**
   * `reason` as the generated enum, e.g. `ErrorReason.INVALID_PATH`
   * (protos/vregistry/v1/error_reason.proto documents each value): `ERROR_REASON_UNSPECIFIED`
   * when the error carried no vregistry ErrorInfo (a client-side deadline, a refused
   * connection, an ErrorInfo of another domain), `UNRECOGNIZED` for a reason newer than this
   * client (`reason` still has the string).
   */
  readonly reasonCode: ErrorReason;
  /** ErrorInfo.domain, "vregistry.dev" for this service; "" when absent. */
  readonly domain: string;
  /** ErrorInfo.metadata. */
  readonly metadata: Record<string, string>;
  /** For ResolveUpstream failures: every upstream's attempt, in position order. */
  readonly attempts: UpstreamAttempt[];
  /** The decoded google.rpc.Status, when the server sent one. */
  readonly status?: Status;
  /** The raw trailing metadata of the call. */
  readonly trailers: Metadata;

  constructor(init: {
    code: GrpcStatus;
    details: string;
    trailers?: Metadata;
    cause?: unknown;
  }) {
    const codeName = statusCodeName(init.code);
    const decoded = decodeStatusDetails(init.trailers);
    const reason = decoded.reason ? ` (${decoded.reason})` : "";
    super(`${codeName}${reason}: ${init.details}`, { cause: init.cause });
    this.name = "VRegistryError";
    this.code = init.code;
    this.codeName = codeName;
    this.details = init.details;
    this.reason = decoded.reason;
    this.reasonCode = reasonCodeOf(decoded.reason, decoded.domain);
    this.domain = decoded.domain;
    this.metadata = decoded.metadata;
    this.attempts = decoded.attempts;
    this.status = decoded.status;
    this.trailers = init.trailers ?? new Metadata();
  }

  /** Wraps a @grpc/grpc-js ServiceError (or anything thrown by a call). */
  static from(error: unknown): VRegistryError {
    if (error instanceof VRegistryError) {
      return error;
    }
    const service = error as Partial<ServiceError> | undefined;
    if (service && typeof service.code === "number") {
      return new VRegistryError({
        code: service.code,
        details: service.details ?? service.message ?? "",
        trailers: service.metadata,
        cause: error,
      });
    }
    return new VRegistryError({
      code: GrpcStatus.UNKNOWN,
      details: error instanceof Error ? error.message : String(error),
      cause: error,
    });
  }
}
