package diff

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/manifest"
)

// A laptop's update is mostly metadata when the update is small: the new
// manifest and the delta index are sent whole, and hex digests dominate
// both. So a publisher also writes, beside version v (SPEC.md §10
// "Metadata on the wire"):
//   - for each of the Depth listed versions b before it, v's manifest as a
//     manifest delta from b's (manifest.MakeDelta), zstd-compressed;
//   - v's delta index, zstd-compressed.
//
// Neither is signed: what a node rebuilds from them is checked against the
// signature of the file it rebuilds. Any node holding both manifests could
// make them again.

// DefaultDepth is how many earlier versions encodings and manifest deltas
// are made against when GenerateOptions.Depth is 0.
const DefaultDepth = 3

// Derive writes version v's derived files: its packed delta index, if it
// has a delta index, and its manifest deltas from the depth listed versions
// before it (0: DefaultDepth). Version v need not be listed yet.
func Derive(ctx context.Context, repo *blobstore.Repo, image string, v uint64, depth int) error {
	if depth <= 0 {
		depth = DefaultDepth
	}
	lay := repo.Layout()
	if data, err := os.ReadFile(lay.Deltas(image, v)); err == nil {
		if err := pack(repo, lay.PackedDeltas(image, v), data); err != nil {
			return err
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("derive %s v%d: %w", image, v, err)
	}
	ix, err := repo.ReadIndex()
	if err != nil {
		return err
	}
	target, err := os.ReadFile(lay.Manifest(image, v))
	if err != nil {
		return fmt.Errorf("derive %s v%d: %w", image, v, err)
	}
	n := 0
	for b := v - 1; b >= 1 && n < depth; b-- {
		if err := ctx.Err(); err != nil {
			return err
		}
		if _, ok := ix.Find(image, b); !ok {
			continue
		}
		n++
		base, err := os.ReadFile(lay.Manifest(image, b))
		if err != nil {
			return fmt.Errorf("derive %s v%d: %w", image, v, err)
		}
		var d bytes.Buffer
		if err := manifest.MakeDelta(&d, base, target); err != nil {
			return fmt.Errorf("derive %s v%d from v%d: %w", image, v, b, err)
		}
		if err := pack(repo, lay.ManifestDelta(image, v, b), d.Bytes()); err != nil {
			return err
		}
	}
	return nil
}

func pack(repo *blobstore.Repo, path string, data []byte) error {
	z, err := EncodeZstd(data)
	if err != nil {
		return err
	}
	return repo.AddDerived(path, z)
}

// RebuildManifest decompresses a packed manifest delta read from packed and
// applies it to base, streaming the manifest it rebuilds to w; limit bounds
// the output (see manifest.ApplyDelta for what it refuses). It holds one
// zstd window (at most 8 MiB) and a line of each file.
func (d *Decoder) RebuildManifest(ctx context.Context, base, packed io.Reader, w io.Writer, limit int64) error {
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := d.zstdTo(ctx, packed, nil, zstdWindow(limit), pw)
		pw.CloseWithError(err)
		done <- err
	}()
	_, err := manifest.ApplyDelta(base, pr, w, limit)
	pr.CloseWithError(errors.New("manifest delta: stopped reading"))
	if zerr := <-done; zerr != nil && err == nil {
		err = zerr
	}
	return err
}

// Unpack decompresses a packed delta index (or any packed file) from packed
// to w, refusing more than limit bytes of output.
func (d *Decoder) Unpack(ctx context.Context, packed io.Reader, w io.Writer, limit int64) error {
	return d.zstdTo(ctx, packed, nil, zstdWindow(limit), &limitWriter{w: w, limit: limit})
}
