package diff

import (
	"fmt"

	"github.com/peerup/peerup/manifest"
)

// AcceptDeltas is the one rule for a delta index taken from outside
// (SPEC.md §10, §17): a trusted key signed exactly these bytes, and then
// DeltasFor binds it to the verified manifest of image version v, whose
// SHA-256 is m. The index is verified and parsed from where it lies, never
// read whole into memory.
func AcceptDeltas(trust *manifest.Keyring, raw manifest.Signed, image string, v uint64, m manifest.Digest) (*DeltaIndex, error) {
	if trust == nil {
		return nil, fmt.Errorf("delta index of %s v%d: no trusted keys", image, v)
	}
	if _, err := trust.Verify(raw.Reader(), raw.Sig); err != nil {
		return nil, fmt.Errorf("delta index of %s v%d: %w", image, v, err)
	}
	return DeltasFor(raw, image, v, m)
}

// DeltasFor parses a delta index and checks it belongs to the manifest of
// image version v whose SHA-256 is m: it names that version and that hash,
// so encodings signed for another version are never mixed in. It does not
// check the signature: AcceptDeltas does, and only an export without keys
// calls this alone.
func DeltasFor(raw manifest.Signed, image string, v uint64, m manifest.Digest) (*DeltaIndex, error) {
	x, err := ReadDeltaIndex(raw.Reader())
	if err != nil {
		return nil, fmt.Errorf("delta index of %s v%d: %w", image, v, err)
	}
	if x.Image != image || x.Version != v || x.Manifest != m {
		return nil, fmt.Errorf("delta index for %s v%d (manifest %s) offered for %s v%d: refused", x.Image, x.Version, x.Manifest, image, v)
	}
	return x, nil
}
