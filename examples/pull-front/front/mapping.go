package front

import (
	"math"
	"net/http"
	"strconv"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"

	"github.com/vregistry/vregistry/clients/go/client"
	vregistryv1 "github.com/vregistry/vregistry/clients/go/gen/vregistry/v1"
)

// attemptDetail is what an OCI error's detail says of one upstream: what the service reported,
// which never holds a credential (upstream_service.proto, UpstreamAttempt.message).
type attemptDetail struct {
	UpstreamID        string `json:"upstream_id"`
	Position          int32  `json:"position"`
	Outcome           string `json:"outcome"`
	HTTPStatus        int32  `json:"http_status,omitempty"`
	RetryAfterSeconds int32  `json:"retry_after_seconds,omitempty"`
	Reason            string `json:"reason,omitempty"`
}

type resolveDetail struct {
	Reason   string          `json:"reason,omitempty"`
	Attempts []attemptDetail `json:"attempts,omitempty"`
}

// fromResolveError maps a failed ResolveUpstream to the answer for the client. The rule: what
// the content's absence or the upstreams' state explains is the client's answer (404, 429,
// 503, 504); what only an operator can fix (credentials an upstream refuses, the front's own
// token or registry id) is 502, as GitLab's virtual registry controller answers an upstream
// auth error, so that no client takes it for its own fault.
func fromResolveError(rt route, err error) *ociError {
	e, ok := client.AsError(client.FromError(err))
	if !ok { // FromError always gives an *Error; keep a safe answer regardless
		return newOCIError(http.StatusBadGateway, codeUnknown, "the upstream resolution failed")
	}
	out := newOCIError(statusFor(e), codeFor(rt, e), e.Message)
	out.detail = detailOf(e)
	if out.status == http.StatusTooManyRequests || out.status == http.StatusServiceUnavailable {
		out.retryAfter = retryAfterSeconds(e)
	}
	return out
}

// statusFor is the HTTP status of a resolve error (the README's table is this function).
func statusFor(e *client.Error) int {
	switch e.Code {
	case codes.NotFound:
		if e.ReasonCode() == vregistryv1.ErrorReason_NOT_FOUND_ON_UPSTREAMS {
			return http.StatusNotFound
		}
		return http.StatusBadGateway // REGISTRY_NOT_FOUND: the front's --registry-id is wrong
	case codes.InvalidArgument:
		if e.ReasonCode() == vregistryv1.ErrorReason_INVALID_PATH {
			return http.StatusBadRequest
		}
		return http.StatusBadGateway // a malformed request field is the front's doing
	case codes.Unavailable:
		if rateLimited(e) {
			return http.StatusTooManyRequests
		}
		return http.StatusServiceUnavailable
	case codes.ResourceExhausted:
		return http.StatusTooManyRequests
	case codes.DeadlineExceeded:
		return http.StatusGatewayTimeout
	}
	// FAILED_PRECONDITION (credentials rejected or unreadable, realm or egress refused, a
	// registry without upstreams), PERMISSION_DENIED and UNAUTHENTICATED (the front's caller
	// token), INTERNAL, UNKNOWN, CANCELLED: an operator's problem, not the client's.
	return http.StatusBadGateway
}

func codeFor(rt route, e *client.Error) string {
	switch statusFor(e) {
	case http.StatusNotFound:
		return rt.unknownCode()
	case http.StatusBadRequest:
		return rt.invalidCode()
	case http.StatusTooManyRequests:
		return codeTooManyRequests
	case http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return codeUnavailable
	}
	return codeUnknown
}

// rateLimited is true for the service's UPSTREAM_RATE_LIMITED, and for a failed resolve whose
// only unavailable upstreams answered 429 (the service then reports UPSTREAM_UNREACHABLE with
// ATTEMPT_OUTCOME_RATE_LIMITED attempts, error_reason.proto).
func rateLimited(e *client.Error) bool {
	if e.ReasonCode() == vregistryv1.ErrorReason_UPSTREAM_RATE_LIMITED {
		return true
	}
	limited := false
	for _, a := range e.Attempts {
		switch a.GetOutcome() {
		case vregistryv1.AttemptOutcome_ATTEMPT_OUTCOME_RATE_LIMITED:
			limited = true
		case vregistryv1.AttemptOutcome_ATTEMPT_OUTCOME_UNAVAILABLE, vregistryv1.AttemptOutcome_ATTEMPT_OUTCOME_AUTH_FAILED:
			return false
		}
	}
	return limited
}

// retryAfterSeconds is the google.rpc.RetryInfo delay when the service sent one, else the
// longest Retry-After an upstream gave in the attempts; 0 when neither says anything.
func retryAfterSeconds(e *client.Error) int {
	if st := e.GRPCStatus(); st != nil {
		for _, d := range st.Details() {
			if info, ok := d.(*errdetails.RetryInfo); ok && info.GetRetryDelay() != nil {
				return ceilSeconds(info.GetRetryDelay().AsDuration())
			}
		}
	}
	longest := 0
	for _, a := range e.Attempts {
		longest = max(longest, int(a.GetRetryAfterSeconds()))
	}
	return longest
}

func ceilSeconds(d time.Duration) int {
	if d <= 0 {
		return 0
	}
	return int(math.Ceil(d.Seconds()))
}

func detailOf(e *client.Error) *resolveDetail {
	d := &resolveDetail{Reason: e.Reason}
	for _, a := range e.Attempts {
		d.Attempts = append(d.Attempts, attemptDetail{
			UpstreamID: a.GetUpstreamId(), Position: a.GetPosition(), Outcome: a.GetOutcome().String(),
			HTTPStatus: a.GetHttpStatus(), RetryAfterSeconds: a.GetRetryAfterSeconds(), Reason: a.GetReason(),
		})
	}
	if d.Reason == "" && len(d.Attempts) == 0 {
		return nil
	}
	return d
}

// fromUpstreamStatus maps an error status of the upstream's own answer to the fetch (after a
// resolve that found the content there): the content went away (404), the headers the service
// gave stopped working (401/403: 502, the operator's), a rate limit (429, its Retry-After
// passed on), the upstream failing (503 stays 503, other statuses 502).
func fromUpstreamStatus(rt route, resp *http.Response) *ociError {
	status := resp.StatusCode
	msg := "the upstream answered " + strconv.Itoa(status) + " " + http.StatusText(status)
	var out *ociError
	switch {
	case status == http.StatusNotFound:
		out = newOCIError(http.StatusNotFound, rt.unknownCode(), msg)
	case status == http.StatusTooManyRequests:
		out = newOCIError(http.StatusTooManyRequests, codeTooManyRequests, msg)
	case status == http.StatusServiceUnavailable:
		out = newOCIError(http.StatusServiceUnavailable, codeUnavailable, msg)
	default: // 401, 403, other 4xx, 3xx not followed, other 5xx
		out = newOCIError(http.StatusBadGateway, codeUnknown, msg)
	}
	if out.status == http.StatusTooManyRequests || out.status == http.StatusServiceUnavailable {
		out.retryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
	}
	return out
}

// parseRetryAfter reads a Retry-After of seconds or an HTTP date (RFC 9110); 0 when absent,
// past or unreadable.
func parseRetryAfter(v string, now time.Time) int {
	if v == "" {
		return 0
	}
	if secs, err := strconv.Atoi(v); err == nil {
		return max(secs, 0)
	}
	if at, err := http.ParseTime(v); err == nil {
		return ceilSeconds(at.Sub(now))
	}
	return 0
}
