package front

import (
	"log/slog"
	"net/http"
	"time"
)

// recorder is the ResponseWriter the handler writes through: it keeps what the request line
// logs (status, bytes, the upstream that answered, the RPCs made).
type recorder struct {
	http.ResponseWriter
	started    time.Time
	status     int
	bytes      int64
	upstreamID string
	position   int32
	cacheHit   bool
	rpcs       int
	aborted    bool
}

func (r *recorder) WriteHeader(status int) {
	if r.status == 0 {
		r.status = status
	}
	r.ResponseWriter.WriteHeader(status)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	n, err := r.ResponseWriter.Write(b)
	r.bytes += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach the server's writer.
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// logRequest writes the request's one line. It holds no header of the request or of the
// upstream: no Authorization value can reach the log.
func (h *Handler) logRequest(rec *recorder, r *http.Request) {
	attrs := []slog.Attr{
		slog.String("method", r.Method),
		slog.String("path", r.URL.Path),
		slog.Int("status", rec.status),
		slog.Int64("bytes", rec.bytes),
		slog.Float64("duration_ms", float64(time.Since(rec.started).Microseconds())/1000),
		slog.String("upstream_id", rec.upstreamID),
		slog.Int("position", int(rec.position)),
		slog.Bool("cache_hit", rec.cacheHit),
		slog.Int("rpcs", rec.rpcs),
	}
	if rec.aborted {
		attrs = append(attrs, slog.Bool("aborted", true))
	}
	h.log.LogAttrs(r.Context(), slog.LevelInfo, "request", attrs...)
}
