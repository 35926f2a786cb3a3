package dev.vregistry.client;

import com.google.protobuf.Any;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.rpc.ErrorInfo;
import dev.vregistry.v1.ErrorReason;
import dev.vregistry.v1.ResolveUpstreamFailure;
import dev.vregistry.v1.UpstreamAttempt;
import io.grpc.Metadata;
import io.grpc.Status;
import io.grpc.protobuf.StatusProto;
import java.util.List;
import java.util.Map;
import java.util.Optional;

/**
 * A failed vregistry call: the gRPC status plus what the server's error details said.
 *
 * <p>The server attaches a {@code google.rpc.Status} in the {@code grpc-status-details-bin}
 * trailer, with a {@code google.rpc.ErrorInfo} (domain {@value #DOMAIN}) whose reason says why,
 * and, for a failed ResolveUpstream, a {@code vregistry.v1.ResolveUpstreamFailure} listing every
 * upstream's attempt. {@link #getReasonCode()} gives the reason as the generated {@link
 * ErrorReason} enum.
 *
 * <pre>{@code
 * try {
 *   client.resolveUpstream("default", "library/alpine/manifests/latest");
 * } catch (VRegistryException e) {
 *   if (e.getReasonCode() == ErrorReason.NOT_FOUND_ON_UPSTREAMS) {
 *     e.getAttempts().forEach(a -> System.out.println(a.getUpstreamId() + " " + a.getOutcome()));
 *   }
 * }
 * }</pre>
 */
public final class VRegistryException extends RuntimeException {
  private static final long serialVersionUID = 1L;

  /** The ErrorInfo domain of every error the vregistry service sends. */
  public static final String DOMAIN = "vregistry.dev";

  private final transient Status status;
  private final transient Metadata trailers;
  private final transient com.google.rpc.Status rpcStatus;
  private final String reason;
  private final String domain;
  private final Map<String, String> metadata;
  private final transient List<UpstreamAttempt> attempts;

  /** What the {@code grpc-status-details-bin} trailer said, decoded. */
  private record Decoded(
      com.google.rpc.Status rpcStatus,
      String reason,
      String domain,
      Map<String, String> metadata,
      List<UpstreamAttempt> attempts) {}

  private VRegistryException(Status status, Metadata trailers, Decoded decoded, Throwable cause) {
    super(describe(status, decoded.reason()), cause);
    this.status = status;
    this.trailers = trailers;
    this.rpcStatus = decoded.rpcStatus();
    this.reason = decoded.reason();
    this.domain = decoded.domain();
    this.metadata = decoded.metadata();
    this.attempts = decoded.attempts();
  }

  private static Decoded decode(Status status, Metadata trailers) {
    com.google.rpc.Status rpc;
    try {
      // Without the trailer this gives a Status with the code and message and no details.
      rpc = StatusProto.fromStatusAndTrailers(status, trailers);
    } catch (IllegalArgumentException e) {
      // The trailer disagrees with the call's status: trust the call, ignore the details.
      rpc = StatusProto.fromStatusAndTrailers(status, null);
    }
    ErrorInfo info = null;
    List<UpstreamAttempt> attempts = List.of();
    for (Any packed : rpc.getDetailsList()) {
      try {
        if (info == null && packed.is(ErrorInfo.class)) {
          info = packed.unpack(ErrorInfo.class);
        } else if (packed.is(ResolveUpstreamFailure.class)) {
          attempts = List.copyOf(packed.unpack(ResolveUpstreamFailure.class).getAttemptsList());
        }
      } catch (InvalidProtocolBufferException e) {
        // A detail that does not decode is skipped; the status code still tells the story.
      }
    }
    return new Decoded(
        rpc,
        info == null ? "" : info.getReason(),
        info == null ? "" : info.getDomain(),
        info == null ? Map.of() : Map.copyOf(info.getMetadataMap()),
        attempts);
  }

  private static String describe(Status status, String reason) {
    StringBuilder text = new StringBuilder(status.getCode().name());
    if (!reason.isEmpty()) {
      text.append(" (").append(reason).append(')');
    }
    if (status.getDescription() != null) {
      text.append(": ").append(status.getDescription());
    }
    return text.toString();
  }

  /**
   * Wraps whatever a gRPC call threw: a {@link io.grpc.StatusRuntimeException} or {@link
   * io.grpc.StatusException} keeps its status and trailers; anything else becomes UNKNOWN.
   */
  public static VRegistryException from(Throwable error) {
    if (error instanceof VRegistryException) {
      return (VRegistryException) error;
    }
    Status status = Status.fromThrowable(error);
    Metadata trailers = Status.trailersFromThrowable(error);
    if (trailers == null) {
      trailers = new Metadata();
    }
    return new VRegistryException(status, trailers, decode(status, trailers), error);
  }

  /** The gRPC status code, e.g. {@link Status.Code#NOT_FOUND}. */
  public Status.Code getStatusCode() {
    return status.getCode();
  }

  /** The canonical code name, e.g. "NOT_FOUND", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED". */
  public String getCodeName() {
    return status.getCode().name();
  }

  /** The server's status message ({@code ""} when there was none). */
  public String getDescription() {
    return status.getDescription() == null ? "" : status.getDescription();
  }

  /** The full gRPC status. */
  public Status getStatus() {
    return status;
  }

  /**
   * ErrorInfo.reason as sent, e.g. "INVALID_PATH"; {@code ""} when the server sent no ErrorInfo.
   * {@link #getReasonCode()} gives it as the generated enum.
   */
  public String getReason() {
    return reason;
  }

  /**
   * The reason as the generated enum, e.g. {@link ErrorReason#INVALID_PATH}
   * (protos/vregistry/v1/error_reason.proto documents each value): {@link
   * ErrorReason#ERROR_REASON_UNSPECIFIED} when the error carried no vregistry ErrorInfo (a
   * client-side deadline, a refused connection, an ErrorInfo of another domain), {@link
   * ErrorReason#UNRECOGNIZED} for a reason newer than this client ({@link #getReason()} still has
   * the string).
   */
  public ErrorReason getReasonCode() {
    if (reason.isEmpty() || !DOMAIN.equals(domain)) {
      return ErrorReason.ERROR_REASON_UNSPECIFIED;
    }
    try {
      return ErrorReason.valueOf(reason);
    } catch (IllegalArgumentException e) {
      return ErrorReason.UNRECOGNIZED;
    }
  }

  /** ErrorInfo.domain, {@value #DOMAIN} for this service; {@code ""} when absent. */
  public String getDomain() {
    return domain;
  }

  /** ErrorInfo.metadata (immutable). */
  public Map<String, String> getMetadata() {
    return metadata;
  }

  /** For a failed ResolveUpstream: every upstream's attempt, in position order (immutable). */
  public List<UpstreamAttempt> getAttempts() {
    return attempts;
  }

  /** The decoded {@code google.rpc.Status} (without details when the server sent none). */
  public com.google.rpc.Status getRpcStatus() {
    return rpcStatus;
  }

  /** The raw trailing metadata of the call. */
  public Metadata getTrailers() {
    return trailers;
  }

  /** The ErrorInfo, when the server sent one. */
  public Optional<ErrorInfo> getErrorInfo() {
    if (reason.isEmpty() && domain.isEmpty()) {
      return Optional.empty();
    }
    return Optional.of(
        ErrorInfo.newBuilder().setReason(reason).setDomain(domain).putAllMetadata(metadata).build());
  }
}
