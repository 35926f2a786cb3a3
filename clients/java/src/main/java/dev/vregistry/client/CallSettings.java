package dev.vregistry.client;

import io.grpc.Metadata;
import io.grpc.stub.AbstractStub;
import io.grpc.stub.MetadataUtils;
import java.time.Duration;
import java.util.Objects;
import java.util.concurrent.TimeUnit;

/**
 * What every call of a client view starts from: its deadline and its caller token. Immutable;
 * {@code with*} give a new value. The token never appears in {@link #toString()}.
 */
final class CallSettings {
  static final Metadata.Key<String> AUTHORIZATION =
      Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);

  private final Duration deadline;
  private final String callerToken;

  CallSettings(Duration deadline, String callerToken) {
    this.deadline = checkedDeadline(deadline);
    this.callerToken = callerToken == null ? "" : callerToken;
  }

  static Duration checkedDeadline(Duration deadline) {
    Objects.requireNonNull(deadline, "deadline");
    if (deadline.isNegative() || deadline.isZero()) {
      throw new IllegalArgumentException("deadline must be positive: " + deadline);
    }
    return deadline;
  }

  Duration deadline() {
    return deadline;
  }

  CallSettings withDeadline(Duration newDeadline) {
    return new CallSettings(newDeadline, callerToken);
  }

  CallSettings withCallerToken(String token) {
    return new CallSettings(deadline, token);
  }

  /** {@code stub} with this deadline (or {@code override}) and the caller token, if any. */
  <S extends AbstractStub<S>> S apply(S stub, Duration override) {
    Duration chosen = override == null ? deadline : checkedDeadline(override);
    S configured = stub.withDeadlineAfter(chosen.toNanos(), TimeUnit.NANOSECONDS);
    if (callerToken.isEmpty()) {
      return configured;
    }
    Metadata headers = new Metadata();
    headers.put(AUTHORIZATION, "Bearer " + callerToken);
    return configured.withInterceptors(MetadataUtils.newAttachHeadersInterceptor(headers));
  }

  @Override
  public String toString() {
    return "CallSettings{deadline=" + deadline + ", callerToken=" + (callerToken.isEmpty() ? "none" : "set") + "}";
  }
}
