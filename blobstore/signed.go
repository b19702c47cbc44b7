package blobstore

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/peerup/peerup/internal/fsutil"
	"github.com/peerup/peerup/manifest"
)

// receivedPrefix names the files Receive makes in staging, which Salvage
// leaves to their owner (it holds the repo's lock, as Salvage's caller does).
const receivedPrefix = "signed-"

// SignedFile is a manifest or a delta index open on disk with its detached
// signature: one received into the repo's staging folder, or one the repo
// stores. Its bytes are never held in memory: they are verified and parsed
// from the file (manifest.Accept, diff.AcceptDeltas), and a received one
// becomes the stored one by rename (AddVersion, AddDeltas).
type SignedFile struct {
	f      *os.File
	size   int64
	sig    []byte
	hash   hash.Hash // while receiving: the bytes are hashed as they arrive
	digest Digest
	hashed bool
	staged bool // in staging, removed by Close unless committed
}

// Receive makes a file in the repo's staging folder and calls fill to write
// into it the signed bytes arriving from a source, capped by fill (see
// ManifestLimit, DeltasLimit); fill returns the detached signature. Close
// the file when done: one not committed is removed.
func (r *Repo) Receive(fill func(w io.Writer) (sig []byte, err error)) (*SignedFile, error) {
	f, err := os.CreateTemp(r.Layout().Staging(), receivedPrefix)
	if err != nil {
		return nil, fmt.Errorf("receive: %w", err)
	}
	sf := &SignedFile{f: f, hash: sha256.New(), staged: true}
	sig, err := fill(sf)
	if err != nil {
		sf.Close()
		return nil, err
	}
	if len(sig) > manifest.MaxSignature {
		sf.Close()
		return nil, fmt.Errorf("receive: signature of %d bytes, more than %d", len(sig), manifest.MaxSignature)
	}
	sf.sig = sig
	sf.digest, sf.hashed, sf.hash = Digest(sf.hash.Sum(nil)), true, nil
	return sf, nil
}

// Write appends to a file being received.
func (sf *SignedFile) Write(p []byte) (int, error) {
	if sf.hash == nil {
		return 0, errors.New("write to a signed file no longer being received")
	}
	n, err := sf.f.Write(p)
	sf.hash.Write(p[:n])
	sf.size += int64(n)
	return n, err
}

// openSigned opens a stored signed file and reads its signature: nothing
// signed is stored without one.
func openSigned(path string) (*SignedFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	sig, err := readCapped(SignatureOf(path), manifest.MaxSignature)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s has no signature: %w", path, err)
	}
	return &SignedFile{f: f, size: fi.Size(), sig: sig}, nil
}

// Path is where the file lies: in staging while received, else in the
// repo.
func (sf *SignedFile) Path() string { return sf.f.Name() }

// readCapped reads a small file whole, refusing one over limit bytes.
func readCapped(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, limit)
	}
	return b, nil
}

// Signed is what manifest.Accept and diff.AcceptDeltas judge: the file, in
// place, and its signature.
func (sf *SignedFile) Signed() manifest.Signed {
	return manifest.Signed{Data: sf.f, Size: sf.size, Sig: sf.sig}
}

// Reader streams the signed bytes from the start; each call is
// independent.
func (sf *SignedFile) Reader() io.Reader { return io.NewSectionReader(sf.f, 0, sf.size) }

// Size is the signed bytes' length.
func (sf *SignedFile) Size() int64 { return sf.size }

// Sig is the detached signature.
func (sf *SignedFile) Sig() []byte { return sf.sig }

// Digest is the SHA-256 of the signed bytes: computed as they arrived for a
// received file, by reading it once for a stored one.
func (sf *SignedFile) Digest(ctx context.Context) (Digest, error) {
	if sf.hashed {
		return sf.digest, nil
	}
	h := sha256.New()
	if _, err := io.Copy(h, ContextReader(ctx, sf.Reader())); err != nil {
		return Digest{}, fmt.Errorf("hash %s: %w", sf.f.Name(), err)
	}
	sf.digest, sf.hashed = Digest(h.Sum(nil)), true
	return sf.digest, nil
}

// commit renames a received file into place at path, durably, beside its
// signature; the SignedFile cannot be read afterwards.
func (sf *SignedFile) commit(path string) error {
	if !sf.staged || sf.hash != nil {
		return fmt.Errorf("commit %s: not a received signed file", path)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	if err := fsutil.WriteAtomic(SignatureOf(path), sf.sig); err != nil {
		return err
	}
	sf.staged = false
	return fsutil.CommitFile(sf.f, path)
}

// Close releases the file, removing a received one not committed.
func (sf *SignedFile) Close() error {
	if sf == nil {
		return nil
	}
	err := sf.f.Close()
	if sf.staged {
		sf.staged = false
		os.Remove(sf.f.Name())
	}
	if errors.Is(err, os.ErrClosed) {
		return nil // committed: CommitFile closed it
	}
	return err
}

// isReceived reports whether a staging entry is a file Receive made.
func isReceived(name string) bool { return strings.HasPrefix(name, receivedPrefix) }
