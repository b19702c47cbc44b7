package diff

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"

	"github.com/peerup/peerup/manifest"
)

// Kind is how an encoding turns into its target object.
type Kind string

// Encoding kinds (SPEC.md §8).
const (
	// KindZstd is the whole object compressed with zstd.
	KindZstd Kind = "zstd"
	// KindBsdiff is a BSDIFF40 patch from a base object.
	KindBsdiff Kind = "bsdiff"
	// KindBsdiffZstd is a bsdiff patch from a base object whose three
	// streams are zstd frames rather than bzip2 (magic BSDIFFZ1): what a
	// publisher makes, since bzip2 took a fifth of a laptop's CPU for an
	// update.
	KindBsdiffZstd Kind = "bsdiff-zstd"
	// KindZstdDict is the object compressed with zstd using a base object
	// as a raw-content dictionary.
	KindZstdDict Kind = "zstd-dict"
	// KindGzZstd is a gzip -9n object's text compressed with zstd; the
	// node recompresses it with gzip.
	KindGzZstd Kind = "gz-zstd"
	// KindGzZstdDict is a gzip -9n object's text compressed with zstd using
	// a gzip -n base object's text as a raw-content dictionary.
	KindGzZstdDict Kind = "gz-zstd-dict"
)

func (k Kind) needsBase() bool {
	return k == KindBsdiff || k == KindBsdiffZstd || k == KindZstdDict || k == KindGzZstdDict
}

func (k Kind) valid() bool { return k == KindZstd || k == KindGzZstd || k.needsBase() }

// Whole reports whether the kind brings its target without a base.
func (k Kind) Whole() bool { return !k.needsBase() }

// Encoding is one way to obtain a target object. The encoding's own bytes
// are an object too, named by Digest, so peers store and serve them like any
// other.
type Encoding struct {
	Target manifest.Digest
	Kind   Kind
	Digest manifest.Digest // SHA-256 of the encoding's bytes
	Size   int64           // size of the encoding's bytes
	Base   manifest.Digest // zero for KindZstd
}

// DeltaIndex lists the encodings a publisher made for one version. It is
// signed like a manifest and names the manifest it belongs to by hash, so it
// cannot be replayed against another version.
type DeltaIndex struct {
	Image     string
	Version   uint64
	Manifest  manifest.Digest
	Encodings []Encoding
}

// Limits on a delta index.
const (
	MaxDeltaIndex = 256 << 20
	MaxEncodings  = 4 << 20
	maxDeltaLine  = 4 << 10
	deltasMagic   = "peerup-deltas 1"
)

// ErrDeltaIndex is wrapped by every error about a malformed delta index.
var ErrDeltaIndex = errors.New("malformed delta index")

func compareEnc(a, b *Encoding) int {
	if c := bytes.Compare(a.Target[:], b.Target[:]); c != 0 {
		return c
	}
	if c := strings.Compare(string(a.Kind), string(b.Kind)); c != 0 {
		return c
	}
	return bytes.Compare(a.Base[:], b.Base[:])
}

// Sort puts the encodings in index order.
func (x *DeltaIndex) Sort() {
	sort.Slice(x.Encodings, func(i, j int) bool { return compareEnc(&x.Encodings[i], &x.Encodings[j]) < 0 })
}

// Marshal encodes the index; the encodings must be sorted and unique.
func (x *DeltaIndex) Marshal() ([]byte, error) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s\nimage %s\nversion %d\nmanifest %s\nencodings %d\n\n", deltasMagic, x.Image, x.Version, x.Manifest, len(x.Encodings))
	for i := range x.Encodings {
		e := &x.Encodings[i]
		if err := e.validate(); err != nil {
			return nil, err
		}
		if i > 0 && compareEnc(&x.Encodings[i-1], e) >= 0 {
			return nil, fmt.Errorf("%w: encodings not sorted and unique at %s", ErrDeltaIndex, e.Target)
		}
		fmt.Fprintf(&b, "%s %s %s %d", e.Target, e.Kind, e.Digest, e.Size)
		if e.Kind.needsBase() {
			fmt.Fprintf(&b, " %s", e.Base)
		}
		b.WriteByte('\n')
	}
	return b.Bytes(), nil
}

func (e *Encoding) validate() error {
	if !e.Kind.valid() {
		return fmt.Errorf("%w: unknown encoding kind %q", ErrDeltaIndex, e.Kind)
	}
	if e.Size <= 0 || e.Size > manifest.MaxFileSize {
		return fmt.Errorf("%w: encoding size %d out of range", ErrDeltaIndex, e.Size)
	}
	if e.Kind.needsBase() == e.Base.IsZero() {
		return fmt.Errorf("%w: %s encoding with base %s", ErrDeltaIndex, e.Kind, e.Base)
	}
	if e.Base == e.Target {
		return fmt.Errorf("%w: encoding of %s based on itself", ErrDeltaIndex, e.Target)
	}
	return nil
}

// ParseDeltaIndex reads a delta index held in memory strictly.
func ParseDeltaIndex(data []byte) (*DeltaIndex, error) {
	if len(data) > MaxDeltaIndex {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrDeltaIndex, MaxDeltaIndex)
	}
	return ReadDeltaIndex(bytes.NewReader(data))
}

// ReadDeltaIndex reads a delta index strictly as it streams, so that only
// the parsed encodings are held, not the text they came as.
func ReadDeltaIndex(rd io.Reader) (*DeltaIndex, error) {
	var encs []Encoding
	x, err := ScanDeltaIndex(rd, func(e *Encoding) error {
		encs = append(encs, *e)
		return nil
	})
	if err != nil {
		return nil, err
	}
	x.Encodings = encs
	return x, nil
}

// ScanDeltaIndex reads a delta index strictly as it streams and calls each
// for every encoding, in order, holding none: for a caller that only
// collects digests (gc, trimming encodings). It returns the header, with no
// Encodings. An error from each stops the scan and is returned.
func ScanDeltaIndex(rd io.Reader, each func(e *Encoding) error) (*DeltaIndex, error) {
	// One byte past the cap is read, so that a larger index is refused
	// rather than silently cut.
	lr := &io.LimitedReader{R: rd, N: MaxDeltaIndex + 1}
	// Every valid line is a few hundred bytes: a longer one is refused
	// before it is buffered.
	r := bufio.NewReaderSize(lr, maxDeltaLine)
	line := 0
	next := func() (string, error) {
		b, err := r.ReadSlice('\n')
		switch {
		case lr.N <= 0:
			return "", fmt.Errorf("%w: larger than %d bytes", ErrDeltaIndex, MaxDeltaIndex)
		case errors.Is(err, bufio.ErrBufferFull):
			return "", fmt.Errorf("%w: line %d: longer than %d bytes", ErrDeltaIndex, line+1, maxDeltaLine)
		case err == io.EOF && len(b) != 0:
			return "", fmt.Errorf("%w: line %d: truncated", ErrDeltaIndex, line+1)
		case err != nil:
			return "", err
		}
		line++
		return string(b[:len(b)-1]), nil
	}
	x := &DeltaIndex{}
	var n, count uint64
	var prev Encoding
	for i, key := range []string{deltasMagic, "image", "version", "manifest", "encodings"} {
		s, err := next()
		if err != nil {
			return nil, fmt.Errorf("%w: header ends early", ErrDeltaIndex)
		}
		if i == 0 {
			if s != deltasMagic {
				return nil, fmt.Errorf("%w: first line is not %q", ErrDeltaIndex, deltasMagic)
			}
			continue
		}
		k, v, ok := strings.Cut(s, " ")
		if !ok || k != key {
			return nil, fmt.Errorf("%w: line %d: want %q", ErrDeltaIndex, line, key)
		}
		switch key {
		case "image":
			if err := manifest.ValidImage(v); err != nil {
				return nil, fmt.Errorf("%w: %w", ErrDeltaIndex, err)
			}
			x.Image = v
		case "version":
			if x.Version, err = canonUint(v); err != nil || x.Version == 0 {
				return nil, fmt.Errorf("%w: bad version %q", ErrDeltaIndex, v)
			}
		case "manifest":
			if x.Manifest, err = manifest.ParseDigest(v); err != nil {
				return nil, fmt.Errorf("%w: %w", ErrDeltaIndex, err)
			}
		case "encodings":
			if n, err = canonUint(v); err != nil || n > MaxEncodings {
				return nil, fmt.Errorf("%w: bad encoding count %q", ErrDeltaIndex, v)
			}
		}
	}
	if s, err := next(); err != nil || s != "" {
		return nil, fmt.Errorf("%w: header not followed by a blank line", ErrDeltaIndex)
	}
	for {
		s, err := next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		f := strings.Split(s, " ")
		if len(f) != 4 && len(f) != 5 {
			return nil, fmt.Errorf("%w: line %d: want TARGET KIND SHA256 SIZE [BASE]", ErrDeltaIndex, line)
		}
		var e Encoding
		if e.Target, err = manifest.ParseDigest(f[0]); err != nil {
			return nil, fmt.Errorf("%w: line %d: %w", ErrDeltaIndex, line, err)
		}
		e.Kind = Kind(f[1])
		if e.Digest, err = manifest.ParseDigest(f[2]); err != nil {
			return nil, fmt.Errorf("%w: line %d: %w", ErrDeltaIndex, line, err)
		}
		size, err := canonUint(f[3])
		if err != nil || size > uint64(manifest.MaxFileSize) {
			return nil, fmt.Errorf("%w: line %d: bad size %q", ErrDeltaIndex, line, f[3])
		}
		e.Size = int64(size)
		if len(f) == 5 {
			if e.Base, err = manifest.ParseDigest(f[4]); err != nil {
				return nil, fmt.Errorf("%w: line %d: %w", ErrDeltaIndex, line, err)
			}
		}
		if err := e.validate(); err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		if count > 0 && compareEnc(&prev, &e) >= 0 {
			return nil, fmt.Errorf("%w: line %d: not sorted and unique", ErrDeltaIndex, line)
		}
		if count >= n {
			return nil, fmt.Errorf("%w: more encodings than the header's %d", ErrDeltaIndex, n)
		}
		if err := each(&e); err != nil {
			return nil, err
		}
		prev = e
		count++
	}
	if count != n {
		return nil, fmt.Errorf("%w: header says %d encodings, found %d", ErrDeltaIndex, n, count)
	}
	return x, nil
}

func canonUint(s string) (uint64, error) {
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil || strconv.FormatUint(v, 10) != s {
		return 0, fmt.Errorf("not canonical decimal: %q", s)
	}
	return v, nil
}

// For returns the encodings of target, in index order.
func (x *DeltaIndex) For(target manifest.Digest) []Encoding {
	i := sort.Search(len(x.Encodings), func(i int) bool {
		return bytes.Compare(x.Encodings[i].Target[:], target[:]) >= 0
	})
	j := i
	for j < len(x.Encodings) && x.Encodings[j].Target == target {
		j++
	}
	return x.Encodings[i:j]
}

func sha256sum(b []byte) [32]byte { return sha256.Sum256(b) }
