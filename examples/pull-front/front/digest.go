package front

import (
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"regexp"
	"strings"
)

// digest is a parsed OCI content digest ("sha256:<64 hex>").
type digest struct {
	algorithm string
	encoded   string
}

func (d *digest) String() string { return d.algorithm + ":" + d.encoded }

// digestGrammar is the OCI image spec's digest grammar; the registered algorithms below
// narrow the encoded part further.
var digestGrammar = regexp.MustCompile(`^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$`)

// algorithms are the digest algorithms the front can verify: the two the OCI image spec
// registers, with their hex length.
var algorithms = map[string]struct {
	hexLen int
	new    func() hash.Hash
}{
	"sha256": {64, sha256.New},
	"sha512": {128, sha512.New},
}

// parseDigest checks s against the grammar and a registered algorithm. The front refuses a
// digest it could not verify rather than passing unverified content.
func parseDigest(s string) (*digest, error) {
	if len(s) > 256 || !digestGrammar.MatchString(s) {
		return nil, errors.New("the digest does not follow the OCI digest grammar")
	}
	alg, enc, _ := strings.Cut(s, ":")
	spec, ok := algorithms[alg]
	if !ok {
		return nil, fmt.Errorf("digest algorithm %q is not supported (sha256, sha512)", alg)
	}
	if len(enc) != spec.hexLen || strings.ToLower(enc) != enc {
		return nil, fmt.Errorf("a %s digest is %d lower-case hex characters", alg, spec.hexLen)
	}
	if _, err := hex.DecodeString(enc); err != nil {
		return nil, fmt.Errorf("a %s digest is %d lower-case hex characters", alg, spec.hexLen)
	}
	return &digest{algorithm: alg, encoded: enc}, nil
}

// newHash is the hash that checks content against d.
func (d *digest) newHash() hash.Hash { return algorithms[d.algorithm].new() }

// matches says whether sum, the output of d.newHash, is d.
func (d *digest) matches(sum []byte) bool { return hex.EncodeToString(sum) == d.encoded }
