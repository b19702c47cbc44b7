package manifest

import (
	"errors"
	"fmt"
	"io"
	"time"
)

// Errors Accept refuses a validly signed manifest with.
var (
	// ErrNotNewer is a version at or below the one the caller holds: a
	// rollback or a replay.
	ErrNotNewer = errors.New("not newer than the current version")
	// ErrExpired is a manifest past its signed expires time (SPEC.md §17).
	ErrExpired = errors.New("manifest has expired")
)

// Signed is a signed file — a manifest or a delta index — and its detached
// signature. The signed bytes stay where they are (on disk: a manifest may
// be tens of MiB and a laptop's update has 48 MiB in all) and are read again
// for each pass: once to verify, once per parse.
type Signed struct {
	Data io.ReaderAt
	Size int64
	Sig  []byte
}

// Reader reads the signed bytes from the start; each call is independent.
func (s Signed) Reader() io.Reader { return io.NewSectionReader(s.Data, 0, s.Size) }

// Want is what the caller asked a source for, and what the signed header
// must therefore say.
type Want struct {
	Image   string
	Version uint64
	// After, if set, is the version the caller already holds (a laptop's
	// current one, a mirror's newest): the manifest must be newer.
	After uint64
	// Now is the clock expiry is judged by. The zero time skips expiry,
	// for callers that only pass on what they hold (a seed advertising, an
	// export writing a stick): the node that installs checks it again.
	Now time.Time
}

// Accept is the one rule for a manifest taken from outside (SPEC.md §17):
// a trusted, unrevoked key signed exactly these bytes, checked before a
// byte is parsed; then CheckHeader. It returns the signed header and the
// signer's fingerprint.
func Accept(trust *Keyring, m Signed, want Want) (*Header, string, error) {
	if trust == nil {
		return nil, "", fmt.Errorf("manifest %s v%d: no trusted keys", want.Image, want.Version)
	}
	signer, err := trust.Verify(m.Reader(), m.Sig)
	if err != nil {
		return nil, "", fmt.Errorf("manifest %s v%d: %w", want.Image, want.Version, err)
	}
	h, err := CheckHeader(m.Reader(), want)
	if err != nil {
		return nil, "", err
	}
	return h, signer, nil
}

// CheckHeader applies the rules to what a signature vouches for: the signed
// image and version are the ones asked for (no mix-and-match), newer than
// want.After (no rollback or replay), and not expired at want.Now. It reads
// only the header of the manifest r streams. It does not check the
// signature: Accept does, and only an export without keys calls this alone.
func CheckHeader(r io.Reader, want Want) (*Header, error) {
	mr, err := NewReader(r)
	if err != nil {
		return nil, fmt.Errorf("manifest %s v%d: %w", want.Image, want.Version, err)
	}
	h := mr.Header()
	if h.Image != want.Image || h.Version != want.Version {
		return nil, fmt.Errorf("manifest offered as %s v%d is signed as %s v%d", want.Image, want.Version, h.Image, h.Version)
	}
	if h.Version <= want.After {
		return nil, fmt.Errorf("manifest %s v%d is %w (%d)", want.Image, want.Version, ErrNotNewer, want.After)
	}
	if !want.Now.IsZero() && !h.Expires.IsZero() && want.Now.After(h.Expires) {
		return nil, fmt.Errorf("manifest %s v%d: %w (expires %s); a newer version should exist", want.Image, want.Version, ErrExpired, h.Expires.Format(time.RFC3339))
	}
	return &h, nil
}
