package client

import (
	"fmt"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	vregistryv1 "github.com/vregistry/vregistry/clients/go/gen/vregistry/v1"
)

// ErrorDomain is the google.rpc.ErrorInfo domain of every vregistry error.
const ErrorDomain = "vregistry.dev"

// Error is a failed call: the gRPC status plus the details the server attached.
type Error struct {
	// Code is the gRPC status code (codes.NotFound, codes.InvalidArgument, ...).
	Code codes.Code
	// Message is the status message.
	Message string
	// Reason is the google.rpc.ErrorInfo reason as sent, the name of a vregistryv1.ErrorReason
	// value ("INVALID_PATH", ...); empty when the error did not come from the server (a
	// deadline, a connection failure). ReasonCode gives it as the generated enum.
	Reason string
	// Domain is the ErrorInfo domain, ErrorDomain for server errors.
	Domain string
	// Metadata is the ErrorInfo metadata (e.g. "upstream_id", "path").
	Metadata map[string]string
	// Attempts is every upstream's outcome of a failed ResolveUpstream, in position order.
	Attempts []*vregistryv1.UpstreamAttempt

	status *status.Status
}

// Error implements error: "vregistry: NOT_FOUND (NOT_FOUND_ON_UPSTREAMS): message".
func (e *Error) Error() string {
	if e.Reason == "" {
		return fmt.Sprintf("vregistry: %s: %s", CodeName(e.Code), e.Message)
	}
	return fmt.Sprintf("vregistry: %s (%s): %s", CodeName(e.Code), e.Reason, e.Message)
}

// ReasonCode is Reason as the generated enum, e.g. vregistryv1.ErrorReason_NOT_FOUND_ON_UPSTREAMS
// (protos/vregistry/v1/error_reason.proto documents each value). It is
// vregistryv1.ErrorReason_ERROR_REASON_UNSPECIFIED when the error carried no vregistry ErrorInfo
// (a client-side deadline, a connection failure, an ErrorInfo of another domain) or a reason
// this version of the client does not know yet; Reason still holds the string then.
func (e *Error) ReasonCode() vregistryv1.ErrorReason {
	if e.Domain != ErrorDomain {
		return vregistryv1.ErrorReason_ERROR_REASON_UNSPECIFIED
	}
	return vregistryv1.ErrorReason(vregistryv1.ErrorReason_value[e.Reason])
}

// GRPCStatus lets status.FromError and status.Code see through the wrapper.
func (e *Error) GRPCStatus() *status.Status { return e.status }

// FromError converts an error returned by a gRPC call into an *Error, decoding the
// ErrorInfo and ResolveUpstreamFailure details. nil stays nil; an error without a gRPC
// status becomes codes.Unknown.
func FromError(err error) error {
	if err == nil {
		return nil
	}
	if e, ok := err.(*Error); ok {
		return e
	}
	st, _ := status.FromError(err)
	e := &Error{Code: st.Code(), Message: st.Message(), status: st}
	for _, detail := range st.Details() {
		switch d := detail.(type) {
		case *errdetails.ErrorInfo:
			e.Reason, e.Domain, e.Metadata = d.GetReason(), d.GetDomain(), d.GetMetadata()
		case *vregistryv1.ResolveUpstreamFailure:
			e.Attempts = d.GetAttempts()
		}
	}
	return e
}

var codeNames = map[codes.Code]string{
	codes.OK:                 "OK",
	codes.Canceled:           "CANCELLED",
	codes.Unknown:            "UNKNOWN",
	codes.InvalidArgument:    "INVALID_ARGUMENT",
	codes.DeadlineExceeded:   "DEADLINE_EXCEEDED",
	codes.NotFound:           "NOT_FOUND",
	codes.AlreadyExists:      "ALREADY_EXISTS",
	codes.PermissionDenied:   "PERMISSION_DENIED",
	codes.ResourceExhausted:  "RESOURCE_EXHAUSTED",
	codes.FailedPrecondition: "FAILED_PRECONDITION",
	codes.Aborted:            "ABORTED",
	codes.OutOfRange:         "OUT_OF_RANGE",
	codes.Unimplemented:      "UNIMPLEMENTED",
	codes.Internal:           "INTERNAL",
	codes.Unavailable:        "UNAVAILABLE",
	codes.DataLoss:           "DATA_LOSS",
	codes.Unauthenticated:    "UNAUTHENTICATED",
}

// CodeName is the canonical upper-snake-case name of a gRPC code ("NOT_FOUND").
func CodeName(c codes.Code) string {
	if name, ok := codeNames[c]; ok {
		return name
	}
	return fmt.Sprintf("CODE(%d)", uint32(c))
}
