package apply

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/diff"
	"github.com/peerup/peerup/internal/fsutil"
	"github.com/peerup/peerup/manifest"
	"github.com/peerup/peerup/transfer"
)

// Source is where a pull gets a version from: a peer, a server or a static
// repo. Every Source is untrusted; Pull checks what it returns.
type Source interface {
	Index(ctx context.Context) (*blobstore.Index, error)
	// Manifest writes a version's manifest to w as it arrives, refusing
	// one over limit bytes before writing more than that
	// (blobstore.ManifestLimit), and returns its signature.
	Manifest(ctx context.Context, image string, v uint64, limit int64, w io.Writer) (sig []byte, err error)
	// Deltas writes a version's delta index to w, refusing one over limit
	// bytes (blobstore.DeltasLimit), and returns its signature, or an
	// error wrapping transfer.ErrNotFound if the source has none.
	Deltas(ctx context.Context, image string, v uint64, limit int64, w io.Writer) (sig []byte, err error)
	// ManifestDelta writes the packed manifest delta that rebuilds v's
	// manifest from version from's (SPEC.md §10), refusing more than limit
	// bytes, and returns v's manifest signature; an error wrapping
	// transfer.ErrNotFound if the source has none.
	ManifestDelta(ctx context.Context, image string, v, from uint64, limit int64, w io.Writer) (sig []byte, err error)
	// PackedDeltas is Deltas, packed: the signature is the delta index's.
	PackedDeltas(ctx context.Context, image string, v uint64, limit int64, w io.Writer) (sig []byte, err error)
	FetchObject(ctx context.Context, b *blobstore.Batch, d manifest.Digest, size int64) error
	String() string
}

// PullOptions say what to pull.
type PullOptions struct {
	Image   string // "" means the sysroot's image, or the source's only one
	Version uint64 // 0 means the newest the source offers
	Trust   *manifest.Keyring
	// Parallel is how many objects are fetched at once (default 4).
	Parallel int
	// Progress, if set, is called as bytes arrive, from any goroutine, with
	// the bytes fetched so far and the bytes to fetch in all. done can pass
	// total when a fetch that failed part-way is done again.
	Progress func(done, total int64)
	Log      *slog.Logger
	// EncodingBudget bounds the bytes of encodings kept to serve
	// neighbours (0: DefaultEncodingBudget; negative: no limit).
	EncodingBudget int64
	// Peers are further sources offering the same version: objects are
	// fetched from all of them and the source given to Pull at once
	// (the manifest and indexes come from that one).
	Peers []Source
	// Helpers, if set, lists neighbours that may be pulling the same
	// version; objects their pulls hold are fetched from them first. It is
	// asked again every second, as neighbours come and go.
	Helpers func() []Haver
	// Policy refuses kinds of entry this node never installs (SPEC.md §17).
	Policy EntryPolicy
	// Memory is the budget the update's data in flight is held within
	// (0: DefaultMemoryMiB); see Memory.
	Memory Memory
	// Now is the clock for manifest expiry (default time.Now).
	Now func() time.Time
	// IgnoreRollout makes Update switch to a version not yet rolled out
	// to this machine (an admin's override); Pull fetches such a version
	// anyway.
	IgnoreRollout bool
}

// PullResult reports what a pull did.
type PullResult struct {
	Image          string `json:"image"`
	Version        uint64 `json:"version"`
	AlreadyStaged  bool   `json:"already_staged"`
	Signer         string `json:"signer"`
	FetchedObjects int    `json:"fetched_objects"`
	// FetchedBytes is every byte the pull received: metadata and objects.
	FetchedBytes int64 `json:"fetched_bytes"`
	// MetadataBytes are the index, the manifest or its delta, the delta
	// index (packed or not) and their signatures, as received.
	MetadataBytes int64 `json:"metadata_bytes"`
	// ManifestFrom is the version whose manifest the new one was rebuilt
	// from with a manifest delta (0: it was fetched whole).
	ManifestFrom  uint64 `json:"manifest_from,omitempty"`
	ReusedObjects int    `json:"reused_objects"` // already held locally
	ReusedBytes   int64  `json:"reused_bytes"`
	// Bytes on the wire by kind: patches (bsdiff, zstd-dict) and whole
	// objects (raw or zstd). With MetadataBytes they add up to
	// FetchedBytes.
	PatchObjects int   `json:"patch_objects"`
	PatchBytes   int64 `json:"patch_bytes"`
	WholeObjects int   `json:"whole_objects"`
	WholeBytes   int64 `json:"whole_bytes"`
	// NeighbourBytes were lent by neighbours' pulls in progress (they
	// count among the fetched ones too).
	NeighbourObjects int   `json:"neighbour_objects"`
	NeighbourBytes   int64 `json:"neighbour_bytes"`
	// Sources are the bytes fetched from each source, by its name (a URL
	// or a folder).
	Sources map[string]int64 `json:"sources,omitempty"`
	// RawBytes is what the fetched objects would have cost sent raw.
	RawBytes int64 `json:"raw_bytes"`
	// Resumed objects were verified by an interrupted earlier pull and kept
	// (they count among the reused ones too).
	ResumedObjects int   `json:"resumed_objects"`
	ResumedBytes   int64 `json:"resumed_bytes"`
	// EtcKept are the paths under etc/ (tree paths, "etc/hostname") that
	// both the node and the new image changed, differently: the node's
	// version was kept and the image's not applied (SPEC.md §7 step 5).
	EtcKept []string `json:"etc_kept,omitempty"`
}

// Pull fetches a signed version from src and stages its tree. It checks the
// signature and the version rule before fetching any object, every object's
// hash before keeping it, and changes nothing visible unless all of it
// succeeds.
func (s *Sysroot) Pull(ctx context.Context, src Source, o PullOptions) (*PullResult, error) {
	begun := time.Now()
	m, end, err := s.begin(ctx, src, &o, false)
	if err != nil {
		return nil, err
	}
	defer end()
	log := o.logger()
	log.Debug("pull received and verified the metadata", "bytes", m.res.MetadataBytes, "reused_preview", m.reused, "took", time.Since(begun))
	if m.done {
		return m.res, nil
	}
	image, v, res, mf, h, deltas, st := m.image, m.v, m.res, m.mf, m.h, m.deltas, m.st
	b, err := s.repo.Begin()
	if err != nil {
		return nil, err
	}
	b.Fault = s.Fault
	defer s.startSharing(image, v, b)()
	// A failed pull keeps what it verified for the next attempt; after a
	// successful commit Suspend does nothing.
	defer b.Suspend()
	// Objects an interrupted pull already verified are not fetched again.
	if res.ResumedObjects, res.ResumedBytes, err = b.Salvage(ctx); err != nil {
		return nil, err
	}
	mem := newInFlight(o.Memory)
	needs, copies, err := s.plan(b, mf, deltas, o.Policy, mem, res)
	if err != nil {
		return nil, fmt.Errorf("pull %s v%d: %w", image, v, err)
	}
	if err := checkSpace(s.repo.Dir(), needs, copies); err != nil {
		return nil, fmt.Errorf("pull %s v%d: %w", image, v, err)
	}
	log.Debug("pull planned", "objects", len(needs), "took", time.Since(begun))
	later := make(map[manifest.Digest]bool, len(needs))
	for i := range needs {
		later[needs[i].d] = true
	}
	// The tree is built while the objects are fetched: most of its files
	// are already in the store, and linking them (with a mkdir per
	// directory) costs as long as fetching the changed ones.
	//
	// Files whose objects are fetched are linked as each object arrives,
	// so that little of the tree is left for after the last one.
	var t *newTree
	arrived := make(chan manifest.Digest, len(needs)) // one send per need: never blocks
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		var err error
		t, err = s.buildTree(gctx, b, mf, h, o.Policy, st.Current, later, arrived)
		return err
	})
	g.Go(func() error {
		defer close(arrived)
		return s.fetchMissing(gctx, src, b, needs, mem, o, res, func(d manifest.Digest) { arrived <- d })
	})
	err = g.Wait()
	if t != nil {
		defer removeTree(t.tmp) // no-op once renamed
	}
	if cause := context.Cause(ctx); cause != nil {
		err = cause
	}
	if err != nil {
		return nil, fmt.Errorf("pull %s v%d: %w", image, v, err)
	}
	log.Debug("pull fetched and built the tree", "took", time.Since(begun))
	if err := s.stage(ctx, b, t, h, deltas, mf); err != nil {
		return nil, fmt.Errorf("pull %s v%d: %w", image, v, err)
	}
	log.Debug("pull staged", "took", time.Since(begun))
	res.EtcKept = t.kept
	for _, p := range res.EtcKept {
		log.Info("kept the node's own /etc entry; the image's new version was not applied", "path", "/"+p, "version", v)
	}
	budget := o.EncodingBudget
	if budget == 0 {
		budget = DefaultEncodingBudget
	}
	if err := s.trimEncodings(image, budget); err != nil {
		return nil, fmt.Errorf("pull %s v%d: trim kept encodings: %w", image, v, err)
	}
	return res, nil
}

// pulled is what a pull learnt before fetching any object: the version,
// its verified manifest and delta index.
type pulled struct {
	image  string
	v      uint64
	st     Status
	res    *PullResult
	mf     *blobstore.SignedFile
	h      *manifest.Header
	deltas *signedDeltas
	// done: nothing is left to fetch (res says why: already staged, or
	// the tree still on disk).
	done bool
	// kept: a preview handed mf and deltas to s.previewed, which closes
	// them.
	kept bool
	// indexBytes is what choosing the version received (the index and
	// the withdrawn list): all a pull after a preview receives again.
	indexBytes int64
	reused     bool // the manifest and delta index are a preview's
}

func (m *pulled) close() {
	m.deltas.close()
	if m.mf != nil {
		m.mf.Close()
	}
}

// begin takes the sysroot's lock and a decoder for the pull's life, and
// runs metadata; end releases them.
func (s *Sysroot) begin(ctx context.Context, src Source, o *PullOptions, preview bool) (m *pulled, end func(), err error) {
	if o.Trust == nil {
		return nil, nil, errors.New("pull: no trusted keys")
	}
	unlock, err := s.Lock()
	if err != nil {
		return nil, nil, err
	}
	s.dec = diff.NewDecoder()
	release := func() {
		s.dec.Close()
		s.dec = nil
		unlock()
	}
	if m, err = s.metadata(ctx, src, o, preview); err != nil {
		release()
		return nil, nil, err
	}
	return m, func() {
		if !m.kept {
			m.close()
		}
		release()
	}, nil
}

// metadata chooses the version, receives its manifest and delta index and
// verifies them: the first half of a pull, and all of a preview, which
// changes nothing on disk but what it received into staging.
func (s *Sysroot) metadata(ctx context.Context, src Source, o *PullOptions, preview bool) (m *pulled, err error) {
	got := &pulled{}
	defer func() {
		if err != nil {
			got.close()
		}
	}()
	m = got
	if err := s.cleanup(); err != nil {
		return nil, err
	}
	if m.st, err = s.Status(); err != nil {
		return nil, err
	}
	if o.Trust, err = s.trust(o.Trust, m.st); err != nil {
		return nil, fmt.Errorf("pull: %w", err)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	image, v, ixSize, err := s.choose(ctx, src, m.st, *o)
	if err != nil {
		return nil, err
	}
	m.image, m.v, m.indexBytes = image, v, ixSize
	m.res = &PullResult{Image: image, Version: v, MetadataBytes: ixSize}
	if m.st.Staged == v && !preview {
		m.res.AlreadyStaged = true
		m.res.FetchedBytes = m.res.MetadataBytes
		m.done = true
		return m, nil
	}
	kept := s.previewed.take(image, v)
	if preview && kept != nil {
		kept.close() // a preview again: receive afresh, the source may differ
		kept = nil
	}
	if kept != nil {
		// Verified by a preview: only the index was received again.
		m.mf, m.deltas, m.res.ManifestFrom, m.reused = kept.mf, kept.deltas, kept.res.ManifestFrom, true
	} else if m.mf, err = s.receiveManifest(ctx, src, image, v, m.st.Current, m.res); err != nil {
		return nil, fmt.Errorf("pull %s v%d from %s: %w", image, v, src, err)
	}
	h, signer, err := manifest.Accept(o.Trust, m.mf.Signed(), manifest.Want{Image: image, Version: v, After: m.st.Current, Now: o.Now()})
	if err != nil && m.res.ManifestFrom != 0 {
		return nil, fmt.Errorf("pull from %s: the manifest rebuilt from its delta from v%d: %w", src, m.res.ManifestFrom, err)
	}
	if err != nil {
		return nil, fmt.Errorf("pull from %s: %w", src, err)
	}
	m.h = h
	m.res.Signer = signer
	m.res.FetchedBytes = m.res.MetadataBytes
	if !preview && s.haveTree(ctx, image, v, m.mf) {
		// The tree is still on disk (say, previous after a rollback) and was
		// built from these very bytes: point staged at it again.
		if err := s.setLink(LinkStaged, v); err != nil {
			return nil, err
		}
		m.done = true
		return m, fsutil.FsyncDir(s.dir)
	}
	if kept == nil {
		if m.deltas, err = s.deltaIndex(ctx, src, image, v, m.mf, o.Trust, m.res); err != nil {
			return nil, fmt.Errorf("pull %s v%d from %s: %w", image, v, src, err)
		}
	}
	m.res.FetchedBytes = m.res.MetadataBytes
	return m, nil
}

// choose picks the image and version to pull and applies the version rule
// to what the source's index claims (the signed manifest is checked again).
// It returns the size of the index it read.
func (s *Sysroot) choose(ctx context.Context, src Source, st Status, o PullOptions) (string, uint64, int64, error) {
	ix, err := src.Index(ctx)
	if err != nil {
		return "", 0, 0, fmt.Errorf("pull: %w", err)
	}
	size := ix.Size()
	image, err := chooseImage(src, ix, st, o)
	if err != nil {
		return "", 0, size, err
	}
	ls, n := keepLists(ctx, s.repo, src, image, o.Trust, o.logger())
	v, err := s.chooseVersion(src, ix, image, st, o, ls.withdrawn)
	return image, v, size + n, err
}

func chooseImage(src Source, ix *blobstore.Index, st Status, o PullOptions) (string, error) {
	image := o.Image
	if image == "" {
		image = st.Image
	}
	if image == "" {
		imgs := ix.Images()
		if len(imgs) != 1 {
			return "", fmt.Errorf("pull: %s offers images %v; choose one with --image", src, imgs)
		}
		image = imgs[0]
	}
	if st.Image != "" && image != st.Image {
		return "", fmt.Errorf("pull: this sysroot runs image %q, not %q", st.Image, image)
	}
	return image, nil
}

// chooseVersion applies the version rule: the version asked for, or the
// newest the source offers that its publisher has not withdrawn.
func (s *Sysroot) chooseVersion(src Source, ix *blobstore.Index, image string, st Status, o PullOptions, w *blobstore.Withdrawn) (uint64, error) {
	var e blobstore.IndexEntry
	var ok bool
	if o.Version != 0 {
		e, ok = ix.Find(image, o.Version)
		if !ok {
			return 0, fmt.Errorf("pull: %s does not offer %s version %d", src, image, o.Version)
		}
		if w.Has(e.Version) {
			return 0, fmt.Errorf("pull: %s version %d: %w", image, e.Version, ErrWithdrawn)
		}
	} else if e, ok = ix.LatestExcept(image, w.Has); !ok {
		if _, any := ix.Latest(image); any {
			return 0, fmt.Errorf("pull: every version of %s that %s offers is withdrawn: %w", image, src, ErrUpToDate)
		}
		return 0, fmt.Errorf("pull: %s offers no version of %s", src, image)
	}
	if e.Version <= st.Current {
		if o.Version == 0 {
			return 0, fmt.Errorf("%s offers %s version %d at most: %w", src, image, e.Version, ErrUpToDate)
		}
		return 0, fmt.Errorf("pull: %s version %d is %w (%d)", image, e.Version, ErrNotNewer, st.Current)
	}
	if err := s.Refusal(e.Version); err != nil {
		return 0, fmt.Errorf("pull: %s version %d is %w; waiting for a newer one", image, e.Version, err)
	}
	return e.Version, nil
}

// ErrWithdrawn is a version its publisher has withdrawn (peerup
// withdraw): a node installs it only if it already runs it.
var ErrWithdrawn = errors.New("withdrawn by its publisher")

// lister is a source that serves signed lists.
type lister interface {
	List(ctx context.Context, k blobstore.ListKind, image string) (data, sig []byte, err error)
}

// lists are an image's signed lists a node goes by (nil: none).
type lists struct {
	withdrawn *blobstore.Withdrawn
	rollout   *blobstore.Rollout
}

// keepLists is keepList of every kind of list, and the bytes received for
// them.
func keepLists(ctx context.Context, repo *blobstore.Repo, src Source, image string, trust *manifest.Keyring, log *slog.Logger) (lists, int64) {
	var ls lists
	var total int64
	for _, k := range blobstore.ListKinds() {
		l, n := keepList(ctx, repo, src, k, image, trust, log)
		total += n
		switch l := l.(type) {
		case *blobstore.Withdrawn:
			ls.withdrawn = l
		case *blobstore.Rollout:
			ls.rollout = l
		}
	}
	return ls, total
}

// keepList returns the image's list of kind k a repo should go by: the
// one with the highest sequence number of those it holds and src serves
// that verify against trust (nil: none). A newer one from src is kept, so
// the repo serves it on (a laptop to its peers, a mirror to its school). It
// returns the bytes it received. A source that serves no list, or a bad
// one, changes nothing: withdrawing a version or holding it back is the
// publisher's word, and only a signed list says it.
func keepList(ctx context.Context, repo *blobstore.Repo, src Source, k blobstore.ListKind, image string, trust *manifest.Keyring, log *slog.Logger) (blobstore.SignedList, int64) {
	have := heldList(repo, k, image, trust)
	ls, ok := src.(lister)
	if !ok {
		return have, 0
	}
	data, sig, err := ls.List(ctx, k, image)
	if err != nil {
		if !errors.Is(err, transfer.ErrNotFound) {
			log.Info("no signed list from the source", "list", k, "source", src, "err", err)
		}
		return have, 0
	}
	n := int64(len(data) + len(sig))
	got, err := blobstore.VerifyList(trust, k, image, data, sig)
	if err != nil {
		log.Warn("ignoring a signed list that does not verify", "list", k, "source", src, "err", err)
		return have, n
	}
	if have != nil && got.Head().Seq <= have.Head().Seq {
		return have, n
	}
	if err := repo.StoreList(k, image, data, sig); err != nil {
		log.Warn("could not keep the signed list", "list", k, "err", err)
	}
	return got, n
}

// heldList is the repo's own list of kind k of image, if it verifies
// against trust (nil otherwise).
func heldList(repo *blobstore.Repo, k blobstore.ListKind, image string, trust *manifest.Keyring) blobstore.SignedList {
	data, sig, err := repo.ReadList(k, image)
	if err != nil || data == nil {
		return nil
	}
	l, err := blobstore.VerifyList(trust, k, image, data, sig)
	if err != nil {
		return nil
	}
	return l
}

// haveTree reports whether version v's tree exists, built from manifest
// mf: the stored manifest has the same hash.
func (s *Sysroot) haveTree(ctx context.Context, image string, v uint64, mf *blobstore.SignedFile) bool {
	if _, err := os.Lstat(s.TreePath(v)); err != nil {
		return false
	}
	old, err := s.repo.OpenVersion(image, v)
	if err != nil {
		return false
	}
	defer old.Close()
	if old.Size() != mf.Size() {
		return false
	}
	od, err := old.Digest(ctx)
	md, merr := mf.Digest(ctx)
	return err == nil && merr == nil && od == md
}

// newTree is a version's tree being built under a temporary name.
type newTree struct {
	tmp string
	bld *builder
	// kept lists the etc/ paths where the node's version was kept over the
	// image's change.
	kept []string
}

// buildTree builds the tree under a temporary name, merging into its etc/
// what the node changed in the current tree's, except the files whose
// objects are still being fetched (later) and their directories: stage
// completes those. On error nothing of it is left.
func (s *Sysroot) buildTree(ctx context.Context, b *blobstore.Batch, mf *blobstore.SignedFile, h *manifest.Header, pol EntryPolicy, current uint64, later map[manifest.Digest]bool, arrived <-chan manifest.Digest) (t *newTree, err error) {
	// What the node did to its /etc is read first, and only read: the
	// current tree is never written.
	merge, err := s.newEtcMerge(ctx, h.Image, current)
	if err != nil {
		return nil, err
	}
	trees := filepath.Join(s.dir, treesDir)
	s.at("mkdir tree")
	tmp, err := os.MkdirTemp(trees, tmpPrefix+strconv.FormatUint(h.Version, 10)+"-")
	if err != nil {
		return nil, fmt.Errorf("build tree: %w", err)
	}
	defer func() {
		if err != nil {
			removeTree(tmp)
		}
	}()
	r, err := manifest.NewReader(mf.Reader())
	if err != nil {
		return nil, err
	}
	bld := &builder{root: tmp, store: s.repo.Store, batch: b, uid: uint32(os.Geteuid()), gid: uint32(os.Getegid()), local: s.LocalDir(), policy: pol, later: later}
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		e, err := r.Next()
		if err == io.EOF {
			e = nil
		} else if err != nil {
			return nil, err
		}
		steps, err := merge.feed(e)
		if err != nil {
			return nil, err
		}
		for _, st := range steps {
			s.at("build " + st.e.Path)
			if err := bld.add(st.e, st.from); err != nil {
				return nil, err
			}
		}
		if e == nil {
			break
		}
	}
	if err := bld.finish(); err != nil {
		return nil, err
	}
	// The fetch closes arrived when it ends, having sent each object it
	// staged; what a failed fetch leaves is removed with the tree.
	for d := range arrived {
		if err := bld.arrive(ctx, d, func(p string) { s.at("build " + p) }); err != nil {
			return nil, err
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, context.Cause(ctx)
	}
	return &newTree{tmp: tmp, bld: bld, kept: merge.kept}, nil
}

// stage completes the tree once every object is there (finishing the
// directories the set-aside files kept open), makes it and the
// new objects durable with the batch's one syncfs, renames it into place,
// records the version in the node's repo and points the staged link at it.
func (s *Sysroot) stage(ctx context.Context, b *blobstore.Batch, t *newTree, h *manifest.Header, deltas *signedDeltas, mf *blobstore.SignedFile) error {
	if err := t.bld.complete(ctx, func(p string) { s.at("build " + p) }); err != nil {
		return err
	}
	tmp := t.tmp
	trees := filepath.Join(s.dir, treesDir)
	s.at("add mount points")
	if err := addMountPoints(tmp); err != nil {
		return fmt.Errorf("build tree: %w", err)
	}
	if err := b.Commit(); err != nil {
		return err
	}
	final := s.TreePath(h.Version)
	s.at("remove orphan tree")
	if err := removeTree(final); err != nil { // an orphan from an interrupted pull
		return err
	}
	s.at("rename tree")
	if err := os.Rename(tmp, final); err != nil {
		return fmt.Errorf("build tree: %w", err)
	}
	if err := fsutil.FsyncDir(trees); err != nil {
		return err
	}
	if deltas != nil {
		// Kept so neighbours can plan from it too; it names encodings this
		// node may not hold, and they fall back to others.
		s.at("write delta index")
		if err := s.repo.AddDeltas(h.Image, h.Version, deltas.file); err != nil {
			return err
		}
	}
	s.at("add version")
	if _, err := s.repo.AddVersion(h, mf); err != nil {
		return err
	}
	if err := s.setLink(LinkStaged, h.Version); err != nil {
		return err
	}
	return fsutil.FsyncDir(s.dir)
}

// logger is the pull's log, or one that discards.
func (o PullOptions) logger() *slog.Logger {
	if o.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return o.Log
}
