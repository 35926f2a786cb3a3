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
import java.util.Map;
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

  /**
   * The gRPC service config every channel the builder makes gets unless {@link
   * Builder#serviceConfig} replaces it: the standard JSON of gRPC's service_config.proto as the
   * map grpc-java takes (numbers as Double, unmodifiable). It is read from the jar's {@code
   * dev/vregistry/client/service_config.json}, a copy of the repository's {@code
   * clients/service_config.json} (the one definition, the same values in every vregistry client):
   *
   * <ul>
   *   <li>round_robin over every address the target resolves to, so {@code
   *       dns:///vregistry-headless:50051} (the chart's headless Service) spreads calls over all
   *       pods instead of pinning one;
   *   <li>UNAVAILABLE (a pod going away, a refused connection, a server-side outage) retried up
   *       to 3 attempts in all with exponential backoff from 0.1 s to 1 s, inside the deadline.
   * </ul>
   */
  public static final Map<String, ?> DEFAULT_SERVICE_CONFIG = ServiceConfigResource.load();

  private final ManagedChannel channel;
  private final boolean ownsChannel;
  private final CallSettings settings;
  private final UpstreamServiceGrpc.UpstreamServiceBlockingStub blocking;
  private final UpstreamServiceGrpc.UpstreamServiceFutureStub future;

  private VRegistryClient(ManagedChannel channel, boolean ownsChannel, CallSettings settings) {
    this.channel = channel;
    this.ownsChannel = ownsChannel;
    this.settings = settings;
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

  // ---------------------------------------------------------------- views

  /**
   * ConfigService (the admin API) on this client's channel, with its deadline and caller token.
   */
  public ConfigClient config() {
    return new ConfigClient(channel, settings);
  }

  /**
   * A view of this client sending another caller token ({@code ""} or {@code null}: none) on the
   * same channel; closing the view does not close the channel.
   */
  public VRegistryClient withCallerToken(String callerToken) {
    return new VRegistryClient(channel, false, settings.withCallerToken(callerToken));
  }

  /** A view of this client with another default deadline, on the same channel. */
  public VRegistryClient withDefaultDeadline(Duration deadline) {
    return new VRegistryClient(channel, false, settings.withDeadline(deadline));
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
    return settings.deadline();
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

  private UpstreamServiceGrpc.UpstreamServiceBlockingStub blocking(Duration deadline) {
    return settings.apply(blocking, deadline);
  }

  private UpstreamServiceGrpc.UpstreamServiceFutureStub future(Duration deadline) {
    return settings.apply(future, deadline);
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
    private String callerToken = "";
    private Map<String, ?> serviceConfig = DEFAULT_SERVICE_CONFIG;

    private Builder() {}

    /**
     * The caller token (from the server's callers file), sent as {@code authorization: Bearer
     * TOKEN} on every call ({@code null} or {@code ""}: none); {@link
     * VRegistryClient#withCallerToken} changes it for a view.
     */
    public Builder callerToken(String callerToken) {
      this.callerToken = callerToken == null ? "" : callerToken;
      return this;
    }

    /**
     * The gRPC service config (retry policy, load balancing) as grpc-java's map form of the
     * standard JSON; default {@link #DEFAULT_SERVICE_CONFIG}. {@code null}: none (pick_first, no
     * retries).
     */
    public Builder serviceConfig(Map<String, ?> serviceConfig) {
      this.serviceConfig = serviceConfig;
      return this;
    }

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
      this.defaultDeadline = CallSettings.checkedDeadline(deadline);
      return this;
    }

    public VRegistryClient build() {
      CallSettings settings = new CallSettings(defaultDeadline, callerToken);
      if (channel != null) {
        return new VRegistryClient(channel, false, settings);
      }
      if (target == null || target.isEmpty()) {
        throw new IllegalStateException("VRegistryClient: target is required");
      }
      ManagedChannelBuilder<?> builder = Grpc.newChannelBuilder(target, channelCredentials());
      if (overrideAuthority != null) {
        builder.overrideAuthority(overrideAuthority);
      }
      if (serviceConfig != null) {
        // The config above is the one in force: a DNS TXT record must not replace it.
        builder.defaultServiceConfig(serviceConfig).disableServiceConfigLookUp().enableRetry();
      }
      return new VRegistryClient(builder.build(), true, settings);
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
