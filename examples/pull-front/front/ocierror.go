package front

import (
	"encoding/json"
	"net/http"
	"strconv"
)

// The distribution spec's error codes the front answers with, plus UNAVAILABLE and UNKNOWN
// from the Docker registry's error codes (which every client knows) for what the spec has
// no code for: the service or an upstream failing.
const (
	codeBlobUnknown     = "BLOB_UNKNOWN"
	codeManifestUnknown = "MANIFEST_UNKNOWN"
	codeManifestInvalid = "MANIFEST_INVALID"
	codeNameUnknown     = "NAME_UNKNOWN"
	codeNameInvalid     = "NAME_INVALID"
	codeDigestInvalid   = "DIGEST_INVALID"
	codeUnsupported     = "UNSUPPORTED"
	codeTooManyRequests = "TOOMANYREQUESTS"
	codeUnavailable     = "UNAVAILABLE"
	codeUnknown         = "UNKNOWN"
)

// ociError is one answer with an OCI error body.
type ociError struct {
	status int
	code   string
	// message is the service's message or the front's own; never an upstream header or body.
	message string
	detail  any
	// retryAfter, in seconds, becomes a Retry-After header when positive.
	retryAfter int
	// header holds extra response headers (Allow on a 405).
	header http.Header
}

func newOCIError(status int, code, message string) *ociError {
	return &ociError{status: status, code: code, message: message}
}

type ociErrorBody struct {
	Errors []ociErrorEntry `json:"errors"`
}

type ociErrorEntry struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Detail  any    `json:"detail,omitempty"`
}

// write sends e. A HEAD answer gets the status and headers only, as HTTP requires.
func (e *ociError) write(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	for k, v := range e.header {
		h[k] = v
	}
	if e.retryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(e.retryAfter))
	}
	body, _ := json.Marshal(ociErrorBody{Errors: []ociErrorEntry{{Code: e.code, Message: e.message, Detail: e.detail}}})
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Set("Docker-Distribution-API-Version", apiVersion)
	w.WriteHeader(e.status)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
}

// methodNotAllowed is the answer to every push (and any other non-read) method.
func methodNotAllowed(method string) *ociError {
	e := newOCIError(http.StatusMethodNotAllowed, codeUnsupported,
		"this registry is read-only: "+method+" is not supported (pull with GET and HEAD)")
	e.header = http.Header{"Allow": {"GET, HEAD"}}
	return e
}
