package front

import (
	"context"
	"errors"
	"net"
	"net/http"
	"time"
)

// Serve serves handler on ln until ctx is done, then shuts down gracefully: it stops
// accepting, lets the requests in flight finish for up to grace, and closes what is left.
// It returns nil after a clean shutdown.
func Serve(ctx context.Context, ln net.Listener, handler http.Handler, grace time.Duration) error {
	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		// No WriteTimeout: a blob relay takes as long as the upstream and client need; the
		// upstream fetch has its own deadline (--upstream-timeout).
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	err := srv.Shutdown(shutdownCtx)
	if errors.Is(err, context.DeadlineExceeded) {
		_ = srv.Close()
	}
	if serveErr := <-done; serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return serveErr
	}
	return err
}
