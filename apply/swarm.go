package apply

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/peerup/peerup/transfer"
)

// swarm spreads a pull's fetches over every source that offers the version,
// so a laptop draws on all its neighbours at once instead of queueing on
// one. Each fetch goes to the source with the fewest in flight; a source
// that fails is not asked again in this pull, and the fetch moves on to
// another.
type swarm struct {
	mu      sync.Mutex
	sources []Source
	load    []int
	dead    []bool
	// why is the error that put the first source out, for fetches that
	// then find none left: "not found: …" says more than "none left".
	why error
}

func newSwarm(primary Source, extra []Source) *swarm {
	s := append([]Source{primary}, extra...)
	return &swarm{sources: s, load: make([]int, len(s)), dead: make([]bool, len(s))}
}

// pick returns the live source with the fewest fetches in flight, among
// those not yet tried for this item.
func (w *swarm) pick(tried []bool) (int, Source, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	best := -1
	for i := range w.sources {
		if w.dead[i] || tried[i] {
			continue
		}
		if best < 0 || w.load[i] < w.load[best] {
			best = i
		}
	}
	if best < 0 {
		return 0, nil, false
	}
	w.load[best]++
	return best, w.sources[best], true
}

func (w *swarm) done(i int, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.load[i]--
	// A busy peer is no fault: try it again for later items.
	if err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, transfer.ErrBusy) {
		w.dead[i] = true
		if w.why == nil {
			w.why = err
		}
	}
}

// gone is why no source is left.
func (w *swarm) gone() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.why != nil {
		return fmt.Errorf("no source left to fetch from (%w)", w.why)
	}
	return errors.New("no source left to fetch from")
}

// fetch runs f against sources until one succeeds, returning the last
// error if none does (ErrBusy if the last was at its upload cap: the caller
// waits and comes back).
func (w *swarm) fetch(ctx context.Context, f func(Source) error) error {
	tried := make([]bool, len(w.sources))
	var last error
	for {
		i, src, ok := w.pick(tried)
		if !ok {
			if last == nil {
				last = w.gone()
			}
			return last
		}
		tried[i] = true
		err := f(src)
		w.done(i, err)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		if last == nil || !errors.Is(last, transfer.ErrBusy) {
			last = err
		}
	}
}
