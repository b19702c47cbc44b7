package blobstore

import (
	"errors"
	"fmt"
	"slices"

	"github.com/peerup/peerup/manifest"
)

// Withdrawn is an image's signed list of withdrawn versions (SPEC.md §5):
// versions its publisher no longer wants installed, which nodes skip.
type Withdrawn struct {
	ListHead
	Versions []uint64 // ascending, each once
}

// MaxWithdrawn bounds a withdrawn list: 4096 versions fit in well under it.
const MaxWithdrawn = 96 << 10

// ErrWithdrawnList is wrapped by errors about a list that does not parse.
var ErrWithdrawnList = errors.New("bad withdrawn list")

// Kind is ListWithdrawn.
func (*Withdrawn) Kind() ListKind { return ListWithdrawn }

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
	b := w.ListHead.marshal(ListWithdrawn)
	for _, v := range w.Versions {
		fmt.Fprintf(b, "version %d\n", v)
	}
	return b.Bytes()
}

// ParseWithdrawn reads a list, strictly: the magic, the image, the
// sequence number, then versions in ascending order.
func ParseWithdrawn(b []byte) (*Withdrawn, error) {
	h, lines, err := parseHead(ListWithdrawn, b)
	if err != nil {
		return nil, err
	}
	w := &Withdrawn{ListHead: h}
	for i, l := range lines {
		v, ok := listNum(l, "version")
		if !ok || v == 0 || (len(w.Versions) > 0 && v <= w.Versions[len(w.Versions)-1]) {
			return nil, fmt.Errorf("%w: line %d: want a version above the last, got %q", ErrWithdrawnList, i+4, l)
		}
		w.Versions = append(w.Versions, v)
	}
	return w, nil
}

// Withdraw adds v, a version the repo lists, to image's withdrawn list,
// signed by signer (a fleet key, as for publishing), with the next
// sequence number. It holds the repo's lock.
func (r *Repo) Withdraw(image string, v uint64, signer *manifest.Signer) (*Withdrawn, error) {
	l, err := r.editListed(ListWithdrawn, image, v, signer, func(l SignedList) bool {
		w := l.(*Withdrawn)
		if !w.Has(v) {
			w.Versions = append(w.Versions, v)
			slices.Sort(w.Versions)
		}
		// Signed again even if it was withdrawn already: the admin's
		// word is current, and a new seq outranks any copy in the field.
		return true
	})
	if err != nil {
		return nil, err
	}
	return l.(*Withdrawn), nil
}
