package dev.vregistry.client;

import com.google.common.util.concurrent.FutureCallback;
import com.google.common.util.concurrent.Futures;
import com.google.common.util.concurrent.ListenableFuture;
import com.google.common.util.concurrent.MoreExecutors;
import dev.vregistry.v1.GetAuthHeadersRequest;
import dev.vregistry.v1.GetAuthHeadersResponse;
import dev.vregistry.v1.ResolveUpstreamRequest;
import dev.vregistry.v1.ResolveUpstreamResponse;
import dev.vregistry.v1.UpstreamServiceGrpc;
import dev.vregistry.v1.UrlForRequest;
import dev.vregistry.v1.UrlForResponse;
import io.grpc.ChannelCredentials;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.StatusRuntimeException;
import io.grpc.TlsChannelCredentials;
import java.io.File;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.time.Duration;
import java.util.Arrays;
import java.util.Objects;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;

/**
 * A thin client for {@code vregistry.v1.UpstreamService}: blocking methods, {@code *Async}
 * methods returning {@link CompletableFuture}, a default deadline on every call, and errors as
 * {@link VRegistryException} (gRPC code, ErrorInfo reason and metadata, ResolveUpstream attempts).
 *
 * <pre>{@code
 * try (VRegistryClient client = VRegistryClient.builder()
 *     .target("127.0.0.1:50051").usePlaintext().defaultDeadline(Duration.ofSeconds(5)).build()) {
 *   String url = client.urlFor("dockerhub", "library/alpine/manifests/latest").getUrl();
 * }
 * }</pre>
 *
 * <p>The generated stubs stay available through {@link #blockingStub()} and {@link
 * #futureStub()} for anything this wrapper does not cover.
 */
public final class VRegistryClient implements AutoCloseable {
  /**
   * The deadline of each call unless the builder or the call says otherwise: 30 seconds, the same
   * in every vregistry client. It is longer than the server's own per-request budget (10 s by
   * default), so a slow upstream comes back as UNAVAILABLE with the attempts rather than as
   * DEADLINE_EXCEEDED.
   */
  public static final Duration DEFAULT_DEADLINE = Duration.ofSeconds(30);

  private final ManagedChannel channel;
  private final boolean ownsChannel;
  private final Duration defaultDeadline;
  private final UpstreamServiceGrpc.UpstreamServiceBlockingStub blocking;
  private final UpstreamServiceGrpc.UpstreamServiceFutureStub future;

  private VRegistryClient(ManagedChannel channel, boolean ownsChannel, Duration defaultDeadline) {
    this.channel = channel;
    this.ownsChannel = ownsChannel;
    this.defaultDeadline = defaultDeadline;
    this.blocking = UpstreamServiceGrpc.newBlockingStub(channel);
    this.future = UpstreamServiceGrpc.newFutureStub(channel);
  }

  /** A builder: {@code target} is required; TLS with the system roots unless told otherwise. */
  public static Builder builder() {
    return new Builder();
  }

  // ---------------------------------------------------------------- blocking

  /** UrlFor: the absolute URL of {@code path} on the upstream {@code upstreamId}. */
  public UrlForResponse urlFor(String upstreamId, String path) {
    return urlFor(UrlForRequest.newBuilder().setUpstreamId(upstreamId).setPath(path).build(), null);
  }

  /** UrlFor with a full request and a deadline ({@code null}: the client default). */
  public UrlForResponse urlFor(UrlForRequest request, Duration deadline) {
    try {
      return blocking(deadline).urlFor(request);
    } catch (StatusRuntimeException e) {
      throw VRegistryException.from(e);
    }
  }

  /**
   * GetAuthHeaders: the headers that authorize {@code actions} (default: pull) on the repository
   * of {@code path} at the upstream {@code upstreamId}.
   */
  public GetAuthHeadersResponse getAuthHeaders(String upstreamId, String path, String... actions) {
    return getAuthHeaders(authRequest(upstreamId, path, actions), null);
  }

  /** GetAuthHeaders with a full request and a deadline ({@code null}: the client default). */
  public GetAuthHeadersResponse getAuthHeaders(GetAuthHeadersRequest request, Duration deadline) {
    try {
      return blocking(deadline).getAuthHeaders(request);
    } catch (StatusRuntimeException e) {
      throw VRegistryException.from(e);
    }
  }

  /** ResolveUpstream: the first upstream of {@code registryId}, by position, that has the path. */
  public ResolveUpstreamResponse resolveUpstream(String registryId, String path) {
    return resolveUpstream(
        ResolveUpstreamRequest.newBuilder().setRegistryId(registryId).setPath(path).build(), null);
  }

  /** ResolveUpstream with a full request and a deadline ({@code null}: the client default). */
  public ResolveUpstreamResponse resolveUpstream(ResolveUpstreamRequest request, Duration deadline) {
    try {
      return blocking(deadline).resolveUpstream(request);
    } catch (StatusRuntimeException e) {
      throw VRegistryException.from(e);
    }
  }

  // ---------------------------------------------------------------- async

  /** UrlFor without blocking; the future fails with a {@link VRegistryException}. */
  public CompletableFuture<UrlForResponse> urlForAsync(UrlForRequest request, Duration deadline) {
    return adapt(future(deadline).urlFor(request));
  }

  /** GetAuthHeaders without blocking; the future fails with a {@link VRegistryException}. */
  public CompletableFuture<GetAuthHeadersResponse> getAuthHeadersAsync(
      GetAuthHeadersRequest request, Duration deadline) {
    return adapt(future(deadline).getAuthHeaders(request));
  }

  /** ResolveUpstream without blocking; the future fails with a {@link VRegistryException}. */
  public CompletableFuture<ResolveUpstreamResponse> resolveUpstreamAsync(
      ResolveUpstreamRequest request, Duration deadline) {
    return adapt(future(deadline).resolveUpstream(request));
  }

  // ---------------------------------------------------------------- raw access

  /** The generated blocking stub, with the client's default deadline. */
  public UpstreamServiceGrpc.UpstreamServiceBlockingStub blockingStub() {
    return blocking(null);
  }

  /** The generated future stub, with the client's default deadline. */
  public UpstreamServiceGrpc.UpstreamServiceFutureStub futureStub() {
    return future(null);
  }

  /** The channel the client talks through. */
  public ManagedChannel channel() {
    return channel;
  }

  /** The deadline applied to calls that do not give their own. */
  public Duration defaultDeadline() {
    return defaultDeadline;
  }

  /** Shuts the channel down (when the client created it) and waits up to 5 s for calls to end. */
  @Override
  public void close() {
    if (!ownsChannel) {
      return;
    }
    channel.shutdown();
    try {
      if (!channel.awaitTermination(5, TimeUnit.SECONDS)) {
        channel.shutdownNow();
      }
    } catch (InterruptedException e) {
      channel.shutdownNow();
      Thread.currentThread().interrupt();
    }
  }

  // ---------------------------------------------------------------- internals

  private static GetAuthHeadersRequest authRequest(
      String upstreamId, String path, String... actions) {
    return GetAuthHeadersRequest.newBuilder()
        .setUpstreamId(upstreamId)
        .setPath(path)
        .addAllActions(Arrays.asList(actions))
        .build();
  }

  private Duration effective(Duration deadline) {
    Duration chosen = deadline == null ? defaultDeadline : deadline;
    if (chosen.isNegative() || chosen.isZero()) {
      throw new IllegalArgumentException("deadline must be positive: " + chosen);
    }
    return chosen;
  }

  private UpstreamServiceGrpc.UpstreamServiceBlockingStub blocking(Duration deadline) {
    return blocking.withDeadlineAfter(effective(deadline).toNanos(), TimeUnit.NANOSECONDS);
  }

  private UpstreamServiceGrpc.UpstreamServiceFutureStub future(Duration deadline) {
    return future.withDeadlineAfter(effective(deadline).toNanos(), TimeUnit.NANOSECONDS);
  }

  private static <T> CompletableFuture<T> adapt(ListenableFuture<T> call) {
    CompletableFuture<T> result =
        new CompletableFuture<>() {
          @Override
          public boolean cancel(boolean mayInterruptIfRunning) {
            call.cancel(mayInterruptIfRunning);
            return super.cancel(mayInterruptIfRunning);
          }
        };
    Futures.addCallback(
        call,
        new FutureCallback<T>() {
          @Override
          public void onSuccess(T value) {
            result.complete(value);
          }

          @Override
          public void onFailure(Throwable error) {
            result.completeExceptionally(VRegistryException.from(error));
          }
        },
        MoreExecutors.directExecutor());
    return result;
  }

  /** Builds a {@link VRegistryClient}. */
  public static final class Builder {
    private String target;
    private boolean plaintext;
    private File trustCertificates;
    private File clientCertificateChain;
    private File clientPrivateKey;
    private String overrideAuthority;
    private ChannelCredentials credentials;
    private ManagedChannel channel;
    private Duration defaultDeadline = DEFAULT_DEADLINE;

    private Builder() {}

    /** "host:port" or any gRPC target URI, e.g. "dns:///vregistry.internal:443". */
    public Builder target(String target) {
      this.target = Objects.requireNonNull(target, "target");
      return this;
    }

    /** Plaintext (no TLS): for a server on loopback or behind a sidecar. */
    public Builder usePlaintext() {
      this.plaintext = true;
      return this;
    }

    /** TLS (the default), with the system roots unless {@link #trustCertificates} is given. */
    public Builder useTransportSecurity() {
      this.plaintext = false;
      return this;
    }

    /** TLS trusting the PEM root certificates in {@code rootCertificates}. */
    public Builder trustCertificates(File rootCertificates) {
      this.plaintext = false;
      this.trustCertificates = Objects.requireNonNull(rootCertificates, "rootCertificates");
      return this;
    }

    /** Mutual TLS: present this PEM certificate chain and private key. */
    public Builder clientCertificate(File certificateChain, File privateKey) {
      this.plaintext = false;
      this.clientCertificateChain = Objects.requireNonNull(certificateChain, "certificateChain");
      this.clientPrivateKey = Objects.requireNonNull(privateKey, "privateKey");
      return this;
    }

    /** The authority (and TLS server name) to use instead of the target's host. */
    public Builder overrideAuthority(String authority) {
      this.overrideAuthority = Objects.requireNonNull(authority, "authority");
      return this;
    }

    /** Ready-made channel credentials; they replace the TLS/plaintext settings. */
    public Builder credentials(ChannelCredentials credentials) {
      this.credentials = Objects.requireNonNull(credentials, "credentials");
      return this;
    }

    /**
     * An existing channel (e.g. in-process, or one shared with other clients); the client will
     * not shut it down. Replaces target and credentials.
     */
    public Builder channel(ManagedChannel channel) {
      this.channel = Objects.requireNonNull(channel, "channel");
      return this;
    }

    /** The deadline of each call that does not pass its own; default {@link #DEFAULT_DEADLINE}, 30 s. */
    public Builder defaultDeadline(Duration deadline) {
      Objects.requireNonNull(deadline, "deadline");
      if (deadline.isNegative() || deadline.isZero()) {
        throw new IllegalArgumentException("deadline must be positive: " + deadline);
      }
      this.defaultDeadline = deadline;
      return this;
    }

    public VRegistryClient build() {
      if (channel != null) {
        return new VRegistryClient(channel, false, defaultDeadline);
      }
      if (target == null || target.isEmpty()) {
        throw new IllegalStateException("VRegistryClient: target is required");
      }
      ManagedChannelBuilder<?> builder = Grpc.newChannelBuilder(target, channelCredentials());
      if (overrideAuthority != null) {
        builder.overrideAuthority(overrideAuthority);
      }
      return new VRegistryClient(builder.build(), true, defaultDeadline);
    }

    private ChannelCredentials channelCredentials() {
      if (credentials != null) {
        return credentials;
      }
      if (plaintext) {
        return InsecureChannelCredentials.create();
      }
      TlsChannelCredentials.Builder tls = TlsChannelCredentials.newBuilder();
      try {
        if (trustCertificates != null) {
          tls.trustManager(trustCertificates);
        }
        if (clientCertificateChain != null) {
          tls.keyManager(clientCertificateChain, clientPrivateKey);
        }
      } catch (IOException e) {
        throw new UncheckedIOException("VRegistryClient: cannot read TLS files", e);
      }
      return tls.build();
    }
  }
}
