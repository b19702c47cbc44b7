package diff

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// MakeFiles writes a BSDIFF40 patch that turns the file at oldPath into the
// one at newPath, as Debian's bsdiff does. The patch appears at patchPath
// whole or not at all.
func MakeFiles(ctx context.Context, oldPath, newPath, patchPath string) error {
	wrap := func(err error) error { return fmt.Errorf("diff: make %s: %w", patchPath, err) }
	// Check the size first: reading a file the patch could not be applied
	// to would only waste memory.
	if fi, err := os.Stat(newPath); err != nil {
		return wrap(err)
	} else if fi.Size() > MaxPatchOutput {
		return wrap(fmt.Errorf("%s is %d bytes, over the %d-byte limit: %w", newPath, fi.Size(), MaxPatchOutput, ErrTooLarge))
	}
	old, err := os.ReadFile(oldPath)
	if err != nil {
		return wrap(err)
	}
	nw, err := os.ReadFile(newPath)
	if err != nil {
		return wrap(err)
	}
	patch, err := Make(ctx, old, nw)
	if err != nil {
		return wrap(err)
	}
	if err := writeFileAtomic(patchPath, patch, 0o644); err != nil {
		return wrap(err)
	}
	return nil
}

// ApplyFiles applies the BSDIFF40 patch at patchPath (from MakeFiles or
// Debian's bsdiff) to the file at oldPath and writes newPath, whole or not
// at all, with oldPath's permission bits (a patched program stays
// executable). With no manifest to declare it, the new size comes from the
// patch's header and is held to MaxPatchOutput; the patch is checked as
// Apply checks it before any output is written.
func ApplyFiles(oldPath, patchPath, newPath string) error {
	wrap := func(err error) error { return fmt.Errorf("diff: apply %s to %s: %w", patchPath, oldPath, err) }
	patch, err := readPatchFile(patchPath)
	if err != nil {
		return wrap(err)
	}
	h, err := parseHeader(patch)
	if err != nil {
		return wrap(err)
	}
	if err := checkSize(h.newSize); err != nil {
		return wrap(fmt.Errorf("patch header: %w", err))
	}
	fi, err := os.Stat(oldPath)
	if err != nil {
		return wrap(err)
	}
	old, err := os.ReadFile(oldPath)
	if err != nil {
		return wrap(err)
	}
	out, err := apply(old, patch, h)
	if err != nil {
		return wrap(err)
	}
	if err := writeFileAtomic(newPath, out, fi.Mode().Perm()); err != nil {
		return wrap(err)
	}
	return nil
}

// maxPatchFile bounds the patch files ApplyFiles reads. A patch's three
// bzip2 streams hold at most its output's bytes, 24 control bytes per
// triple, and bzip2's sub-percent overhead on data it cannot compress, so
// twice the largest output is generous.
const maxPatchFile = 2 * MaxPatchOutput

// readPatchFile reads a patch file, refusing one too large to be a patch
// before reading it, since the user may have named the wrong file.
func readPatchFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	tooLarge := fmt.Errorf("%s is over %d bytes, too large to be a patch: %w", path, maxPatchFile, ErrTooLarge)
	if fi, err := f.Stat(); err != nil {
		return nil, err
	} else if fi.Size() > maxPatchFile {
		return nil, tooLarge
	}
	// The limit again, for files that grow and for pipes.
	b, err := io.ReadAll(io.LimitReader(f, maxPatchFile+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxPatchFile {
		return nil, tooLarge
	}
	return b, nil
}

// writeFileAtomic writes data to a temporary file beside path and renames
// it into place, so that readers and a failure mid-way see either the old
// state or the whole new file, never a part.
func writeFileAtomic(path string, data []byte, perm fs.FileMode) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err = tmp.Write(data); err != nil {
		return err
	}
	if err = tmp.Chmod(perm); err != nil {
		return err
	}
	// Sync before rename: after a crash the name must not point at a file
	// whose data never reached the disk.
	if err = tmp.Sync(); err != nil {
		return err
	}
	if err = tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
