package apply

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/manifest"
	"github.com/peerup/peerup/transfer"
)

// A pull in progress lends what it has verified to neighbours fetching the
// same version (SPEC.md §10, "Sharing during a pull"): when a school's
// laptops all wake to one announcement, each takes different objects from
// the server first and the rest from each other, so the server uploads
// about one copy of the update instead of one per laptop.

type sharing struct {
	image string
	v     uint64
	b     *blobstore.Batch // nil once the pull is done
	// fetched are the objects a finished pull fetched, now in the repo: a
	// node that has the version goes on telling neighbours still pulling
	// it, so they take the objects from it rather than wait for a seed
	// that lends each object once.
	fetched []manifest.Digest
}

// startSharing lends what the pull into b verifies; the function it
// returns ends the pull's sharing, keeping the list of what it fetched if
// it committed.
func (s *Sysroot) startSharing(image string, v uint64, b *blobstore.Batch) func() {
	s.shareMu.Lock()
	s.share = &sharing{image: image, v: v, b: b}
	s.shareMu.Unlock()
	return func() {
		var done *sharing
		if b.Committed() {
			ds, _ := b.Staged(0)
			done = &sharing{image: image, v: v, fetched: ds}
		}
		s.shareMu.Lock()
		s.share = done
		s.shareMu.Unlock()
	}
}

func (s *Sysroot) sharing() *sharing {
	s.shareMu.Lock()
	defer s.shareMu.Unlock()
	return s.share
}

// StagedObject returns the path of an object a running pull has verified
// but not yet committed (transfer.Partial).
func (s *Sysroot) StagedObject(d manifest.Digest) (string, bool) {
	if sh := s.sharing(); sh != nil && sh.b != nil {
		return sh.b.StagedPath(d)
	}
	return "", false
}

// Have lists the objects a running pull of image's version v has verified,
// from the from'th on (transfer.Partial).
func (s *Sysroot) Have(image string, v uint64, from int) ([]manifest.Digest, int, bool) {
	sh := s.sharing()
	if sh == nil || sh.image != image || sh.v != v {
		return nil, 0, false
	}
	if sh.b == nil {
		from = min(max(from, 0), len(sh.fetched))
		return append([]manifest.Digest(nil), sh.fetched[from:]...), len(sh.fetched), true
	}
	ds, total := sh.b.Staged(from)
	return ds, total, true
}

// Haver is a neighbour that can say which objects its own pull holds. It
// returns only the digests keep accepts, dropping the rest as it parses,
// and fails with an error wrapping transfer.ErrPeer on a bad or oversized
// answer.
type Haver interface {
	Source
	Have(ctx context.Context, image string, v uint64, from int, keep func(manifest.Digest) bool) ([]manifest.Digest, int, error)
}

// maxBoardEntries caps what the board holds for all neighbours together
// (each entry is a digest in a map, about 64 bytes: 8 MiB in all). Each
// neighbour's entries are already bounded by the digests this pull needs,
// but a school has hundreds of laptops.
const maxBoardEntries = 128 << 10

// board tracks which objects each neighbour's pull holds, by asking them
// for what is new every interval. It keeps only digests the pull needs (an
// object or one of its encodings), at most maxBoardEntries in all, and
// forgets a neighbour that is no longer listed or that answered nonsense;
// it lives as long as the pull's fetches.
type board struct {
	image string
	v     uint64
	list  func() []Haver
	want  map[manifest.Digest]bool // read-only once made
	log   *slog.Logger

	mu      sync.Mutex
	helpers map[string]*helper
	entries int           // sum of len(h.has)
	changed chan struct{} // closed and replaced when a helper gains objects
}

type helper struct {
	src  Haver
	seen int
	has  map[manifest.Digest]bool
	load int
	dead bool
}

func newBoard(image string, v uint64, list func() []Haver, needs []need, log *slog.Logger) *board {
	want := make(map[manifest.Digest]bool, len(needs))
	for i := range needs {
		want[needs[i].d] = true
		for _, enc := range needs[i].ways {
			want[enc.Digest] = true
		}
	}
	return &board{image: image, v: v, list: list, want: want, log: log, helpers: map[string]*helper{}, changed: make(chan struct{})}
}

// run refreshes the board until ctx ends.
func (bd *board) run(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		bd.refresh(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// needed is the filter a /have answer is parsed through.
func (bd *board) needed(d manifest.Digest) bool { return bd.want[d] }

// forget drops what h was said to hold; bd.mu is held.
func (bd *board) forget(h *helper) {
	bd.entries -= len(h.has)
	h.has = map[manifest.Digest]bool{}
}

func (bd *board) refresh(ctx context.Context) {
	listed := map[string]bool{}
	for _, src := range bd.list() {
		listed[src.String()] = true
	}
	bd.mu.Lock()
	for name, h := range bd.helpers {
		if !listed[name] {
			// Gone from the LAN (or the list): what it held goes too. A
			// fetch in flight from it still releases its own pointer.
			bd.forget(h)
			delete(bd.helpers, name)
		}
	}
	bd.mu.Unlock()
	for _, src := range bd.list() {
		bd.mu.Lock()
		if bd.helpers[src.String()] == nil {
			bd.helpers[src.String()] = &helper{src: src, has: map[manifest.Digest]bool{}}
		}
		bd.mu.Unlock()
	}
	bd.mu.Lock()
	hs := make([]*helper, 0, len(bd.helpers))
	for _, h := range bd.helpers {
		if !h.dead {
			hs = append(hs, h)
		}
	}
	bd.mu.Unlock()
	var wg sync.WaitGroup
	for _, h := range hs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			bd.mu.Lock()
			from := h.seen
			bd.mu.Unlock()
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			ds, total, err := h.src.Have(cctx, bd.image, bd.v, from, bd.needed)
			cancel()
			if err != nil {
				// Not pulling this version (yet), or gone: ask again later,
				// unless it answered nonsense.
				if errors.Is(err, transfer.ErrPeer) {
					bd.log.Info("neighbour's have list refused; not asked again in this pull", "peer", h.src, "err", err)
					bd.mu.Lock()
					h.dead = true
					bd.forget(h)
					bd.mu.Unlock()
				}
				return
			}
			bd.mu.Lock()
			defer bd.mu.Unlock()
			if h.dead {
				return
			}
			if total < h.seen {
				// A new pull there: start again.
				h.seen = 0
				bd.forget(h)
				return
			}
			gained := false
			for _, d := range ds {
				if h.has[d] {
					continue
				}
				if bd.entries >= maxBoardEntries {
					break // the rest is fetched from the sources instead
				}
				h.has[d] = true
				bd.entries++
				gained = true
			}
			h.seen = total
			if gained {
				close(bd.changed)
				bd.changed = make(chan struct{})
			}
		}()
	}
	wg.Wait()
}

// holder picks a live neighbour that holds d, the least busy one, at random
// among equals; it counts the fetch as in flight until release.
func (bd *board) holder(d manifest.Digest) (*helper, bool) {
	bd.mu.Lock()
	defer bd.mu.Unlock()
	var best []*helper
	for _, h := range bd.helpers {
		if h.dead || !h.has[d] {
			continue
		}
		if len(best) == 0 || h.load < best[0].load {
			best = []*helper{h}
		} else if h.load == best[0].load {
			best = append(best, h)
		}
	}
	if len(best) == 0 {
		return nil, false
	}
	h := best[rand.IntN(len(best))]
	h.load++
	return h, true
}

func (bd *board) release(h *helper, d manifest.Digest, err error) {
	bd.mu.Lock()
	defer bd.mu.Unlock()
	h.load--
	switch {
	case err == nil, errors.Is(err, context.Canceled), errors.Is(err, transfer.ErrBusy):
	case errors.Is(err, transfer.ErrNotFound):
		if h.has[d] {
			// Committed and moved, or gone: it may say so again.
			delete(h.has, d)
			bd.entries--
		}
	default:
		h.dead = true
		bd.forget(h)
	}
}

// wait returns when a neighbour gains objects, after d at most, or when
// ctx ends.
func (bd *board) wait(ctx context.Context, d time.Duration) {
	bd.mu.Lock()
	ch := bd.changed
	bd.mu.Unlock()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-ch:
	case <-t.C:
	}
}
