package apply

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/diff"
	"github.com/peerup/peerup/manifest"
)

// ObjectSource opens the objects of the repo being exported. Export opens
// each object once, however many targets it writes to.
type ObjectSource interface {
	OpenObject(d manifest.Digest) (io.ReadCloser, error)
}

// StoreObjects reads objects from a repo's own store.
type StoreObjects struct{ Store *blobstore.Store }

// OpenObject opens object d.
func (s StoreObjects) OpenObject(d manifest.Digest) (io.ReadCloser, error) { return s.Store.Open(d) }

// ExportOptions say what to export.
type ExportOptions struct {
	Image   string // "": the source's only image
	Version uint64 // 0: the newest the source holds
	// FromVersion, if set, limits the export to what a laptop at that
	// version lacks: encodings whose base it holds, whole objects for the
	// rest. 0 exports every object of Version whole.
	FromVersion uint64
	// Trust, if set, has every signature checked before anything is
	// written; without it a signature must still be present.
	Trust *manifest.Keyring
	// Memory is the smallest memory budget (memory-mib) of the laptops
	// the stick is for (0: DefaultMemoryMiB). With FromVersion, an
	// encoding whose decoding would not fit it is passed over, as such a
	// laptop's planner passes it over: were it the only way on the stick,
	// the laptop would ask for the whole object, which is not there.
	Memory Memory
	// Objects reads the source's objects (default: the repo's store).
	Objects ObjectSource
	// Progress, if set, is called from each target's own goroutine with
	// the bytes written and read back so far and the total of both.
	Progress func(target int, done, total int64)
	Log      *slog.Logger
	// AnyOwner lets an export write to a folder owned by a user other than
	// root, the exporting user or the one who ran sudo. Such a user can
	// change the folder while it is written; the writes stay beneath it
	// either way.
	AnyOwner bool
}

// ExportResult says what an export wrote.
type ExportResult struct {
	Image       string `json:"image"`
	Version     uint64 `json:"version"`
	FromVersion uint64 `json:"from_version,omitempty"`
	// Objects each target holds, Encodings of them patches or compressed
	// forms, Bytes their size (what is read from the source, once).
	Objects   int            `json:"objects"`
	Encodings int            `json:"encodings"`
	Bytes     int64          `json:"bytes"`
	Targets   []TargetResult `json:"targets"`
}

// TargetResult is one target's outcome.
type TargetResult struct {
	Dir string `json:"dir"`
	Err error  `json:"-"`
}

// exportObject is an object to copy, with what it is for error messages.
type exportObject struct {
	d    manifest.Digest
	size int64
	what string
}

// exportFile is a signed file, copied from the source repo's file (from),
// or its signature, copied from memory (data); d and size are what it is
// read back against.
type exportFile struct {
	rel  string
	from string
	data []byte
	size int64
	d    manifest.Digest
}

type exportPlan struct {
	image    string
	version  uint64
	from     uint64
	objects  []exportObject
	files    []exportFile
	index    []byte
	objBytes int64 // the objects'
	bytes    int64 // objects and files together
	encoding int
}

// stampFile marks a folder an export is writing to: a stick whose export
// was interrupted holds it and no marker, so it neither looks like a repo
// nor stops the next export from clearing it.
const stampFile = ".peerup-export"

// Export writes a self-contained static repo holding one signed version to
// each target folder (SPEC.md §16). Each source object is read once and its
// bytes fanned out to every target as they are read; each target is then
// synced and read back, and only a target that checks out gets its index
// and marker, written last. A target that fails is reported in its
// TargetResult and the others carry on; the error is non-nil if any
// failed. Nothing is written anywhere if the source does not check out.
func Export(ctx context.Context, src *blobstore.Repo, targets []string, o ExportOptions) (*ExportResult, error) {
	if len(targets) == 0 {
		return nil, errors.New("export: no target folder (--to)")
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Objects == nil {
		o.Objects = StoreObjects{src.Store}
	}
	p, err := planExport(src, o)
	if err != nil {
		return nil, fmt.Errorf("export: %w", err)
	}
	dirs, err := checkTargets(src.Dir(), targets)
	if err != nil {
		return nil, fmt.Errorf("export: %w", err)
	}
	res := &ExportResult{Image: p.image, Version: p.version, FromVersion: p.from, Objects: len(p.objects), Encodings: p.encoding, Bytes: p.objBytes}
	errs := fanOut(ctx, p, dirs, o)
	var failed []error
	for i, d := range dirs {
		res.Targets = append(res.Targets, TargetResult{Dir: d, Err: errs[i]})
		if errs[i] != nil {
			failed = append(failed, errs[i])
		}
	}
	return res, errors.Join(failed...)
}

// planExport reads and checks the source's signed files and picks the
// objects to copy. It reads no object.
func planExport(src *blobstore.Repo, o ExportOptions) (*exportPlan, error) {
	if _, err := os.Stat(src.Layout().Marker()); err != nil {
		return nil, fmt.Errorf("%s holds no peerup repo: %w", src.Dir(), err)
	}
	ix, err := src.ReadIndex()
	if err != nil {
		return nil, err
	}
	p := &exportPlan{image: o.Image, version: o.Version, from: o.FromVersion}
	if p.image == "" {
		imgs := ix.Images()
		if len(imgs) != 1 {
			return nil, fmt.Errorf("%s holds images %v; choose one with --image", src.Dir(), imgs)
		}
		p.image = imgs[0]
	}
	var e blobstore.IndexEntry
	var ok bool
	if p.version == 0 {
		e, ok = ix.Latest(p.image)
	} else {
		e, ok = ix.Find(p.image, p.version)
	}
	if !ok {
		return nil, fmt.Errorf("%s holds no version %s of %s", src.Dir(), versionName(p.version), p.image)
	}
	p.version = e.Version
	if p.from != 0 && p.from >= p.version {
		return nil, fmt.Errorf("--from-version %d is not older than version %d", p.from, p.version)
	}
	mf, err := exportManifest(src, p.image, p.version, o.Trust)
	if err != nil {
		return nil, err
	}
	defer mf.Close()
	md, err := mf.Digest(context.Background())
	if err != nil {
		return nil, err
	}
	if md != e.Manifest {
		return nil, fmt.Errorf("%s's index names manifest %s for %s v%d, but the file is %s", src.Dir(), e.Manifest, p.image, p.version, md)
	}
	mr, err := manifest.NewReader(mf.Reader())
	if err != nil {
		return nil, fmt.Errorf("manifest %s v%d: %w", p.image, p.version, err)
	}
	deltas, err := exportDeltas(src, p.image, p.version, md, o)
	if err != nil {
		return nil, err
	}
	defer deltas.close()
	var bases baseSets
	if p.from != 0 {
		if bases, err = catchUpBases(src, ix, p.image, p.from, p.version, o.Trust); err != nil {
			return nil, err
		}
	}
	if err := p.pickObjects(src, mr, bases, deltas, newInFlight(o.Memory).limit); err != nil {
		return nil, err
	}
	p.addSigned(blobstore.Layout{}.Manifest(p.image, p.version), mf, md)
	if deltas != nil {
		dd, err := deltas.file.Digest(context.Background())
		if err != nil {
			return nil, err
		}
		p.addSigned(blobstore.Layout{}.Deltas(p.image, p.version), deltas.file, dd)
	}
	if err := p.addLists(src, o.Trust); err != nil {
		return nil, err
	}
	ixOut := &blobstore.Index{}
	ixOut.Set(e)
	p.index = ixOut.Marshal()
	return p, nil
}

func versionName(v uint64) string {
	if v == 0 {
		return "at all"
	}
	return fmt.Sprint(v)
}

// exportManifest opens version v's manifest and checks it as a laptop
// would, but for expiry (the laptop checks that when it installs): with
// keys, by manifest.Accept; without, its header only. Nothing unsigned goes
// onto a stick: OpenVersion refuses a manifest without a signature.
func exportManifest(src *blobstore.Repo, image string, v uint64, trust *manifest.Keyring) (*blobstore.SignedFile, error) {
	rel := blobstore.Layout{}.Manifest(image, v)
	mf, err := src.OpenVersion(image, v)
	if err != nil {
		return nil, err
	}
	want := manifest.Want{Image: image, Version: v}
	if trust != nil {
		_, _, err = manifest.Accept(trust, mf.Signed(), want)
	} else {
		_, err = manifest.CheckHeader(mf.Reader(), want)
	}
	if err != nil {
		mf.Close()
		return nil, fmt.Errorf("%s: %w", rel, err)
	}
	return mf, nil
}

// addSigned adds a signed file, to be copied from where the source holds
// it, and its signature. d is the hash it was checked with; the copy is
// read back against it.
func (p *exportPlan) addSigned(rel string, sf *blobstore.SignedFile, d manifest.Digest) {
	sig := sf.Sig()
	p.files = append(p.files,
		exportFile{rel: rel, from: sf.Path(), size: sf.Size(), d: d},
		exportFile{rel: blobstore.SignatureOf(rel), data: sig, size: int64(len(sig)), d: manifest.Digest(sha256sum(sig))})
	p.bytes += sf.Size() + int64(len(sig))
}

// addLists adds the image's signed lists the source holds: a stick must
// not bring back a withdrawn version, nor carry one to the machines its
// rollout holds back (SPEC.md §3). Each is checked as its signed files
// are: against trust if set, otherwise only for a signature.
func (p *exportPlan) addLists(src *blobstore.Repo, trust *manifest.Keyring) error {
	for _, k := range blobstore.ListKinds() {
		data, sig, err := src.ReadList(k, p.image)
		if err != nil {
			return err
		}
		if data == nil {
			continue
		}
		if trust != nil {
			if _, err := blobstore.VerifyList(trust, k, p.image, data, sig); err != nil {
				return fmt.Errorf("%s: %w", src.Dir(), err)
			}
		} else if len(sig) == 0 {
			return fmt.Errorf("%s: the %s list of %s has no signature", src.Dir(), k, p.image)
		}
		rel := blobstore.Layout{}.List(k, p.image)
		for _, f := range []exportFile{{rel: rel, data: data}, {rel: blobstore.SignatureOf(rel), data: sig}} {
			f.size, f.d = int64(len(f.data)), manifest.Digest(sha256sum(f.data))
			p.files = append(p.files, f)
			p.bytes += f.size
		}
	}
	return nil
}

// exportDeltas opens the version's delta index, if the source has one, and
// checks it belongs to the manifest whose hash is md: an index a pull would
// refuse must not go onto a stick.
func exportDeltas(src *blobstore.Repo, image string, v uint64, md manifest.Digest, o ExportOptions) (*signedDeltas, error) {
	rel := blobstore.Layout{}.Deltas(image, v)
	df, err := src.OpenDeltas(image, v)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var x *diff.DeltaIndex
	if o.Trust != nil {
		x, err = diff.AcceptDeltas(o.Trust, df.Signed(), image, v, md)
	} else {
		x, err = diff.DeltasFor(df.Signed(), image, v, md)
	}
	if err != nil {
		df.Close()
		return nil, fmt.Errorf("%s: %w", rel, err)
	}
	return &signedDeltas{idx: x, file: df}, nil
}

// maxCatchUpBases bounds the versions a catch-up stick is planned for
// (one bit each in baseSets), and so the export's memory.
const maxCatchUpBases = 64

// baseSets says, for the versions a catch-up stick is for, which objects
// a laptop at each holds: bit i of held[d] is set when the i-th base
// version has object d, whose size is size[d].
type baseSets struct {
	n    int
	held map[manifest.Digest]uint64
	size map[manifest.Digest]int64
}

// catchUpBases reads what laptops at from, and at each later version below
// to that the source holds the manifest of, hold: a stick "from version N"
// catches up a laptop at N or at any version after it (at most
// maxCatchUpBases: N and the newest after it), not only one at N.
func catchUpBases(src *blobstore.Repo, ix *blobstore.Index, image string, from, to uint64, trust *manifest.Keyring) (baseSets, error) {
	vs := []uint64{}
	for _, e := range ix.Entries {
		if e.Image == image && e.Version > from && e.Version < to {
			vs = append(vs, e.Version)
		}
	}
	sort.Slice(vs, func(i, j int) bool { return vs[i] > vs[j] })
	vs = append([]uint64{from}, vs[:min(len(vs), maxCatchUpBases-1)]...)
	b := baseSets{held: map[manifest.Digest]uint64{}, size: map[manifest.Digest]int64{}}
	for _, v := range vs {
		mf, err := exportManifest(src, image, v, trust)
		if errors.Is(err, fs.ErrNotExist) {
			if v == from {
				return b, fmt.Errorf("%s holds no manifest of %s v%d, so it cannot tell what a laptop at v%d holds; export without --from-version", src.Dir(), image, v, v)
			}
			continue // a later version the source no longer keeps
		}
		if err != nil {
			return b, err
		}
		bit := uint64(1) << b.n
		err = eachEntry(mf, func(e *manifest.Entry) error {
			if e.Type == manifest.TypeFile {
				b.held[e.SHA256] |= bit
				b.size[e.SHA256] = e.Size
			}
			return nil
		})
		mf.Close()
		if err != nil {
			return b, fmt.Errorf("manifest %s v%d: %w", image, v, err)
		}
		b.n++
	}
	return b, nil
}

func eachFileOf(r *manifest.Reader, f func(e *manifest.Entry) error) error {
	for {
		e, err := r.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if e.Type == manifest.TypeFile {
			if err := f(e); err != nil {
				return err
			}
		}
	}
}

// pickObjects chooses, for each object of the version that a laptop at a
// base version lacks, the cheapest way the planner (SPEC.md §10) would take
// that the source holds: an encoding that laptop can use (usableEncoding:
// smaller than the object, its base one the laptop has, its decoding within
// limit), else the whole object; each is added once, whichever bases need
// it. A full export (no base version) takes every object whole, so the
// stick serves a laptop at any version, or none.
func (p *exportPlan) pickObjects(src *blobstore.Repo, mr *manifest.Reader, bases baseSets, deltas *signedDeltas, limit int64) error {
	seen := map[manifest.Digest]bool{}
	add := func(d manifest.Digest, size int64, what string) bool {
		if seen[d] {
			return false
		}
		seen[d] = true
		p.objects = append(p.objects, exportObject{d, size, what})
		p.objBytes += size
		p.bytes += size
		return true
	}
	all := uint64(1)<<bases.n - 1
	done := map[manifest.Digest]bool{}
	return eachFileOf(mr, func(e *manifest.Entry) error {
		lacking := all &^ bases.held[e.SHA256]
		if done[e.SHA256] || p.from != 0 && lacking == 0 {
			return nil
		}
		done[e.SHA256] = true
		whole := p.from == 0 || deltas == nil
		var ways []diff.Encoding
		if !whole {
			ways = deltas.idx.For(e.SHA256)
			sort.SliceStable(ways, func(i, j int) bool { return ways[i].Size < ways[j].Size })
		}
		for i := 0; i < bases.n && !whole; i++ {
			bit := uint64(1) << i
			if lacking&bit == 0 {
				continue
			}
			baseSize := func(d manifest.Digest) (int64, bool) { return bases.size[d], bases.held[d]&bit != 0 }
			found := false
			for _, enc := range ways {
				if usableEncoding(enc, e.Size, baseSize, limit) && src.Has(enc.Digest) {
					if add(enc.Digest, enc.Size, fmt.Sprintf("%s encoding of %s", enc.Kind, e.Path)) {
						p.encoding++
					}
					found = true
					break
				}
			}
			whole = !found
		}
		if !whole {
			return nil
		}
		if !src.Has(e.SHA256) {
			return fmt.Errorf("%s lacks object %s (%s) and no encoding of it fits", src.Dir(), e.SHA256, e.Path)
		}
		add(e.SHA256, e.Size, e.Path)
		return nil
	})
}

// checkTargets makes each target folder's path absolute and refuses
// targets that are the source, inside it, hold it, or repeat another.
func checkTargets(srcDir string, targets []string) ([]string, error) {
	srcAbs, err := filepath.Abs(srcDir)
	if err != nil {
		return nil, err
	}
	srcAbs = realPath(srcAbs)
	var out []string
	seen := map[string]string{}
	for _, t := range targets {
		abs, err := filepath.Abs(t)
		if err != nil {
			return nil, err
		}
		real := realPath(abs)
		if within(real, srcAbs) || within(srcAbs, real) {
			return nil, fmt.Errorf("target %s and the source repo %s overlap", t, srcDir)
		}
		if prev, ok := seen[real]; ok {
			return nil, fmt.Errorf("target %s is given twice (also as %s)", t, prev)
		}
		seen[real] = t
		out = append(out, abs)
	}
	return out, nil
}

// realPath resolves symlinks in the absolute path p, or in the part of it
// that exists.
func realPath(p string) string {
	if r, err := filepath.EvalSymlinks(p); err == nil {
		return r
	}
	parent := filepath.Dir(p)
	if parent == p {
		return p
	}
	return filepath.Join(realPath(parent), filepath.Base(p))
}

func within(p, dir string) bool {
	return p == dir || strings.HasPrefix(p, dir+string(filepath.Separator)) || dir == "/"
}
