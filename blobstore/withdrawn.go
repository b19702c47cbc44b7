package blobstore

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/peerup/peerup/internal/fsutil"
	"github.com/peerup/peerup/manifest"
)

// Withdrawn is an image's signed list of withdrawn versions (SPEC.md §5):
// versions its publisher no longer wants installed, which nodes skip.
// Seq orders the lists of one image: a node keeps the highest it has
// verified, so a peer serving an older list cannot bring a version back.
type Withdrawn struct {
	Image    string
	Seq      uint64
	Versions []uint64 // ascending, each once
}

// MaxWithdrawn bounds a withdrawn list: 4096 versions fit in well under it.
const MaxWithdrawn = 96 << 10

const withdrawnMagic = "peerup-withdrawn 1"

// ErrWithdrawnList is wrapped by errors about a list that does not parse.
var ErrWithdrawnList = errors.New("bad withdrawn list")

// Has reports whether v is withdrawn.
func (w *Withdrawn) Has(v uint64) bool {
	if w == nil {
		return false
	}
	_, ok := slices.BinarySearch(w.Versions, v)
	return ok
}

// Marshal encodes the list.
func (w *Withdrawn) Marshal() []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s\nimage %s\nseq %d\n", withdrawnMagic, w.Image, w.Seq)
	for _, v := range w.Versions {
		fmt.Fprintf(&b, "version %d\n", v)
	}
	return b.Bytes()
}

// ParseWithdrawn reads a list, strictly: the magic, the image, the
// sequence number, then versions in ascending order.
func ParseWithdrawn(b []byte) (*Withdrawn, error) {
	if len(b) > MaxWithdrawn {
		return nil, fmt.Errorf("%w: %d bytes, more than %d", ErrWithdrawnList, len(b), MaxWithdrawn)
	}
	lines := strings.Split(string(b), "\n")
	if len(lines) < 4 || lines[len(lines)-1] != "" || lines[0] != withdrawnMagic {
		return nil, fmt.Errorf("%w: want %q, an image, a seq line and a final newline", ErrWithdrawnList, withdrawnMagic)
	}
	lines = lines[:len(lines)-1]
	w := &Withdrawn{}
	image, ok := strings.CutPrefix(lines[1], "image ")
	if !ok || manifest.ValidImage(image) != nil {
		return nil, fmt.Errorf("%w: line 2: want an image name, got %q", ErrWithdrawnList, lines[1])
	}
	w.Image = image
	num := func(line, key string) (uint64, bool) {
		s, ok := strings.CutPrefix(line, key+" ")
		if !ok || s == "" || (len(s) > 1 && s[0] == '0') {
			return 0, false
		}
		n, err := strconv.ParseUint(s, 10, 64)
		return n, err == nil
	}
	if w.Seq, ok = num(lines[2], "seq"); !ok {
		return nil, fmt.Errorf("%w: line 3: want seq N, got %q", ErrWithdrawnList, lines[2])
	}
	for i, l := range lines[3:] {
		v, ok := num(l, "version")
		if !ok || v == 0 || (len(w.Versions) > 0 && v <= w.Versions[len(w.Versions)-1]) {
			return nil, fmt.Errorf("%w: line %d: want a version above the last, got %q", ErrWithdrawnList, i+4, l)
		}
		w.Versions = append(w.Versions, v)
	}
	return w, nil
}

// VerifyWithdrawn checks a list's signature against trust and that it is
// image's, and returns it.
func VerifyWithdrawn(trust *manifest.Keyring, image string, data, sig []byte) (*Withdrawn, error) {
	if _, err := trust.Verify(bytes.NewReader(data), sig); err != nil {
		return nil, fmt.Errorf("withdrawn list of %s: %w", image, err)
	}
	w, err := ParseWithdrawn(data)
	if err != nil {
		return nil, fmt.Errorf("withdrawn list of %s: %w", image, err)
	}
	if w.Image != image {
		return nil, fmt.Errorf("withdrawn list of %s names image %q: %w", image, w.Image, ErrWithdrawnList)
	}
	return w, nil
}

// ReadWithdrawn returns the repo's list of image and its signature, both
// nil if it has none.
func (r *Repo) ReadWithdrawn(image string) (data, sig []byte, err error) {
	l := r.Layout()
	data, err = readCapped(l.Withdrawn(image), MaxWithdrawn)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	if sig, err = readCapped(SignatureOf(l.Withdrawn(image)), manifest.MaxSignature); err != nil {
		return nil, nil, err
	}
	return data, sig, nil
}

// StoreWithdrawn keeps a list, verified by the caller, so the repo serves
// it. The signature is written first: a reader between the two renames
// finds the new signature over the old list, fails to verify it and goes
// without, for that moment, rather than trusting anything unsigned.
func (r *Repo) StoreWithdrawn(image string, data, sig []byte) error {
	l := r.Layout()
	if err := os.MkdirAll(l.ImageDir(image), 0o755); err != nil {
		return fmt.Errorf("store withdrawn list: %w", err)
	}
	if err := fsutil.WriteAtomic(SignatureOf(l.Withdrawn(image)), sig); err != nil {
		return fmt.Errorf("store withdrawn list: %w", err)
	}
	if err := fsutil.WriteAtomic(l.Withdrawn(image), data); err != nil {
		return fmt.Errorf("store withdrawn list: %w", err)
	}
	return nil
}

// Withdraw adds v, a version the repo lists, to image's withdrawn list,
// signed by signer (a fleet key, as for publishing), with the next
// sequence number. It holds the repo's lock.
func (r *Repo) Withdraw(image string, v uint64, signer *manifest.Signer) (*Withdrawn, error) {
	unlock, err := r.Lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := r.checkSigner(PublishOptions{Signer: signer}); err != nil {
		return nil, err
	}
	ix, err := r.ReadIndex()
	if err != nil {
		return nil, err
	}
	if _, ok := ix.Find(image, v); !ok {
		return nil, fmt.Errorf("withdraw: %s lists no version %d of %s", r.dir, v, image)
	}
	w := &Withdrawn{Image: image}
	data, _, err := r.ReadWithdrawn(image)
	if err != nil {
		return nil, err
	}
	if data != nil {
		if w, err = ParseWithdrawn(data); err != nil {
			return nil, fmt.Errorf("the repo's withdrawn list of %s: %w", image, err)
		}
	}
	if !w.Has(v) {
		w.Versions = append(w.Versions, v)
		slices.Sort(w.Versions)
	}
	w.Seq++
	data = w.Marshal()
	var sig bytes.Buffer
	if err := signer.Sign(&sig, bytes.NewReader(data)); err != nil {
		return nil, fmt.Errorf("sign withdrawn list: %w", err)
	}
	if err := r.StoreWithdrawn(image, data, sig.Bytes()); err != nil {
		return nil, err
	}
	return w, nil
}
