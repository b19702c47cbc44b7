package apply

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/internal/fsutil"
	"github.com/peerup/peerup/manifest"
)

// The reader hands every target the same chunks; a chunk returns to the
// pool when the last target has written it. The pool's size, not the
// objects' or the number of targets, bounds the memory an export takes: a
// slow stick holds chunks until the pool runs dry, then the reader waits
// for it.
const (
	chunkSize  = 256 << 10
	chunkCount = 16
	queueLen   = 8 // pieces waiting for each target
)

type chunk struct {
	buf  []byte
	n    int
	refs atomic.Int32
}

// piece is one message from the reader to a target.
type piece struct {
	begin *exportObject // an object starts
	data  *chunk        // its next bytes
	end   bool          // it is complete and matched its name at the source
}

// fan is one export's reader and its targets.
type fan struct {
	free    chan *chunk
	targets []*target
	live    atomic.Int32 // targets still writing
	readErr error        // set before the targets' queues close
}

// fanOut reads each object of the plan once, writes it to every target,
// then has each target finish on its own. It returns each target's error.
func fanOut(ctx context.Context, p *exportPlan, dirs []string, o ExportOptions) []error {
	f := &fan{free: make(chan *chunk, chunkCount)}
	for range chunkCount {
		f.free <- &chunk{buf: make([]byte, chunkSize)}
	}
	f.live.Store(int32(len(dirs)))
	// Every target is prepared (cleared, checked for room) before the
	// first byte is read, in parallel.
	var wg, ready sync.WaitGroup
	for i, dir := range dirs {
		t := &target{i: i, dir: dir, fan: f, o: &o, total: 2 * p.bytes, ch: make(chan piece, queueLen), mkdirs: map[string]bool{}}
		f.targets = append(f.targets, t)
		wg.Add(1)
		ready.Add(1)
		go func() {
			defer wg.Done()
			t.setErr(t.prepare(p))
			ready.Done()
			t.run(ctx, p)
		}()
	}
	ready.Wait()
	f.readErr = f.read(ctx, p, o.Objects)
	for _, t := range f.targets {
		close(t.ch)
	}
	wg.Wait()
	errs := make([]error, len(dirs))
	for i, t := range f.targets {
		errs[i] = t.err
	}
	return errs
}

func (f *fan) read(ctx context.Context, p *exportPlan, src ObjectSource) error {
	for i := range p.objects {
		if f.live.Load() == 0 {
			return nil // every target has failed: reading on helps nobody
		}
		if err := f.readOne(ctx, &p.objects[i], src); err != nil {
			return err
		}
	}
	return nil
}

// readOne streams one object to every target, hashing it on the way: a
// damaged source object (an in-place edit on a laptop) must not reach a
// stick under its name.
func (f *fan) readOne(ctx context.Context, ob *exportObject, src ObjectSource) error {
	r, err := src.OpenObject(ob.d)
	if err != nil {
		return fmt.Errorf("source object %s (%s): %w", ob.d, ob.what, err)
	}
	defer r.Close()
	if err := f.send(ctx, piece{begin: ob}); err != nil {
		return err
	}
	h := sha256.New()
	lr := io.LimitReader(r, ob.size+1)
	var n int64
	for {
		var c *chunk
		select {
		case c = <-f.free:
		case <-ctx.Done():
			return ctx.Err()
		}
		k, rerr := io.ReadFull(lr, c.buf)
		if k > 0 {
			h.Write(c.buf[:k])
			n += int64(k)
			c.n = k
			c.refs.Store(int32(len(f.targets)))
			if err := f.send(ctx, piece{data: c}); err != nil {
				return err
			}
		} else {
			f.free <- c
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			return fmt.Errorf("read source object %s (%s): %w", ob.d, ob.what, rerr)
		}
	}
	if got := manifest.Digest(h.Sum(nil)); n != ob.size || got != ob.d {
		return fmt.Errorf("source object %s (%s) is damaged (%d bytes, hash %s; peerup verify --repair mends a laptop's): %w", ob.d, ob.what, n, got, blobstore.ErrMismatch)
	}
	return f.send(ctx, piece{end: true})
}

// send queues a piece for every target; each one, failed or not, takes it.
func (f *fan) send(ctx context.Context, pc piece) error {
	for _, t := range f.targets {
		select {
		case t.ch <- pc:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

func (f *fan) release(c *chunk) {
	if c.refs.Add(-1) == 0 {
		f.free <- c
	}
}

// target writes one folder.
type target struct {
	i     int
	dir   string
	fan   *fan
	o     *ExportOptions
	ch    chan piece
	err   error
	done  int64
	total int64

	// root is the folder, opened once it exists: every write resolves
	// beneath it, since whoever owns a stick may plant symlinks in it.
	root     *os.Root
	prepared bool // the folder is ours to clear on failure
	mkdirs   map[string]bool
	cur      *exportObject
	f        *os.File
	tmp      string // relative to root
	written  []exportObject
}

func (t *target) run(ctx context.Context, p *exportPlan) {
	for pc := range t.ch {
		t.take(pc)
	}
	if t.err == nil && t.fan.readErr != nil {
		t.err = t.fan.readErr
	}
	if t.err == nil && ctx.Err() != nil {
		t.err = ctx.Err()
	}
	if t.err == nil {
		t.err = t.finish(ctx, p)
	}
	if t.root != nil {
		defer t.root.Close()
	}
	if t.err != nil {
		t.cleanup()
		t.err = fmt.Errorf("export to %s: %w", t.dir, t.err)
		t.o.Log.Warn("export failed", "target", t.dir, "err", t.err)
		return
	}
	t.o.Log.Info("exported", "target", t.dir, "image", p.image, "version", p.version, "objects", len(p.objects))
}

// setErr records a target's first failure; from then on it only drains
// its queue, so the others never wait for it.
func (t *target) setErr(err error) {
	if err != nil && t.err == nil {
		t.err = err
		t.fan.live.Add(-1)
	}
}

func (t *target) take(pc piece) {
	switch {
	case pc.data != nil:
		if t.err == nil {
			if _, err := t.f.Write(pc.data.buf[:pc.data.n]); err != nil {
				t.setErr(t.writeErr(err))
			} else {
				t.progress(int64(pc.data.n))
			}
		}
		t.fan.release(pc.data)
	case t.err != nil:
	case pc.begin != nil:
		t.setErr(t.begin(pc.begin))
	case pc.end:
		t.setErr(t.end())
	}
}

func (t *target) progress(n int64) {
	t.done += n
	if t.o.Progress != nil {
		t.o.Progress(t.i, t.done, t.total)
	}
}

// writeErr says what failed writing which object, the cause first: "no
// space left on device (writing objects/ab/ab12…)".
func (t *target) writeErr(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	return fmt.Errorf("%w (writing %s)", err, blobstore.Layout{}.Object(t.cur.d))
}

func (t *target) begin(ob *exportObject) error {
	t.cur = ob
	rel := blobstore.Layout{}.Object(ob.d)
	dir := filepath.Dir(rel)
	if !t.mkdirs[dir] {
		if err := t.root.MkdirAll(dir, 0o755); err != nil {
			return t.writeErr(err)
		}
		t.mkdirs[dir] = true
	}
	t.tmp = filepath.Join(dir, ".tmp-"+ob.d.String())
	t.root.Remove(t.tmp) // a failed export's, or a planted link
	f, err := t.root.OpenFile(t.tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o644)
	if err != nil {
		return t.writeErr(err)
	}
	t.f = f
	return nil
}

func (t *target) end() error {
	err := t.f.Close()
	t.f = nil
	if err == nil {
		err = t.root.Rename(t.tmp, blobstore.Layout{}.Object(t.cur.d))
	}
	if err != nil {
		t.root.Remove(t.tmp)
		return t.writeErr(err)
	}
	t.written = append(t.written, *t.cur)
	return nil
}

// prepare makes the folder ready: created if new, refused if it holds
// something that is not an earlier export, cleared of an earlier export
// (stamped first, so an interruption leaves it recognisably ours), and
// checked for room.
func (t *target) prepare(p *exportPlan) error {
	if err := os.MkdirAll(t.dir, 0o755); err != nil {
		return err
	}
	if err := checkOwner(t.dir, t.o.AnyOwner); err != nil {
		return err
	}
	root, err := os.OpenRoot(t.dir)
	if err != nil {
		return err
	}
	t.root = root
	has := func(name string) bool {
		_, err := t.root.Lstat(name)
		return err == nil
	}
	for _, n := range (blobstore.Layout{}).Working() {
		if has(n) {
			return fmt.Errorf("%s holds a working peerup repo (a publisher's or a laptop's), not an export; choose an empty folder", t.dir)
		}
	}
	if !has(stampFile) && !has(blobstore.Layout{}.Marker()) {
		for _, n := range (blobstore.Layout{}).Published() {
			if has(n) {
				return fmt.Errorf("%s holds %q but no earlier export; choose an empty folder or a stick", t.dir, n)
			}
		}
	}
	if err := fsutil.WriteAtomicIn(t.root, stampFile, []byte("peerup export in progress or failed\n")); err != nil {
		return err
	}
	t.prepared = true
	if err := t.clear(); err != nil {
		return err
	}
	if err := fsutil.FsyncDir(t.dir); err != nil {
		return err
	}
	return t.checkRoom(p)
}

// clear removes what an export writes, marker and index first.
func (t *target) clear() error {
	for _, n := range (blobstore.Layout{}).Published() {
		if err := t.root.RemoveAll(n); err != nil {
			return err
		}
	}
	if d, err := t.root.Open("."); err == nil {
		names, _ := d.Readdirnames(-1)
		d.Close()
		for _, n := range names {
			if strings.HasPrefix(n, ".") && strings.Contains(n, ".tmp-") { // WriteAtomicIn's
				t.root.Remove(n)
			}
		}
	}
	return nil
}

// checkRoom refuses a folder whose filesystem cannot hold the export, at
// once rather than when it fills: each file rounded up to whole blocks,
// plus a block for its directory entry and a margin.
func (t *target) checkRoom(p *exportPlan) error {
	var st unix.Statfs_t
	if err := unix.Statfs(t.dir, &st); err != nil || st.Bsize <= 0 {
		return nil // cannot tell: the writes will say
	}
	bs := st.Bsize
	need := int64(1 << 20)
	for _, ob := range p.objects {
		need += (ob.size+bs-1)/bs*bs + bs
	}
	for _, fl := range p.files {
		need += (fl.size+bs-1)/bs*bs + bs
	}
	if free := int64(st.Bavail) * bs; need > free {
		return fmt.Errorf("%w: the export needs about %.1f MiB, %.1f MiB is free", unix.ENOSPC, float64(need)/(1<<20), float64(free)/(1<<20))
	}
	return nil
}

// finish writes the signed files, syncs the folder's filesystem, reads
// everything back, and only then writes the index and the marker: a
// folder that failed anywhere before never looks like a repo.
func (t *target) finish(ctx context.Context, p *exportPlan) error {
	for _, fl := range p.files {
		if err := t.writeFile(ctx, fl); err != nil {
			return fmt.Errorf("write %s: %w", fl.rel, err)
		}
		t.progress(fl.size)
	}
	if err := fsutil.Syncfs(t.dir); err != nil {
		return err
	}
	for _, ob := range t.written {
		if err := t.readBack(ctx, blobstore.Layout{}.Object(ob.d), ob.d, ob.size); err != nil {
			return err
		}
	}
	for _, fl := range p.files {
		if err := t.readBack(ctx, fl.rel, fl.d, fl.size); err != nil {
			return err
		}
	}
	if err := fsutil.WriteAtomicIn(t.root, blobstore.Layout{}.Index(), p.index); err != nil {
		return fmt.Errorf("write index: %w", err)
	}
	if err := fsutil.WriteAtomicIn(t.root, blobstore.Layout{}.Marker(), []byte(blobstore.MarkerMagic)); err != nil {
		return fmt.Errorf("write marker: %w", err)
	}
	if err := t.root.Remove(stampFile); err != nil {
		return err
	}
	return fsutil.FsyncDir(t.dir)
}

// writeFile writes a signed file or its signature into the folder, under a
// temporary name renamed into place (replacing, never following, whatever
// is there): a manifest is copied from the source repo's file as a stream,
// never read whole; the read-back in finish checks it.
func (t *target) writeFile(ctx context.Context, fl exportFile) error {
	rel := filepath.FromSlash(fl.rel)
	if err := t.root.MkdirAll(filepath.Dir(rel), 0o755); err != nil {
		return err
	}
	if fl.from == "" {
		return fsutil.WriteAtomicIn(t.root, rel, fl.data)
	}
	in, err := os.Open(fl.from)
	if err != nil {
		return err
	}
	defer in.Close()
	return fsutil.CreateAtomicIn(t.root, rel, func(w io.Writer) error {
		_, err := io.Copy(w, blobstore.ContextReader(ctx, in))
		return err
	})
}

// readBack hashes a written file as the stick returns it. The file's pages
// are dropped from the cache first (they are clean after the sync), so the
// bytes come from the device rather than from memory.
func (t *target) readBack(ctx context.Context, rel string, want manifest.Digest, size int64) error {
	f, err := t.root.OpenFile(filepath.FromSlash(rel), os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("read back %s: %w", rel, err)
	}
	defer f.Close()
	unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
	h := sha256.New()
	n, err := io.Copy(progressWriter{h, t}, blobstore.ContextReader(ctx, f))
	if err != nil {
		return fmt.Errorf("read back %s: %w", rel, err)
	}
	if got := manifest.Digest(h.Sum(nil)); n != size || got != want {
		return fmt.Errorf("read back %s: %d bytes with hash %s, not what was written (a failing stick?): %w", rel, n, got, blobstore.ErrMismatch)
	}
	return nil
}

type progressWriter struct {
	h hash.Hash
	t *target
}

func (w progressWriter) Write(p []byte) (int, error) {
	w.h.Write(p)
	w.t.progress(int64(len(p)))
	return len(p), nil
}

// cleanup removes what a failed export wrote, if it got as far as making
// the folder its own, leaving the stamp that says an export failed there.
// On a stick that was pulled out this fails quietly.
func (t *target) cleanup() {
	if t.f != nil {
		t.f.Close()
		t.root.Remove(t.tmp)
	}
	if t.prepared {
		t.clear()
		fsutil.FsyncDir(t.dir)
	}
}

// checkOwner refuses a target folder another user owns, unless told: that
// user could swap its contents while root writes there.
func checkOwner(dir string, anyOwner bool) error {
	if anyOwner {
		return nil
	}
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return err
	}
	if !fsutil.TrustedOwner(st.Uid) {
		return fmt.Errorf("%s is owned by uid %d, who could plant links in it while it is written; export there with --any-owner if that user is trusted", dir, st.Uid)
	}
	return nil
}
