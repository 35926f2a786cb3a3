export {
  AUTHORIZATION_KEY,
  DEFAULT_DEADLINE_MS,
  DEFAULT_SERVICE_CONFIG,
  type RpcOptions,
  type ServiceConfig,
  type TlsOptions,
  type VRegistryClientOptions,
} from "./channel";
export { VRegistryClient } from "./client";
export { ConfigClient, fieldMask, groupName, registryName, upstreamName } from "./config";
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
/** The admin ConfigService's generated types and client (ConfigClient wraps them). */
export * as configService from "./gen/vregistry/v1/config_service";
