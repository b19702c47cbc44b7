package blobstore

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/peerup/peerup/internal/fsutil"
	"github.com/peerup/peerup/manifest"
)

// ListKind is one of the signed lists an image's folder holds beside its
// versions (SPEC.md §5): the publisher's word about versions already
// published, changed without republishing them. Each is ordered by a
// sequence number, so a node keeps the highest it has verified and a peer
// serving an older list cannot undo a newer one.
type ListKind int

// The signed lists.
const (
	ListWithdrawn ListKind = iota + 1 // versions not to install (Withdrawn)
	ListRollout                       // versions going to a share of machines (Rollout)
)

// ListKinds are every kind of signed list, for those that pass them all on
// (a pull, a mirror).
func ListKinds() []ListKind { return []ListKind{ListWithdrawn, ListRollout} }

// String is the list's file name in the image's folder.
func (k ListKind) String() string {
	switch k {
	case ListWithdrawn:
		return withdrawnName
	case ListRollout:
		return rolloutName
	}
	return "list-" + strconv.Itoa(int(k))
}

// Max bounds a list of this kind, read or received.
func (k ListKind) Max() int64 {
	if k == ListRollout {
		return MaxRollout
	}
	return MaxWithdrawn
}

func (k ListKind) magic() string { return "peerup-" + k.String() + " 1" }

func (k ListKind) err() error {
	if k == ListRollout {
		return ErrRolloutList
	}
	return ErrWithdrawnList
}

// ListHead is what every signed list starts with: its image and sequence
// number.
type ListHead struct {
	Image string
	Seq   uint64
}

// SignedList is a parsed signed list: a *Withdrawn or a *Rollout.
type SignedList interface {
	Kind() ListKind
	Head() ListHead
	Marshal() []byte
	head() *ListHead
}

// Head is the list's image and sequence number.
func (h ListHead) Head() ListHead { return h }

func (h *ListHead) head() *ListHead { return h }

// ParseList reads a list of kind k, strictly.
func ParseList(k ListKind, b []byte) (SignedList, error) {
	switch k {
	case ListWithdrawn:
		w, err := ParseWithdrawn(b)
		if err != nil {
			return nil, err // not a typed nil in the interface
		}
		return w, nil
	case ListRollout:
		r, err := ParseRollout(b)
		if err != nil {
			return nil, err
		}
		return r, nil
	}
	return nil, fmt.Errorf("no signed list of kind %d", int(k))
}

// marshal writes the head's lines; the caller adds the entries.
func (h ListHead) marshal(k ListKind) *bytes.Buffer {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s\nimage %s\nseq %d\n", k.magic(), h.Image, h.Seq)
	return &b
}

// parseHead reads the magic, image and seq lines every list of kind k
// starts with, and returns the entry lines after them (the final newline
// required, no blank line anywhere).
func parseHead(k ListKind, b []byte) (ListHead, []string, error) {
	var h ListHead
	if int64(len(b)) > k.Max() {
		return h, nil, fmt.Errorf("%w: %d bytes, more than %d", k.err(), len(b), k.Max())
	}
	lines := strings.Split(string(b), "\n")
	if len(lines) < 4 || lines[len(lines)-1] != "" || lines[0] != k.magic() {
		return h, nil, fmt.Errorf("%w: want %q, an image, a seq line and a final newline", k.err(), k.magic())
	}
	lines = lines[:len(lines)-1]
	image, ok := strings.CutPrefix(lines[1], "image ")
	if !ok || manifest.ValidImage(image) != nil {
		return h, nil, fmt.Errorf("%w: line 2: want an image name, got %q", k.err(), lines[1])
	}
	h.Image = image
	if h.Seq, ok = listNum(lines[2], "seq"); !ok {
		return h, nil, fmt.Errorf("%w: line 3: want seq N, got %q", k.err(), lines[2])
	}
	return h, lines[3:], nil
}

// listNum reads "key N" with N in canonical decimal, so that what parses
// encodes back to the same bytes.
func listNum(line, key string) (uint64, bool) {
	s, ok := strings.CutPrefix(line, key+" ")
	if !ok {
		return 0, false
	}
	return canonNum(s)
}

// canonNum reads a number in canonical decimal: no sign, no leading zero.
func canonNum(s string) (uint64, bool) {
	if s == "" || (len(s) > 1 && s[0] == '0') {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 10, 64)
	return n, err == nil
}

// VerifyList checks a list's signature against trust and that it is a
// list of kind k of image, and returns it.
func VerifyList(trust *manifest.Keyring, k ListKind, image string, data, sig []byte) (SignedList, error) {
	if _, err := trust.Verify(bytes.NewReader(data), sig); err != nil {
		return nil, fmt.Errorf("%s list of %s: %w", k, image, err)
	}
	l, err := ParseList(k, data)
	if err != nil {
		return nil, fmt.Errorf("%s list of %s: %w", k, image, err)
	}
	if got := l.head().Image; got != image {
		return nil, fmt.Errorf("%s list of %s names image %q: %w", k, image, got, k.err())
	}
	return l, nil
}

// ReadList returns the repo's list of kind k of image and its signature,
// both nil if it has none.
func (r *Repo) ReadList(k ListKind, image string) (data, sig []byte, err error) {
	p := r.Layout().List(k, image)
	data, err = readCapped(p, k.Max())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	if sig, err = readCapped(SignatureOf(p), manifest.MaxSignature); err != nil {
		return nil, nil, err
	}
	return data, sig, nil
}

// StoreList keeps a list, verified by the caller, so the repo serves it.
// The signature is written first: a reader between the two renames finds
// the new signature over the old list, fails to verify it and goes
// without, for that moment, rather than trusting anything unsigned.
func (r *Repo) StoreList(k ListKind, image string, data, sig []byte) error {
	l := r.Layout()
	p := l.List(k, image)
	if err := os.MkdirAll(l.ImageDir(image), 0o755); err != nil {
		return fmt.Errorf("store %s list: %w", k, err)
	}
	if err := fsutil.WriteAtomic(SignatureOf(p), sig); err != nil {
		return fmt.Errorf("store %s list: %w", k, err)
	}
	if err := fsutil.WriteAtomic(p, data); err != nil {
		return fmt.Errorf("store %s list: %w", k, err)
	}
	return nil
}

// editList changes the repo's list of kind k of image (or an empty one)
// with edit, and signs and stores it with the next sequence number. The
// caller holds the repo's lock and has checked the signer. If edit reports
// no change, nothing is written and changed is false.
func (r *Repo) editList(k ListKind, image string, signer *manifest.Signer, edit func(SignedList) bool) (l SignedList, changed bool, err error) {
	data, _, err := r.ReadList(k, image)
	if err != nil {
		return nil, false, err
	}
	if data == nil {
		data = ListHead{Image: image}.marshal(k).Bytes()
	}
	if l, err = ParseList(k, data); err != nil {
		return nil, false, fmt.Errorf("the repo's %s list of %s: %w", k, image, err)
	}
	if !edit(l) {
		return l, false, nil
	}
	l.head().Seq++
	data = l.Marshal()
	var sig bytes.Buffer
	if err := signer.Sign(&sig, bytes.NewReader(data)); err != nil {
		return nil, false, fmt.Errorf("sign %s list: %w", k, err)
	}
	if err := r.StoreList(k, image, data, sig.Bytes()); err != nil {
		return nil, false, err
	}
	return l, true, nil
}

// editListed is editList for an admin's verb about version v, which the
// repo must list: it takes the repo's lock and checks the signer is a
// fleet key, as a publish does.
func (r *Repo) editListed(k ListKind, image string, v uint64, signer *manifest.Signer, edit func(SignedList) bool) (SignedList, error) {
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
		return nil, fmt.Errorf("%s: %s lists no version %d of %s", k, r.dir, v, image)
	}
	l, _, err := r.editList(k, image, signer, edit)
	return l, err
}
