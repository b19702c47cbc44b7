package apply

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/diff"
	"github.com/peerup/peerup/manifest"
	"github.com/peerup/peerup/transfer"
)

// signedDeltas is a verified delta index and the file it came as.
type signedDeltas struct {
	idx  *diff.DeltaIndex
	file *blobstore.SignedFile
}

// close releases the index's file (a no-op for none).
func (d *signedDeltas) close() {
	if d != nil {
		d.file.Close()
	}
}

type need struct {
	path string
	d    manifest.Digest
	size int64
	ways []diff.Encoding // usable encodings, cheapest first; raw is the fallback
}

// cost is what fetching n the cheapest way would put on the wire.
func (n *need) cost() int64 {
	if e := n.encoded(); e > 0 {
		return e
	}
	return n.size
}

// encoded is the size of the encoding n is fetched through, kept beside
// the object until the pull ends, or 0 if it comes whole and raw.
func (n *need) encoded() int64 {
	if len(n.ways) > 0 && n.ways[0].Size < n.size {
		return n.ways[0].Size
	}
	return 0
}

// plan lists the objects to fetch and, for each, the encodings whose base
// the node holds, cheapest first. The raw object is always the last resort,
// so a pull never costs more than sending every object whole.
// Every entry is checked against the node's policy here, before anything is
// fetched.
//
// It also returns the bytes the new tree copies rather than links (its
// etc/ and files others may write), for the free-space check.
func (s *Sysroot) plan(b *blobstore.Batch, mf *blobstore.SignedFile, deltas *signedDeltas, pol EntryPolicy, mem *inFlight, res *PullResult) ([]need, int64, error) {
	r, err := manifest.NewReader(mf.Reader())
	if err != nil {
		return nil, 0, err
	}
	var needs []need
	var copies int64
	seen := map[manifest.Digest]bool{}
	for {
		e, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, 0, err
		}
		if err := pol.check(e); err != nil {
			return nil, 0, err
		}
		if e.Type == manifest.TypeFile && !linksStore(e) {
			copies += e.Size
		}
		if e.Type != manifest.TypeFile || seen[e.SHA256] {
			continue
		}
		seen[e.SHA256] = true
		if b.Has(e.SHA256) {
			res.ReusedObjects++
			res.ReusedBytes += e.Size
			continue
		}
		n := need{path: e.Path, d: e.SHA256, size: e.Size}
		if deltas != nil {
			for _, enc := range deltas.idx.For(e.SHA256) {
				// An encoding whose decoding would not fit the memory budget
				// is left out: the file comes whole, streamed, instead.
				if enc.Size < e.Size && (enc.Base.IsZero() || s.repo.Has(enc.Base)) && s.decodeCost(enc, e.Size) <= mem.limit {
					n.ways = append(n.ways, enc)
				}
			}
			sort.SliceStable(n.ways, func(i, j int) bool { return n.ways[i].Size < n.ways[j].Size })
		}
		needs = append(needs, n)
	}
	return needs, copies, nil
}

// fetchMissing fetches, in parallel, every object the node lacks, each the
// cheapest way it can, falling back to the next way when one fails.
func (s *Sysroot) fetchMissing(ctx context.Context, src Source, b *blobstore.Batch, needs []need, mem *inFlight, o PullOptions, res *PullResult, staged func(manifest.Digest)) error {
	var total int64
	for i := range needs {
		total += needs[i].cost()
	}
	// Neighbours pulling the same version take the objects in different
	// orders, so they have different ones to lend each other.
	rand.Shuffle(len(needs), func(i, j int) { needs[i], needs[j] = needs[j], needs[i] })
	par := o.Parallel
	if par <= 0 {
		par = 4
	}
	log := o.logger()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(par)
	var bd *board
	if o.Helpers != nil {
		bd = newBoard(res.Image, res.Version, o.Helpers, needs, log)
		go bd.run(gctx, time.Second) // until Wait ends gctx
	}
	var done atomic.Int64
	if o.Progress != nil {
		// Progress counts bytes as they arrive, so that a large object's
		// fetch shows; a fetch that fails part-way and is retried counts
		// twice, and a reader clamps at the total.
		b.Received = func(n int64) { o.Progress(done.Add(n), total) }
		defer func() { b.Received = nil }()
	}
	var mu sync.Mutex
	peers := newSwarm(src, o.Peers)
	for i := range needs {
		if gctx.Err() != nil {
			break
		}
		n := &needs[i]
		g.Go(func() error {
			kind, wire, from, lent, err := s.fetchNeed(gctx, peers, bd, mem, b, n, log)
			if err != nil {
				return fmt.Errorf("fetch %s: %w", n.path, err)
			}
			staged(n.d)
			mu.Lock()
			res.FetchedObjects++
			res.FetchedBytes += wire
			res.RawBytes += n.size
			if lent {
				res.NeighbourObjects++
				res.NeighbourBytes += wire
			}
			if res.Sources == nil {
				res.Sources = map[string]int64{}
			}
			res.Sources[from] += wire
			if kind == "patch" {
				res.PatchObjects++
				res.PatchBytes += wire
			} else {
				res.WholeObjects++
				res.WholeBytes += wire
			}
			mu.Unlock()
			return nil
		})
	}
	err := g.Wait()
	if cause := context.Cause(ctx); cause != nil {
		return cause // the caller's own reason, not a worker's report of it
	}
	return err
}

// busyRounds bounds how long a fetch waits while every source that has an
// object is at its upload cap (each round waits as the peer asks, 2 s by
// default, at most transfer.MaxRetryAfter).
const busyRounds = 60

// fetchNeed gets one object: from a neighbour whose pull already holds it
// if one does, else from the sources offering the version, waiting while
// they are all busy.
func (s *Sysroot) fetchNeed(ctx context.Context, peers *swarm, bd *board, mem *inFlight, b *blobstore.Batch, n *need, log *slog.Logger) (kind string, wire int64, from string, lent bool, err error) {
	for round := 0; ; round++ {
		if bd != nil {
			if kind, wire, from, ok := s.fromHelpers(ctx, bd, mem, b, n, log); ok {
				return kind, wire, from, true, nil
			}
		}
		err = peers.fetch(ctx, func(src Source) error {
			var err error
			kind, wire, err = s.fetchOne(ctx, mem, src, b, n, log)
			from = src.String()
			if err != nil && !errors.Is(err, transfer.ErrBusy) {
				log.Info("fetch failed, trying another peer", "path", n.path, "peer", src, "err", err)
			}
			return err
		})
		if err == nil {
			return kind, wire, from, false, nil
		}
		if ctx.Err() != nil {
			return "", 0, "", false, context.Cause(ctx)
		}
		if !errors.Is(err, transfer.ErrBusy) || round >= busyRounds {
			return "", 0, "", false, err
		}
		// Every source is at its upload cap: wait as the last one asked
		// (Retry-After), or until a neighbour gains objects it could lend.
		wait := transfer.RetryAfter(err)
		if bd != nil {
			bd.wait(ctx, wait)
			continue
		}
		select {
		case <-ctx.Done():
			return "", 0, "", false, context.Cause(ctx)
		case <-time.After(wait):
		}
	}
}

// fromHelpers fetches n from a neighbour's pull that holds one of its ways,
// unless that way costs more than twice the cheapest.
func (s *Sysroot) fromHelpers(ctx context.Context, bd *board, mem *inFlight, b *blobstore.Batch, n *need, log *slog.Logger) (kind string, wire int64, from string, ok bool) {
	limit := 2 * n.cost()
	for _, enc := range n.ways {
		if enc.Size > limit {
			break
		}
		if h, ok := bd.holder(enc.Digest); ok {
			wire, err := s.fetchEncoded(ctx, mem, h.src, b, n, enc)
			bd.release(h, enc.Digest, err)
			if err == nil {
				return wireKind(enc.Kind), wire, h.src.String(), true
			}
			log.Debug("neighbour could not lend an encoding", "path", n.path, "peer", h.src, "err", err)
		}
	}
	if n.size <= limit {
		if h, ok := bd.holder(n.d); ok {
			err := s.fetchWithin(ctx, mem, wholeCost, func() error { return h.src.FetchObject(ctx, b, n.d, n.size) })
			bd.release(h, n.d, err)
			if err == nil {
				return "whole", n.size, h.src.String(), true
			}
			log.Debug("neighbour could not lend an object", "path", n.path, "peer", h.src, "err", err)
		}
	}
	return "", 0, "", false
}

// wireKind is how PullResult counts an encoding's bytes: as a patch if it
// needs a base, else as a whole object.
func wireKind(k diff.Kind) string {
	if k.Whole() {
		return "whole"
	}
	return "patch"
}

// fetchOne gets one object by the first way that works and reports its kind
// ("patch" or "whole") and the bytes it took on the wire.
func (s *Sysroot) fetchOne(ctx context.Context, mem *inFlight, src Source, b *blobstore.Batch, n *need, log *slog.Logger) (string, int64, error) {
	for _, enc := range n.ways {
		wire, err := s.fetchEncoded(ctx, mem, src, b, n, enc)
		if err == nil {
			return wireKind(enc.Kind), wire, nil
		}
		if ctx.Err() != nil {
			return "", 0, context.Cause(ctx)
		}
		if errors.Is(err, transfer.ErrBusy) {
			return "", 0, err // the source is full, not the encoding bad
		}
		log.Info("encoding failed, trying the next way", "path", n.path, "kind", enc.Kind, "err", err)
	}
	if err := s.fetchWithin(ctx, mem, wholeCost, func() error { return src.FetchObject(ctx, b, n.d, n.size) }); err != nil {
		return "", 0, err
	}
	return "whole", n.size, nil
}

// fetchEncoded gets n by one encoding: the encoding fetched as an object,
// then decoded straight into the batch. Neither the base nor the output is
// held in memory; DecodeTo reads the base and the encoding in place and
// Put hashes the output as it stages it, discarding it unless it matches.
// It returns the bytes it fetched: none when the batch already held the
// encoding (two small targets can share one).
func (s *Sysroot) fetchEncoded(ctx context.Context, mem *inFlight, src Source, b *blobstore.Batch, n *need, enc diff.Encoding) (wire int64, err error) {
	// The encoding is itself an object: fetched with its hash checked, and
	// kept so this node can pass it on.
	if !b.Has(enc.Digest) {
		if err := s.fetchWithin(ctx, mem, wholeCost, func() error { return src.FetchObject(ctx, b, enc.Digest, enc.Size) }); err != nil {
			return 0, err
		}
		wire = enc.Size
	}
	ep, err := b.ObjectPath(enc.Digest)
	if err != nil {
		return 0, err
	}
	ef, er, err := openSection(ep)
	if err != nil {
		return 0, fmt.Errorf("%s encoding %s: %w", enc.Kind, enc.Digest, err)
	}
	defer ef.Close()
	var base *io.SectionReader
	if !enc.Base.IsZero() {
		bf, err := s.repo.Open(enc.Base)
		if err != nil {
			return 0, fmt.Errorf("%s encoding %s: base %s: %w", enc.Kind, enc.Digest, enc.Base, err)
		}
		defer bf.Close()
		fi, err := bf.Stat()
		if err != nil {
			return 0, fmt.Errorf("%s encoding %s: base %s: %w", enc.Kind, enc.Digest, enc.Base, err)
		}
		base = io.NewSectionReader(bf, 0, fi.Size())
	}
	// The decode's share is taken only now, from the encoding itself (a
	// patch declares its bzip2 levels), and never while holding the
	// fetch's: a fetch waiting for a big decode's share must not hold what
	// that decode waits for.
	cost := s.decodeCost(enc, n.size)
	if enc.Kind == diff.KindBsdiff {
		cost = diff.PatchMemory(er, er.Size()) + wholeCost
	}
	err = s.fetchWithin(ctx, mem, cost, func() error { return decodeInto(ctx, s.decoder(), b, n, enc.Kind, base, er) })
	if err != nil {
		return 0, fmt.Errorf("%s encoding %s: %w", enc.Kind, enc.Digest, err)
	}
	return wire, nil
}

// decoder is the running pull's Decoder; a fetch outside Pull (a test
// driving the planner directly) gets one of its own, without a pool.
func (s *Sysroot) decoder() *diff.Decoder {
	if s.dec == nil {
		return diff.NewDecoder()
	}
	return s.dec
}

// openSection opens a file for ReadAt over its current length.
func openSection(path string) (*os.File, *io.SectionReader, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return f, io.NewSectionReader(f, 0, fi.Size()), nil
}

// decodeInto decodes into the batch through a pipe: Put stages and hashes
// what DecodeTo writes, so the object is never whole in memory, and a
// decode that fails makes Put fail too, which leaves nothing staged.
func decodeInto(ctx context.Context, dec *diff.Decoder, b *blobstore.Batch, n *need, kind diff.Kind, base, enc *io.SectionReader) error {
	pr, pw := io.Pipe()
	decErr := make(chan error, 1)
	go func() {
		err := dec.DecodeTo(ctx, kind, base, enc, n.size, pw)
		pw.CloseWithError(err) // nil closes cleanly: Put sees the end
		decErr <- err
	}()
	err := b.Put(ctx, n.d, n.size, pr)
	// Put may stop early (or not read at all, if the object arrived by
	// another way meanwhile): release the decoder blocked on the pipe.
	pr.CloseWithError(errDecodeAbandoned)
	if derr := <-decErr; derr != nil && !errors.Is(derr, errDecodeAbandoned) {
		return derr // the cause; Put's error only repeats it
	}
	return err
}

// errDecodeAbandoned ends a decode whose output is no longer read.
var errDecodeAbandoned = errors.New("decoded output no longer wanted")

func sha256sum(b []byte) [32]byte { return sha256.Sum256(b) }

// ErrNoSpace is returned, before anything is fetched, when the sysroot's
// filesystem cannot hold the update.
var ErrNoSpace = errors.New("not enough free space")

// checkSpace refuses an update that cannot fit: each new object once, the
// encodings that bring them (kept until the pull ends), the files the tree
// copies, and a margin for directories and metadata. Failing before any
// byte is fetched is kinder than ENOSPC halfway.
func checkSpace(dir string, needs []need, copies int64) error {
	bytes := copies
	for i := range needs {
		bytes += needs[i].size + needs[i].encoded()
	}
	objects := len(needs)
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return nil // cannot tell: let the writes themselves fail
	}
	free := int64(st.Bavail) * int64(st.Bsize)
	need := bytes + int64(objects)*4096 + 8<<20
	if need > free {
		return fmt.Errorf("%w on %s: the update needs about %.1f MiB, %.1f MiB free (run peerup gc, or free space)",
			ErrNoSpace, dir, float64(need)/(1<<20), float64(free)/(1<<20))
	}
	return nil
}
