package apply

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"time"

	"peerup/blobstore"
	"peerup/manifest"
	"peerup/transfer"
)

// A pull in progress lends what it has verified to neighbours fetching the
// same version (SPEC.md §10, "Sharing during a pull"): when a school's
// laptops all wake to one announcement, each takes different objects from
// the server first and the rest from each other, so the server uploads
// about one copy of the update instead of one per laptop.

type sharing struct {
	image string
	v     uint64
	b     *blobstore.Batch
}

func (s *Sysroot) startSharing(image string, v uint64, b *blobstore.Batch) func() {
	s.shareMu.Lock()
	s.share = &sharing{image, v, b}
	s.shareMu.Unlock()
	return func() {
		s.shareMu.Lock()
		s.share = nil
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
	if sh := s.sharing(); sh != nil {
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
	ds, total := sh.b.Staged(from)
	return ds, total, true
}

// Haver is a neighbour that can say which objects its own pull holds.
type Haver interface {
	Source
	Have(ctx context.Context, image string, v uint64, from int) ([]manifest.Digest, int, error)
}

// board tracks which objects each neighbour's pull holds, by asking them
// for what is new every interval.
type board struct {
	image string
	v     uint64
	list  func() []Haver

	mu      sync.Mutex
	helpers map[string]*helper
	changed chan struct{} // closed and replaced when a helper gains objects
}

type helper struct {
	src  Haver
	seen int
	has  map[manifest.Digest]bool
	load int
	dead bool
}

func newBoard(image string, v uint64, list func() []Haver) *board {
	return &board{image: image, v: v, list: list, helpers: map[string]*helper{}, changed: make(chan struct{})}
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

func (bd *board) refresh(ctx context.Context) {
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
			ds, total, err := h.src.Have(cctx, bd.image, bd.v, from)
			cancel()
			if err != nil {
				// Not pulling this version (yet), or gone: ask again later,
				// unless it answered nonsense.
				if errors.Is(err, transfer.ErrPeer) {
					bd.mu.Lock()
					h.dead = true
					bd.mu.Unlock()
				}
				return
			}
			bd.mu.Lock()
			defer bd.mu.Unlock()
			if total < h.seen {
				// A new pull there: start again.
				h.seen, h.has = 0, map[manifest.Digest]bool{}
				return
			}
			for _, d := range ds {
				h.has[d] = true
			}
			h.seen = total
			if len(ds) > 0 {
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
		delete(h.has, d) // committed and moved, or gone: it may say so again
	default:
		h.dead = true
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
