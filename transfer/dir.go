package transfer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/manifest"
)

// Dir reads a repo from a local folder: a mounted USB stick, or any
// directory holding a repo (SPEC.md §5, §16). A stick is as untrusted as a
// peer on the network, so Dir gives Pull exactly what a Client would — the
// same size limits, and objects only through the batch's hash check — and
// it refuses to follow symlinks or open anything but regular files, so a
// crafted stick cannot make it read outside itself or hang on a fifo.
type Dir struct {
	root string
}

// NewDir returns a source reading the repo in dir. The repo itself is
// looked at only when it is read, so a mount point can be given before a
// stick is in it.
func NewDir(dir string) (*Dir, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("repo folder %q: %w", dir, err)
	}
	return &Dir{root: abs}, nil
}

// String is the folder's path.
func (d *Dir) String() string { return d.root }

// open opens rel, a path inside the repo, for reading: beneath the root, no
// symlinks, a regular file only. Missing files wrap ErrNotFound. The root
// is opened anew each time, so that holding a Dir never keeps a stick busy.
func (d *Dir) open(rel string) (*os.File, error) {
	full := filepath.Join(d.root, filepath.FromSlash(rel))
	root, err := unix.Open(d.root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, d.openErr(full, err)
	}
	fd, err := unix.Openat2(root, filepath.FromSlash(rel), &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_NONBLOCK | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
	unix.Close(root)
	if errors.Is(err, unix.ENOSYS) {
		// Kernels before 5.6: at least the last component is no symlink.
		fd, err = unix.Open(full, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	}
	if err != nil {
		return nil, d.openErr(full, err)
	}
	f := os.NewFile(uintptr(fd), full)
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", full, err)
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%w: %s is not a regular file", ErrPeer, full)
	}
	return f, nil
}

func (d *Dir) openErr(full string, err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%s: %w", full, ErrNotFound)
	case errors.Is(err, unix.ELOOP), errors.Is(err, unix.EXDEV):
		// A symlink, or a path leading out of the repo.
		return fmt.Errorf("%w: %s: symlinks are not followed in a repo folder", ErrPeer, full)
	}
	return fmt.Errorf("open %s: %w", full, err)
}

// readSmall reads a whole small file, refusing more than limit bytes.
func (d *Dir) readSmall(rel string, limit int64) ([]byte, error) {
	f, err := d.open(rel)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	size := int64(-1)
	if fi, err := f.Stat(); err == nil {
		size = fi.Size()
	}
	// The same reader as a peer's body: a file larger than the cap is
	// refused before a byte of it is read, and one that grows while read
	// is cut at the cap.
	b, err := readLimited(f, size, limit)
	if errors.Is(err, errTooLarge) {
		return nil, fmt.Errorf("%w: %s is larger than the limit of %d bytes", ErrPeer, f.Name(), limit)
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", f.Name(), err)
	}
	return b, nil
}

// Index reads the repo's index, after checking the folder holds a repo at
// all: a mount point without a stick in it says so plainly.
func (d *Dir) Index(ctx context.Context) (*blobstore.Index, error) {
	marker, err := d.readSmall(blobstore.Layout{}.Marker(), int64(len(blobstore.MarkerMagic)))
	if errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("%s holds no peerup repo (no %s file): %w", d.root, blobstore.Layout{}.Marker(), ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	if string(marker) != blobstore.MarkerMagic {
		return nil, fmt.Errorf("%w: %s/%s says %.30q, want %q", ErrPeer, d.root, blobstore.Layout{}.Marker(), marker, blobstore.MarkerMagic)
	}
	b, err := d.readSmall(blobstore.Layout{}.Index(), blobstore.MaxIndex)
	if err != nil {
		return nil, err
	}
	ix, err := blobstore.ParseIndex(b)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrPeer, d.root, err)
	}
	return ix, nil
}

// Manifest streams a version's manifest, of at most limit bytes, to w and
// returns its signature, unverified.
func (d *Dir) Manifest(ctx context.Context, image string, v uint64, limit int64, w io.Writer) (sig []byte, err error) {
	m := blobstore.Layout{}.Manifest(image, v)
	return d.pair(ctx, m, blobstore.SignatureOf(m), limit, w)
}

// ManifestDelta is Client.ManifestDelta from a folder.
func (d *Dir) ManifestDelta(ctx context.Context, image string, v, from uint64, limit int64, w io.Writer) (sig []byte, err error) {
	l := blobstore.Layout{}
	return d.pair(ctx, l.ManifestDelta(image, v, from), l.Signature(image, v), limit, w)
}

// PackedDeltas is Client.PackedDeltas from a folder.
func (d *Dir) PackedDeltas(ctx context.Context, image string, v uint64, limit int64, w io.Writer) (sig []byte, err error) {
	l := blobstore.Layout{}
	return d.pair(ctx, l.PackedDeltas(image, v), l.DeltasSignature(image, v), limit, w)
}

// Deltas streams a version's delta index, of at most limit bytes, to w and
// returns its signature, unverified; a folder without one answers with an
// error wrapping ErrNotFound.
func (d *Dir) Deltas(ctx context.Context, image string, v uint64, limit int64, w io.Writer) (sig []byte, err error) {
	dl := blobstore.Layout{}.Deltas(image, v)
	return d.pair(ctx, dl, blobstore.SignatureOf(dl), limit, w)
}

// pair streams a file to w and reads the detached signature at sigRel.
func (d *Dir) pair(ctx context.Context, rel, sigRel string, limit int64, w io.Writer) (sig []byte, err error) {
	f, err := d.open(rel)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	size := int64(-1)
	if fi, err := f.Stat(); err == nil {
		size = fi.Size()
	}
	// The same cap as a peer's body: a file larger than the cap is refused
	// before a byte of it is read, and one that grows while read is cut.
	err = copyLimited(w, blobstore.ContextReader(ctx, f), size, limit)
	if errors.Is(err, errTooLarge) {
		return nil, fmt.Errorf("%w: %s is larger than the limit of %d bytes", ErrPeer, f.Name(), limit)
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", f.Name(), err)
	}
	return d.readSmall(sigRel, manifest.MaxSignature)
}

// List is Client.List from a folder.
func (d *Dir) List(ctx context.Context, k blobstore.ListKind, image string) (data, sig []byte, err error) {
	w := blobstore.Layout{}.List(k, image)
	if data, err = d.readSmall(w, k.Max()); err != nil {
		return nil, nil, err
	}
	if sig, err = d.readSmall(blobstore.SignatureOf(w), manifest.MaxSignature); err != nil {
		return nil, nil, err
	}
	return data, sig, nil
}

// FetchObject streams object dg into the batch, which checks its size and
// hash exactly as for a peer's.
func (d *Dir) FetchObject(ctx context.Context, b *blobstore.Batch, dg manifest.Digest, size int64) error {
	open := func(ctx context.Context, offset int64) (io.ReadCloser, int64, error) {
		f, err := d.open(blobstore.Layout{}.Object(dg))
		if err != nil {
			return nil, 0, err
		}
		fi, err := f.Stat()
		if err == nil && fi.Size() > size {
			err = fmt.Errorf("%w: object %s: %s holds %d bytes, manifest says %d", ErrPeer, dg, d.root, fi.Size(), size)
		}
		if err == nil && offset > 0 {
			_, err = f.Seek(offset, io.SeekStart)
		}
		if err != nil {
			f.Close()
			return nil, 0, err
		}
		return f, offset, nil
	}
	return blame(b.PutFrom(ctx, dg, size, open), d.root)
}

// blame marks content errors as the source's fault, naming it, so that a
// daemon stops using it; local failures pass through unchanged.
func blame(err error, src string) error {
	if errors.Is(err, blobstore.ErrMismatch) || errors.Is(err, blobstore.ErrTooLong) || errors.Is(err, blobstore.ErrTooShort) {
		return fmt.Errorf("%w: from %s: %w", ErrPeer, src, err)
	}
	return err
}
