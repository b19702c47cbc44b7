package blobstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/peerup/peerup/manifest"
)

// PublishOptions say what version to make of a tree.
type PublishOptions struct {
	Image   string
	Version uint64 // 0 means one above the newest the repo holds
	Label   string
	Created time.Time // zero means now
	Signer  *manifest.Signer
	// Expires, KeysAdd and KeysRevoke fill the manifest's optional header
	// fields (SPEC.md §1, §17). Each key KeysAdd names must ship in the
	// tree under manifest.TrustedKeysDir.
	Expires    time.Time
	KeysAdd    []string
	KeysRevoke []string
	// AnyKey signs with a key the repo's fleet keys do not list (laptops
	// that trust it some other way); without it such a publish is refused.
	AnyKey bool
	// NewImage starts an image the repo does not hold beside those it
	// does; without it that is refused (a mistyped --image). AllowSame
	// publishes a tree identical to the image's newest version, which is
	// otherwise refused unless keys or an expiry change with it.
	NewImage, AllowSame bool
	// Rollout, if set, sends the version to that percent of machines at
	// first (SPEC.md §3); SetRollout raises it later. nil: every machine.
	Rollout *int
	// Progress, if set, is called with bytes hashed so far and the total.
	Progress func(done, total int64)
	// Fault, if set, is called at each step of a publish with its name
	// ("stored": objects and manifest in place, not listed; "list": about
	// to write the index), so tests can stop or crash it there.
	Fault func(point string)
}

// Published describes a new version.
type Published struct {
	Header     manifest.Header
	Manifest   Digest
	NewObjects int   // objects the repo did not hold before
	NewBytes   int64 // their size
}

// Publish makes a signed version of the tree at dir and lists it at once:
// Stage, then List. A publisher that makes encodings (diff.Publish) lists
// only after them.
func (r *Repo) Publish(ctx context.Context, dir string, o PublishOptions) (*Published, error) {
	p, err := r.Stage(ctx, dir, o)
	if err != nil {
		return nil, err
	}
	defer p.Close()
	if err := p.List(); err != nil {
		return nil, err
	}
	return p.Published, nil
}

// Pending is a version stored but not yet listed: its objects are
// committed and its manifest and signature are in place, but no reader
// sees it until List writes the index. It holds the repo's lock from Stage
// to Close, so the publisher can add the version's encodings in between
// and no other writer can list, or remove, anything meanwhile.
type Pending struct {
	*Published
	repo   *Repo
	entry  IndexEntry
	fault  func(string)
	unlock func()
	listed bool
	opts   PublishOptions // for the fleet keys, once listed
}

// Stage makes a signed version of the tree at dir without listing it: it
// stores every file's bytes as objects and writes and signs the manifest.
// Close the result; List makes the version visible.
func (r *Repo) Stage(ctx context.Context, dir string, o PublishOptions) (*Pending, error) {
	if err := manifest.ValidImage(o.Image); err != nil {
		return nil, err
	}
	if o.Signer == nil {
		return nil, errors.New("publish: no signing key")
	}
	if o.Rollout != nil {
		if err := checkPercent(*o.Rollout); err != nil {
			return nil, fmt.Errorf("publish: %w", err)
		}
	}
	unlock, err := r.Lock()
	if err != nil {
		return nil, fmt.Errorf("publish: repo %w", err)
	}
	if err := r.checkSigner(o); err != nil {
		unlock()
		return nil, err
	}
	p := &Pending{repo: r, fault: o.Fault, unlock: unlock, opts: o}
	pub, err := r.stage(ctx, dir, o, p)
	if err != nil {
		p.Close()
		return nil, err
	}
	p.Published = pub
	return p, nil
}

func (r *Repo) stage(ctx context.Context, dir string, o PublishOptions, p *Pending) (*Published, error) {
	if err := r.CleanStaging(); err != nil {
		return nil, err
	}
	ix, err := r.ReadIndex()
	if err != nil {
		return nil, err
	}
	if imgs := ix.Images(); len(imgs) > 0 && !slices.Contains(imgs, o.Image) && !o.NewImage {
		return nil, fmt.Errorf("publish: this repo holds images %s, not %q: a mistyped --image? (pass --new-image to start another image)", strings.Join(imgs, ", "), o.Image)
	}
	latest, have := ix.Latest(o.Image)
	v := o.Version
	switch {
	case v == 0:
		v = latest.Version + 1
	case have && v <= latest.Version:
		return nil, fmt.Errorf("publish: version %d is not newer than %s's newest, %d (versions must rise)", v, o.Image, latest.Version)
	}
	// From here on Close has v's files to clear if it is never listed. An
	// earlier publish of v that was killed left them too: a delta index of
	// that attempt must not survive beside this manifest.
	p.entry = IndexEntry{Image: o.Image, Version: v}
	if err := r.ClearUnlisted(o.Image, v); err != nil {
		return nil, fmt.Errorf("publish: %w", err)
	}
	entries, err := manifest.Scan(ctx, dir)
	if err != nil {
		return nil, fmt.Errorf("publish: %w", err)
	}
	b, err := r.Begin()
	if err != nil {
		return nil, err
	}
	defer b.Abort()
	pub := &Published{}
	if err := r.storeFiles(ctx, b, dir, entries, o.Progress, pub); err != nil {
		return nil, fmt.Errorf("publish: %w", err)
	}
	// An unchanged tree makes a version every laptop fetches for nothing;
	// republishing it to roll keys or renew an expiry is the exception.
	if have && !o.AllowSame && len(o.KeysAdd) == 0 && len(o.KeysRevoke) == 0 && o.Expires.IsZero() {
		if same, err := r.sameTree(o.Image, latest.Version, entries); err != nil {
			return nil, fmt.Errorf("publish: %w", err)
		} else if same {
			return nil, fmt.Errorf("publish: the tree is the same as %s version %d: nothing to publish (pass --allow-same to make it a new version anyway)", o.Image, latest.Version)
		}
	}
	created := o.Created
	if created.IsZero() {
		created = time.Now()
	}
	if err := checkShippedKeys(dir, o.KeysAdd); err != nil {
		return nil, fmt.Errorf("publish: %w", err)
	}
	h := manifest.Header{Format: manifest.FormatVersion, Image: o.Image, Version: v, Label: o.Label, Created: created.UTC().Truncate(time.Second),
		KeysAdd: sortedCopy(o.KeysAdd), KeysRevoke: sortedCopy(o.KeysRevoke)}
	if !o.Expires.IsZero() {
		h.Expires = o.Expires.UTC().Truncate(time.Second)
	}
	m := &manifest.Manifest{Header: h, Entries: entries}
	mb, err := m.Marshal()
	if err != nil {
		return nil, fmt.Errorf("publish: %w", err)
	}
	var sig bytes.Buffer
	if err := o.Signer.Sign(&sig, bytes.NewReader(mb)); err != nil {
		return nil, fmt.Errorf("publish: %w", err)
	}
	if err := b.Commit(); err != nil {
		return nil, fmt.Errorf("publish: %w", err)
	}
	// The publisher holds its manifest whole (its tree's entries are in
	// memory already); a node receiving it never does.
	mf, err := r.Receive(func(w io.Writer) ([]byte, error) {
		_, err := w.Write(mb)
		return sig.Bytes(), err
	})
	if err != nil {
		return nil, fmt.Errorf("publish: %w", err)
	}
	defer mf.Close()
	ie, err := r.storeManifest(&m.Header, mf)
	if err != nil {
		return nil, fmt.Errorf("publish: %w", err)
	}
	p.entry = ie
	p.at("stored")
	manifest.Totals(&m.Header, entries)
	pub.Header, pub.Manifest = m.Header, ie.Manifest
	return pub, nil
}

func (p *Pending) at(point string) {
	if p.fault != nil {
		p.fault(point)
	}
}

// List names the version in the index, the commit point of a publish:
// whatever the publisher stored for it before (encodings, a delta index)
// is in place and durable, and becomes visible with it.
func (p *Pending) List() error {
	if p.listed {
		return errors.New("publish: version already listed")
	}
	// The rollout is signed in place before the listing: no node may see
	// the version without it, and take it for one going to every machine.
	pct := -1
	if p.opts.Rollout != nil {
		pct = *p.opts.Rollout
	}
	if err := p.repo.setRolloutLocked(p.entry.Image, p.entry.Version, pct, p.opts.Signer); err != nil {
		return fmt.Errorf("publish %s v%d: %w", p.entry.Image, p.entry.Version, err)
	}
	p.at("list")
	if err := p.repo.list(p.entry); err != nil {
		return fmt.Errorf("publish %s v%d: %w", p.entry.Image, p.entry.Version, err)
	}
	p.listed = true
	if err := p.repo.recordKeys(p.opts); err != nil {
		return fmt.Errorf("publish %s v%d: listed, but recording its keys: %w", p.entry.Image, p.entry.Version, err)
	}
	return nil
}

// Close releases the repo's lock. A version never listed is removed, so a
// failed or cancelled publish leaves the repo as it was; one killed before
// it could do so leaves files that the next publish of that version clears.
func (p *Pending) Close() error {
	if p.unlock == nil {
		return nil
	}
	var err error
	if !p.listed && p.entry.Image != "" {
		err = p.repo.ClearUnlisted(p.entry.Image, p.entry.Version)
	}
	p.unlock()
	p.unlock = nil
	return err
}

// sameTree reports whether version v's manifest lists exactly entries.
func (r *Repo) sameTree(image string, v uint64, entries []manifest.Entry) (bool, error) {
	sf, err := r.OpenVersion(image, v)
	if err != nil {
		return false, err
	}
	defer sf.Close()
	rd, err := manifest.NewReader(sf.Reader())
	if err != nil {
		return false, err
	}
	for i := 0; ; i++ {
		e, err := rd.Next()
		if err == io.EOF {
			return i == len(entries), nil
		}
		if err != nil {
			return false, err
		}
		if i >= len(entries) || !e.Same(&entries[i]) {
			return false, nil
		}
	}
}

// storeFiles hashes every file on all cores and stores the ones the repo
// lacks. A file is hashed first and copied only if new; the copy is hashed
// again, so a file that changes under us cannot be stored under a stale name.
func (r *Repo) storeFiles(ctx context.Context, b *Batch, dir string, entries []manifest.Entry, progress func(int64, int64), pub *Published) error {
	var total int64
	var idx []int
	for i := range entries {
		if entries[i].Type == manifest.TypeFile {
			idx = append(idx, i)
			total += entries[i].Size
		}
	}
	var done atomic.Int64
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(runtime.NumCPU())
	for _, i := range idx {
		if gctx.Err() != nil {
			break
		}
		g.Go(func() error {
			e := &entries[i]
			isNew, err := r.storeFile(gctx, b, filepath.Join(dir, e.Path), e)
			if err != nil {
				return fmt.Errorf("%s: %w", e.Path, err)
			}
			if isNew {
				mu.Lock()
				pub.NewObjects++
				pub.NewBytes += e.Size
				mu.Unlock()
			}
			if progress != nil {
				progress(done.Add(e.Size), total)
			}
			return nil
		})
	}
	return waitGroup(ctx, g)
}

// waitGroup waits for g and returns its first error, or why ctx ended if
// it did first: a cancelled caller sees its own cause, not a worker's
// report of it.
func waitGroup(ctx context.Context, g *errgroup.Group) error {
	err := g.Wait()
	if cause := context.Cause(ctx); cause != nil {
		return cause
	}
	return err
}

func (r *Repo) storeFile(ctx context.Context, b *Batch, path string, e *manifest.Entry) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	h := sha256.New()
	buf := copyBufs.Get().(*[]byte)
	n, err := io.CopyBuffer(h, ctxReader{ctx, f}, *buf)
	copyBufs.Put(buf)
	if err != nil {
		return false, err
	}
	if n != e.Size {
		return false, fmt.Errorf("changed while publishing (size %d, then %d)", e.Size, n)
	}
	h.Sum(e.SHA256[:0])
	if b.Has(e.SHA256) {
		return false, nil
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return false, err
	}
	if err := b.Put(ctx, e.SHA256, e.Size, f); err != nil {
		return false, fmt.Errorf("changed while publishing: %w", err)
	}
	return true, nil
}

func sortedCopy(l []string) []string {
	if len(l) == 0 {
		return nil
	}
	c := append([]string(nil), l...)
	sort.Strings(c)
	return c
}

// checkShippedKeys makes sure every key a version introduces is in its tree,
// where nodes will look for it once they run the version.
func checkShippedKeys(dir string, fprs []string) error {
	if len(fprs) == 0 {
		return nil
	}
	have := map[string]bool{}
	kd := filepath.Join(dir, filepath.FromSlash(manifest.TrustedKeysDir))
	names, _ := os.ReadDir(kd)
	for _, n := range names {
		if filepath.Ext(n.Name()) != ".pub" {
			continue
		}
		got, err := manifest.KeyFingerprints(filepath.Join(kd, n.Name()))
		if err != nil {
			return err
		}
		for _, f := range got {
			have[f] = true
		}
	}
	for _, f := range fprs {
		if !have[f] {
			return fmt.Errorf("key %s is to be introduced but the tree has no %s/*.pub holding it", f, manifest.TrustedKeysDir)
		}
	}
	return nil
}
