export {
  DEFAULT_DEADLINE_MS,
  type RpcOptions,
  type TlsOptions,
  VRegistryClient,
  type VRegistryClientOptions,
} from "./client";
export {
  decodeStatusDetails,
  ERROR_DOMAIN,
  STATUS_DETAILS_KEY,
  type StatusDetails,
  statusCodeName,
  VRegistryError,
} from "./errors";
export * from "./gen/vregistry/v1/upstream_service";
/** The error reasons (ErrorInfo.reason) as the generated enum, with its JSON (name) helpers. */
export { ErrorReason, errorReasonFromJSON, errorReasonToJSON } from "./gen/vregistry/v1/error_reason";
export { ErrorInfo } from "./gen/google/rpc/error_details";
export { Status } from "./gen/google/rpc/status";
export { status as GrpcStatus, Metadata } from "@grpc/grpc-js";
/** The admin ConfigService's generated types and client, for callers that manage the config. */
export * as configService from "./gen/vregistry/v1/config_service";
