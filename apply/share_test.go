package apply

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"testing"

	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/manifest"
	"github.com/peerup/peerup/transfer"
)

// listingHaver is a neighbour that lists n fresh digests a poll, plus
// every digest in real, passed through the caller's filter as a client's
// parse does.
type listingHaver struct {
	name  string
	n     int
	real  []manifest.Digest
	polls int
}

func (h *listingHaver) Have(_ context.Context, _ string, _ uint64, from int, keep func(manifest.Digest) bool) ([]manifest.Digest, int, error) {
	h.polls++
	all := append([]manifest.Digest(nil), h.real...)
	for i := range h.n {
		all = append(all, manifest.Digest(sha256.Sum256(fmt.Appendf(nil, "%s %d %d", h.name, h.polls, i))))
	}
	var out []manifest.Digest
	for _, d := range all {
		if keep(d) {
			out = append(out, d)
		}
	}
	return out, from + len(all), nil
}

func (h *listingHaver) Index(context.Context) (*blobstore.Index, error) { return nil, nil }
func (h *listingHaver) Manifest(context.Context, string, uint64, int64, io.Writer) ([]byte, error) {
	return nil, nil
}
func (h *listingHaver) Deltas(context.Context, string, uint64, int64, io.Writer) ([]byte, error) {
	return nil, nil
}
func (h *listingHaver) ManifestDelta(context.Context, string, uint64, uint64, int64, io.Writer) ([]byte, error) {
	return nil, transfer.ErrNotFound
}
func (h *listingHaver) PackedDeltas(context.Context, string, uint64, int64, io.Writer) ([]byte, error) {
	return nil, transfer.ErrNotFound
}
func (h *listingHaver) FetchObject(context.Context, *blobstore.Batch, manifest.Digest, int64) error {
	return nil
}
func (h *listingHaver) String() string { return h.name }

// TestBoardIsBounded asserts that the board holds only digests the pull
// needs, whatever neighbours list, and forgets a neighbour that is no
// longer listed.
func TestBoardIsBounded(t *testing.T) {
	var needs []need
	for i := range 3 {
		needs = append(needs, need{d: manifest.Digest(sha256.Sum256(fmt.Appendf(nil, "need %d", i)))})
	}
	flood := &listingHaver{name: "flood", n: 10000}
	honest := &listingHaver{name: "honest", real: []manifest.Digest{needs[0].d, needs[2].d}}
	listed := []Haver{flood, honest}
	bd := newBoard("school-laptop", 3, func() []Haver { return listed }, needs, slog.New(slog.DiscardHandler))
	for range 5 {
		bd.refresh(context.Background())
	}
	for _, tc := range []struct {
		name    string
		helper  string
		entries int
	}{{"fresh digests nobody needs are dropped", "flood", 0}, {"needed digests are kept once", "honest", 2}} {
		if h := bd.helpers[tc.helper]; h == nil || len(h.has) != tc.entries {
			t.Errorf("%s: %s holds %v", tc.name, tc.helper, h)
		}
	}
	if bd.entries != 2 {
		t.Errorf("board entries %d, want 2", bd.entries)
	}
	if h, ok := bd.holder(needs[2].d); !ok || h.src != Haver(honest) {
		t.Fatal("the honest neighbour is not asked for what it holds")
	} else {
		bd.release(h, needs[2].d, nil)
	}
	listed = []Haver{flood}
	bd.refresh(context.Background())
	if bd.helpers["honest"] != nil || bd.entries != 0 {
		t.Errorf("a neighbour no longer listed is still held: %d entries", bd.entries)
	}
}
