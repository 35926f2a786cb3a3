package front

import (
	"errors"
	"fmt"
	"hash"
	"io"
)

// relayBufferSize is the size of each of the relay's two buffers: what one request holds in
// memory of a blob, whatever its size.
const relayBufferSize = 32 << 10

// errLength and errMismatch are what the relay found wrong with the content.
var (
	errLength   = errors.New("content length mismatch")
	errMismatch = errors.New("digest mismatch")
)

// contentError is a verification failure, with what was expected and what came.
type contentError struct {
	kind      error
	want, got string
}

func (e *contentError) Error() string {
	return fmt.Sprintf("%v: expected %s, got %s", e.kind, e.want, e.got)
}

func (e *contentError) Unwrap() error { return e.kind }

// clientWriteError is a failed write to the client (it went away), told apart from a failed
// read of the upstream.
type clientWriteError struct{ err error }

func (e *clientWriteError) Error() string { return "writing to the client: " + e.err.Error() }

func (e *clientWriteError) Unwrap() error { return e.err }

// expectation is what the content must match; a nil digest or a negative length is unchecked.
type expectation struct {
	digest *digest
	length int64
}

// relay copies src to dst while hashing it, and always holds the last chunk read back until
// src has ended and the content checked out: the client never receives the complete content
// of something that does not match its digest or length. commit is called once, before the
// first byte is written (it sends the status and headers), so a body that fails the check
// before anything was written can still be answered with an error status.
//
// It returns the bytes written to dst and, on failure, either a *contentError or the read or
// write error that stopped it; committed tells the caller whether an error can still be
// answered or the response must be aborted.
func relay(dst io.Writer, src io.Reader, want expectation, commit func()) (written int64, committed bool, err error) {
	var h hash.Hash
	if want.digest != nil {
		h = want.digest.newHash()
	}
	cur, spare := make([]byte, relayBufferSize), make([]byte, relayBufferSize)
	var pending []byte
	var read int64
	flush := func() error {
		if !committed {
			commit()
			committed = true
		}
		n, werr := dst.Write(pending)
		written += int64(n)
		if werr != nil {
			return &clientWriteError{werr}
		}
		return nil
	}
	for {
		n, rerr := src.Read(cur)
		if n > 0 {
			read += int64(n)
			if h != nil {
				h.Write(cur[:n])
			}
			if want.length >= 0 && read > want.length {
				return written, committed, &contentError{kind: errLength, want: fmt.Sprint(want.length), got: fmt.Sprintf("more than %d", want.length)}
			}
			if pending != nil {
				if werr := flush(); werr != nil {
					return written, committed, werr
				}
			}
			pending = cur[:n]
			cur, spare = spare, cur
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return written, committed, rerr
		}
	}
	if want.length >= 0 && read != want.length {
		return written, committed, &contentError{kind: errLength, want: fmt.Sprint(want.length), got: fmt.Sprint(read)}
	}
	if h != nil {
		if sum := h.Sum(nil); !want.digest.matches(sum) {
			got := want.digest.algorithm + ":" + fmt.Sprintf("%x", sum)
			return written, committed, &contentError{kind: errMismatch, want: want.digest.String(), got: got}
		}
	}
	if err := flush(); err != nil {
		return written, committed, err
	}
	return written, committed, nil
}
