package diff

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/semaphore"

	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/manifest"
)

// GenerateOptions bound the publisher's work.
type GenerateOptions struct {
	Signer *manifest.Signer
	// Depth is how many earlier versions encodings are made against
	// (default 3).
	Depth int
	// MemoryBudget bounds the memory all bsdiff runs may take at once
	// (default 2 GiB); a pair that alone exceeds it gets no bsdiff.
	MemoryBudget int64
	// DiffTimeout bounds one bsdiff run (default 60 s): long runs of equal
	// bytes make bsdiff quadratic, and zstd-dict is the fallback.
	DiffTimeout time.Duration
	Workers     int // default: every core
	Log         *slog.Logger
	// Progress, if set, is called from any goroutine as each changed
	// object's encodings are done, with the bytes of changed objects done
	// so far and in all.
	Progress func(done, total int64)
}

// GenerateResult reports what Generate made.
type GenerateResult struct {
	Index        *DeltaIndex
	Targets      int   // changed objects considered
	TargetBytes  int64 // their raw size
	Encodings    int
	SkippedDiffs int // bsdiff runs skipped for memory or time
}

type pair struct {
	target     manifest.Digest
	targetSize int64
	bases      []baseRef
}

type baseRef struct {
	d    manifest.Digest
	size int64
}

// Generate makes the encodings of version v's changed objects against the
// Depth versions before it, stores them in the repo as objects, and writes a
// signed delta index beside the manifest. Version v need not be listed yet
// (Publish lists it after); its bases must be.
func Generate(ctx context.Context, repo *blobstore.Repo, image string, v uint64, o GenerateOptions) (*GenerateResult, error) {
	if o.Signer == nil {
		return nil, errors.New("generate deltas: no signing key")
	}
	if o.Depth <= 0 {
		o.Depth = DefaultDepth
	}
	if o.MemoryBudget <= 0 {
		o.MemoryBudget = 2 << 30
	}
	if o.DiffTimeout <= 0 {
		o.DiffTimeout = 60 * time.Second
	}
	if o.Workers <= 0 {
		o.Workers = runtime.NumCPU()
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	ix, err := repo.ReadIndex()
	if err != nil {
		return nil, err
	}
	target, md, err := readManifest(ctx, repo, image, v)
	if err != nil {
		return nil, err
	}
	var bases []*manifest.Manifest
	for bv := v - 1; bv >= 1 && len(bases) < o.Depth; bv-- {
		if _, ok := ix.Find(image, bv); !ok {
			continue
		}
		m, _, err := readManifest(ctx, repo, image, bv)
		if err != nil {
			return nil, err
		}
		bases = append(bases, m)
	}
	pairs := plan(target, bases)
	res := &GenerateResult{Index: &DeltaIndex{Image: image, Version: v, Manifest: md}}
	for _, p := range pairs {
		res.Targets++
		res.TargetBytes += p.targetSize
	}
	b, err := repo.Begin()
	if err != nil {
		return nil, err
	}
	defer b.Abort()
	if err := encodeAll(ctx, repo, b, pairs, o, res); err != nil {
		return nil, fmt.Errorf("generate deltas for %s v%d: %w", image, v, err)
	}
	res.Index.Sort()
	res.Encodings = len(res.Index.Encodings)
	data, err := res.Index.Marshal()
	if err != nil {
		return nil, err
	}
	var sig bytes.Buffer
	if err := o.Signer.Sign(&sig, bytes.NewReader(data)); err != nil {
		return nil, err
	}
	if err := b.Commit(); err != nil {
		return nil, err
	}
	df, err := repo.Receive(func(w io.Writer) ([]byte, error) {
		_, err := w.Write(data)
		return sig.Bytes(), err
	})
	if err != nil {
		return nil, err
	}
	defer df.Close()
	if err := repo.AddDeltas(image, v, df); err != nil {
		return nil, err
	}
	if err := Derive(ctx, repo, image, v, o.Depth); err != nil {
		return nil, err
	}
	return res, nil
}

// readManifest parses a stored manifest, streamed from its file, and
// hashes it: the publisher's planner needs every entry, but not the text.
func readManifest(ctx context.Context, repo *blobstore.Repo, image string, v uint64) (*manifest.Manifest, manifest.Digest, error) {
	mf, err := repo.OpenVersion(image, v)
	if err != nil {
		return nil, manifest.Digest{}, err
	}
	defer mf.Close()
	m, err := manifest.ReadAll(mf.Reader())
	if err != nil {
		return nil, manifest.Digest{}, fmt.Errorf("manifest %s v%d: %w", image, v, err)
	}
	d, err := mf.Digest(ctx)
	return m, d, err
}

// stem is a file name up to its first dot: libfoo.so.1.2 and libfoo.so.1.3
// share the stem libfoo, as OSTree pairs them.
func stem(name string) string {
	if i := strings.IndexByte(name, '.'); i > 0 {
		return name[:i]
	}
	return name
}

func similarSize(a, b int64) bool {
	return a*10 >= b*7 && b*10 >= a*7 // within ±30%
}

// plan picks, for each object of target that no base version holds, up to
// one base object per base version: the file at the same path, else the
// closest-sized file with the same name, else with the same stem.
func plan(target *manifest.Manifest, bases []*manifest.Manifest) []pair {
	old := map[manifest.Digest]bool{}
	type byName map[string][]*manifest.Entry
	paths := make([]map[string]*manifest.Entry, len(bases))
	names := make([]byName, len(bases))
	stems := make([]byName, len(bases))
	for i, m := range bases {
		paths[i], names[i], stems[i] = map[string]*manifest.Entry{}, byName{}, byName{}
		for j := range m.Entries {
			e := &m.Entries[j]
			if e.Type != manifest.TypeFile {
				continue
			}
			old[e.SHA256] = true
			paths[i][e.Path] = e
			base := path.Base(e.Path)
			names[i][base] = append(names[i][base], e)
			stems[i][stem(base)] = append(stems[i][stem(base)], e)
		}
	}
	closest := func(cands []*manifest.Entry, size int64) *manifest.Entry {
		var best *manifest.Entry
		for _, c := range cands {
			if !similarSize(c.Size, size) {
				continue
			}
			if best == nil || abs(c.Size-size) < abs(best.Size-size) {
				best = c
			}
		}
		return best
	}
	seen := map[manifest.Digest]bool{}
	var out []pair
	for j := range target.Entries {
		e := &target.Entries[j]
		if e.Type != manifest.TypeFile || old[e.SHA256] || seen[e.SHA256] || e.Size == 0 {
			continue
		}
		seen[e.SHA256] = true
		p := pair{target: e.SHA256, targetSize: e.Size}
		have := map[manifest.Digest]bool{}
		for i := range bases {
			b := paths[i][e.Path]
			if b == nil {
				base := path.Base(e.Path)
				if b = closest(names[i][base], e.Size); b == nil {
					b = closest(stems[i][stem(base)], e.Size)
				}
			}
			if b != nil && b.Size > 0 && !have[b.SHA256] {
				have[b.SHA256] = true
				p.bases = append(p.bases, baseRef{b.SHA256, b.Size})
			}
		}
		out = append(out, p)
	}
	// Largest first, so the long diffs start early and the pool stays busy.
	sort.Slice(out, func(i, j int) bool { return out[i].targetSize > out[j].targetSize })
	return out
}

func abs(x int64) int64 {
	if x < 0 {
		return -x
	}
	return x
}

func readObject(repo *blobstore.Repo, d manifest.Digest) ([]byte, error) {
	f, err := repo.Open(d)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(f)
}

func encodeAll(ctx context.Context, repo *blobstore.Repo, b *blobstore.Batch, pairs []pair, o GenerateOptions, res *GenerateResult) error {
	mem := semaphore.NewWeighted(o.MemoryBudget)
	var zs zstdEncoders
	var mu sync.Mutex
	var done atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(o.Workers)
	for _, p := range pairs {
		if gctx.Err() != nil {
			break
		}
		g.Go(func() error {
			encs, skipped, err := encodePair(gctx, repo, b, p, o, mem, &zs)
			if err != nil {
				return fmt.Errorf("object %s: %w", p.target, err)
			}
			mu.Lock()
			res.Index.Encodings = append(res.Index.Encodings, encs...)
			res.SkippedDiffs += skipped
			mu.Unlock()
			if o.Progress != nil {
				o.Progress(done.Add(p.targetSize), res.TargetBytes)
			}
			return nil
		})
	}
	err := g.Wait()
	if cause := context.Cause(ctx); cause != nil {
		return cause // the caller's own reason, not a worker's report of it
	}
	return err
}

// encodePair makes the candidate encodings of one target and keeps those
// that beat sending it whole: the zstd form if smaller than raw, and per base
// the smallest of the dictionary forms and bsdiff (where worthDiffing) if
// smaller than the whole forms.
func encodePair(ctx context.Context, repo *blobstore.Repo, b *blobstore.Batch, p pair, o GenerateOptions, mem *semaphore.Weighted, zs *zstdEncoders) ([]Encoding, int, error) {
	data, err := readObject(repo, p.target)
	if err != nil {
		return nil, 0, err
	}
	var out []Encoding
	whole := int64(len(data))
	// The whole form is the fallback for nodes that lack every base; where
	// bases exist a patch nearly always wins, so a faster level does.
	level := zstd.SpeedBestCompression
	if len(p.bases) > 0 {
		level = zstd.SpeedBetterCompression
	}
	z, err := zs.encode(data, nil, level)
	if err != nil {
		return nil, 0, err
	}
	if int64(len(z)) < whole {
		e, err := store(ctx, b, p.target, KindZstd, manifest.Digest{}, z)
		if err != nil {
			return nil, 0, err
		}
		out = append(out, e)
		whole = int64(len(z))
	}
	// A gzip -9n file is better diffed as text, where the change is.
	text, isGz := reproducibleGzip(ctx, data)
	if isGz {
		if gz, err := zs.encode(text, nil, zstd.SpeedBestCompression); err == nil && int64(len(gz)) < whole {
			e, err := store(ctx, b, p.target, KindGzZstd, manifest.Digest{}, gz)
			if err != nil {
				return nil, 0, err
			}
			out = append(out, e)
			whole = int64(len(gz))
		}
	}
	skipped := 0
	for _, br := range p.bases {
		base, err := readObject(repo, br.d)
		if err != nil {
			return nil, 0, err
		}
		best, bestKind := []byte(nil), Kind("")
		// A node holds a raw dictionary whole while it decodes, so one over
		// MaxDictBase would not fit a laptop's budget; the window also
		// leaves most of so large a base out of reach.
		dictOK := int64(len(base)) <= MaxDictBase
		if dictOK {
			if zd, err := zs.encode(data, base, dictLevel); err == nil {
				best, bestKind = zd, KindZstdDict
			}
		}
		if isGz && dictOK {
			if baseText, ok := gunzip(base); ok {
				if gd, err := zs.encode(text, baseText, dictLevel); err == nil && len(gd) < len(best) {
					best, bestKind = gd, KindGzZstdDict
				}
			}
		}
		if !worthDiffing(len(data), len(best)) {
			// bsdiff is not run: too little is left for it to win.
		} else if patch, ok := boundedDiff(ctx, base, data, o, mem); ok {
			zp, err := toZstdPatch(patch, zs)
			if err != nil {
				return nil, 0, fmt.Errorf("bsdiff-zstd: %w", err)
			}
			if best == nil || len(zp) < len(best) {
				best, bestKind = zp, KindBsdiffZstd
			}
		} else {
			skipped++
		}
		if ctx.Err() != nil {
			return nil, 0, context.Cause(ctx)
		}
		if best != nil && int64(len(best)) < whole {
			e, err := store(ctx, b, p.target, bestKind, br.d, best)
			if err != nil {
				return nil, 0, err
			}
			out = append(out, e)
		}
	}
	return out, skipped, nil
}

// worthDiffing says whether bsdiff, the costliest encoding to make (a
// suffix sort of the base), may beat a dictionary encoding of dictSize bytes
// (0: none) for a new file of n bytes. Where the dictionary form is already
// under 1% of the file, and 16 KiB at most, the change is a few scattered
// bytes that zstd codes in little more than their size, and bsdiff's header
// and three bzip2 streams eat what it could save: on Debian's security
// updates it won 1 of 540 such files, by 415 bytes, while they took half of
// the time spent diffing. Binaries whose code moved, where bsdiff wins by
// up to 60%, have dictionary forms of 2-12% of the file.
func worthDiffing(n, dictSize int) bool {
	return dictSize == 0 || dictSize > min(n/100, 16<<10)
}

// dictLevel is the zstd level of dictionary encodings. At the strongest
// level each dictionary costs 34 MB of match tables to clear, fill and copy,
// which for a security update's hundreds of small files took more CPU than
// the rest of the encoding; one level down the tables are 4 MB, and on
// Debian's security updates the dictionary forms came out 1.6% larger
// (3 KB in 1 MB of patches).
const dictLevel = zstd.SpeedBetterCompression

// boundedDiff runs bsdiff within the memory budget and time limit, or
// reports that it did not. The patch is the library's own, level-9 bzip2
// streams and all: toZstdPatch decodes them once, so refitting their
// levels first would be wasted.
func boundedDiff(ctx context.Context, base, data []byte, o GenerateOptions, mem *semaphore.Weighted) ([]byte, bool) {
	// The library holds the new file, its diff and extra buffers and the
	// patch besides the suffix array: about three times the new size.
	need := MemoryNeeded(int64(len(base))) + 3*int64(len(data))
	if need > o.MemoryBudget {
		o.Log.Info("bsdiff skipped: over memory budget", "base", len(base), "need", need)
		return nil, false
	}
	if err := mem.Acquire(ctx, need); err != nil {
		return nil, false
	}
	defer mem.Release(need)
	dctx, cancel := context.WithTimeout(ctx, o.DiffTimeout)
	defer cancel()
	patch, err := makeRaw(dctx, base, data)
	if err != nil {
		o.Log.Info("bsdiff skipped", "base", len(base), "err", err)
		return nil, false
	}
	return patch, true
}

func store(ctx context.Context, b *blobstore.Batch, target manifest.Digest, kind Kind, base manifest.Digest, enc []byte) (Encoding, error) {
	d := manifest.Digest(sha256sum(enc))
	if err := b.Put(ctx, d, int64(len(enc)), bytes.NewReader(enc)); err != nil {
		return Encoding{}, err
	}
	return Encoding{Target: target, Kind: kind, Digest: d, Size: int64(len(enc)), Base: base}, nil
}
