package apply

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/diff"
	"github.com/peerup/peerup/manifest"
)

// GCResult says what gc removed.
type GCResult struct {
	Versions []uint64 // versions dropped from the node's repo
	Objects  int
	Files    int
	Bytes    int64
}

// GC removes everything the node no longer needs: trees no link names,
// versions other than current, previous and staged (their manifests, delta
// indexes and index entries), objects and checkout files no kept version
// uses, encodings beyond the kept versions' (within budget), and staging
// debris. It holds the sysroot lock, so it is safe beside a running daemon,
// which takes the same lock for every change.
func (s *Sysroot) GC(encodingBudget int64) (*GCResult, error) {
	unlock, err := s.Lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := s.cleanup(); err != nil {
		return nil, err
	}
	if err := s.repo.CleanStaging(); err != nil {
		return nil, err
	}
	st, err := s.Status()
	if err != nil {
		return nil, err
	}
	res := &GCResult{}
	if st.Image == "" {
		return res, nil
	}
	keep := map[uint64]bool{}
	for _, v := range []uint64{st.Current, st.Previous, st.Staged} {
		if v != 0 {
			keep[v] = true
		}
	}
	ix, err := s.repo.ReadIndex()
	if err != nil {
		return nil, err
	}
	for _, e := range ix.Entries {
		if e.Image == st.Image && !keep[e.Version] {
			s.at(fmt.Sprintf("gc version %d", e.Version))
			if err := s.repo.RemoveVersion(e.Image, e.Version); err != nil {
				return nil, err
			}
			res.Versions = append(res.Versions, e.Version)
		}
	}
	// What the kept versions use: their file objects and checkout files.
	liveObjects := map[manifest.Digest]bool{}
	liveFiles := map[manifest.Digest]bool{}
	for v := range keep {
		err := eachVersionEntry(s.repo, st.Image, v, func(e *manifest.Entry) error {
			if e.Type == manifest.TypeFile {
				liveObjects[e.SHA256] = true
				liveFiles[blobstore.FileID(e.SHA256, blobstore.MetaOf(e))] = true
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	// Encodings of the kept versions stay too, within the budget.
	if err := s.trimEncodings(st.Image, encodingBudget); err != nil {
		return nil, err
	}
	for v := range keep {
		// Encodings listed before a bad line of an index stay live too:
		// keeping too much is the safe side.
		if _, err := eachStoredEncoding(s.repo, st.Image, v, func(enc *diff.Encoding) { liveObjects[enc.Digest] = true }); err != nil {
			continue
		}
	}
	sweep := func(dir string, live map[manifest.Digest]bool, count *int, sized bool) error {
		return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			id, err := manifest.ParseDigest(d.Name())
			if err != nil || live[id] {
				return nil
			}
			// Files share inodes with objects: count bytes once, on objects.
			if fi, err := d.Info(); err == nil && sized {
				res.Bytes += fi.Size()
			}
			*count++
			s.at("gc " + d.Name())
			if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("gc: %w", err)
			}
			return nil
		})
	}
	if err := sweep(s.repo.Layout().Files(), liveFiles, &res.Files, false); err != nil {
		return nil, err
	}
	if err := sweep(s.repo.Layout().Objects(), liveObjects, &res.Objects, true); err != nil {
		return nil, err
	}
	return res, nil
}
