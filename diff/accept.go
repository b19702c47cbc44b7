package diff

import (
	"bytes"
	"crypto/sha256"
	"fmt"

	"peerup/manifest"
)

// AcceptDeltas is the one rule for a delta index taken from outside
// (SPEC.md §10, §17): a trusted key signed exactly these bytes, and then
// DeltasFor binds it to the verified manifest mb of image version v.
func AcceptDeltas(trust *manifest.Keyring, raw, sig []byte, image string, v uint64, mb []byte) (*DeltaIndex, error) {
	if trust == nil {
		return nil, fmt.Errorf("delta index of %s v%d: no trusted keys", image, v)
	}
	if _, err := trust.Verify(bytes.NewReader(raw), sig); err != nil {
		return nil, fmt.Errorf("delta index of %s v%d: %w", image, v, err)
	}
	return DeltasFor(raw, image, v, mb)
}

// DeltasFor parses a delta index and checks it belongs to manifest mb of
// image version v: it names that version and that manifest's hash, so
// encodings signed for another version are never mixed in. It does not
// check the signature: AcceptDeltas does, and only an export without keys
// calls this alone.
func DeltasFor(raw []byte, image string, v uint64, mb []byte) (*DeltaIndex, error) {
	x, err := ParseDeltaIndex(raw)
	if err != nil {
		return nil, fmt.Errorf("delta index of %s v%d: %w", image, v, err)
	}
	if x.Image != image || x.Version != v || x.Manifest != manifest.Digest(sha256.Sum256(mb)) {
		return nil, fmt.Errorf("delta index for %s v%d (manifest %s) offered for %s v%d: refused", x.Image, x.Version, x.Manifest, image, v)
	}
	return x, nil
}
