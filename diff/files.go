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
	if err := writeFileAtomic(patchPath, 0o644, func(w io.Writer) error { _, err := w.Write(patch); return err }); err != nil {
		return wrap(err)
	}
	return nil
}

// ApplyFiles applies the BSDIFF40 patch at patchPath (from MakeFiles or
// Debian's bsdiff) to the file at oldPath and writes newPath, whole or not
// at all, with oldPath's permission bits (a patched program stays
// executable). With no manifest to declare it, the new size comes from the
// patch's header and is held to MaxPatchOutput. Patch streams: the output
// goes to a temporary file beside newPath that is renamed into place only
// if the whole patch applies.
func ApplyFiles(oldPath, patchPath, newPath string) error {
	wrap := func(err error) error { return fmt.Errorf("diff: apply %s to %s: %w", patchPath, oldPath, err) }
	patch, patchLen, err := openPatchFile(patchPath)
	if err != nil {
		return wrap(err)
	}
	defer patch.Close()
	h, err := readHeader(patch, patchLen)
	if err != nil {
		return wrap(err)
	}
	if err := checkSize(h.newSize); err != nil {
		return wrap(fmt.Errorf("patch header: %w", err))
	}
	old, err := os.Open(oldPath)
	if err != nil {
		return wrap(err)
	}
	defer old.Close()
	fi, err := old.Stat()
	if err != nil {
		return wrap(err)
	}
	err = writeFileAtomic(newPath, fi.Mode().Perm(), func(w io.Writer) error {
		return h.apply(context.Background(), old, fi.Size(), patch, w, bzip2Streams)
	})
	if err != nil {
		return wrap(err)
	}
	return nil
}

// maxPatchFile bounds the patch files ApplyFiles reads. A patch's three
// bzip2 streams hold at most its output's bytes, 24 control bytes per
// triple, and bzip2's sub-percent overhead on data it cannot compress, so
// twice the largest output is generous.
const maxPatchFile = 2 * MaxPatchOutput

// openPatchFile opens a patch file, refusing one too large to be a patch,
// since the user may have named the wrong file, and one that is not a
// regular file, whose length ReadAt could not rely on.
func openPatchFile(path string) (*os.File, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	fi, err := f.Stat()
	switch {
	case err != nil:
	case !fi.Mode().IsRegular():
		err = fmt.Errorf("%s is not a regular file", path)
	case fi.Size() > maxPatchFile:
		err = fmt.Errorf("%s is over %d bytes, too large to be a patch: %w", path, maxPatchFile, ErrTooLarge)
	}
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	return f, fi.Size(), nil
}

// writeFileAtomic has write fill a temporary file beside path and renames
// it into place, so that readers and a failure mid-way see either the old
// state or the whole new file, never a part.
func writeFileAtomic(path string, perm fs.FileMode, write func(io.Writer) error) (err error) {
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
	if err = write(tmp); err != nil {
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
