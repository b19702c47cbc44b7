package apply

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"

	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/diff"
	"github.com/peerup/peerup/manifest"
)

// DefaultEncodingBudget bounds the disk a node spends on encodings it keeps
// for its neighbours (SPEC.md §10).
const DefaultEncodingBudget = 256 << 20

// EncodingBudgetMiB is the budget --keep-encodings-mib n (and the config
// key) asks for, in the bytes PullOptions.EncodingBudget and GC take: n
// MiB, 0 keeping nothing, negative no limit. It is the one place that
// reads the setting, so that 0 means the same for pull, gc and daemon.
func EncodingBudgetMiB(n int64) int64 {
	switch {
	case n < 0:
		return -1
	case n == 0:
		return 1 // keep nothing: 0 would be the default
	}
	return n << 20
}

// trimEncodings deletes kept encodings, those of the oldest versions first,
// until what remains fits in budget. An encoding is an object named in one
// of the node's delta indexes and not a file of any version the node holds;
// neighbours that ask for a deleted one fall back to another way.
func (s *Sysroot) trimEncodings(image string, budget int64) error {
	if budget < 0 {
		return nil
	}
	dir := s.repo.Layout().ImageDir(image)
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	type kept struct {
		v    uint64
		d    manifest.Digest
		size int64
	}
	var encs []kept
	var manifests []string
	for _, e := range ents {
		name := e.Name()
		v, deltas, ok := blobstore.VersionFile(name)
		switch {
		case ok && !deltas:
			manifests = append(manifests, filepath.Join(dir, name))
		case ok && deltas:
			// A bad index is skipped: what it names is trimmed as unlisted.
			var these []kept
			good, err := eachStoredEncoding(s.repo, image, v, func(enc *diff.Encoding) {
				these = append(these, kept{v, enc.Digest, enc.Size})
			})
			if err != nil {
				return err
			}
			if good {
				encs = append(encs, these...)
			}
		}
	}
	// Within budget even counting encodings that are also files: nothing
	// to delete, and no manifest need be read (this runs after every pull).
	var held int64
	counted := map[manifest.Digest]bool{}
	for _, e := range encs {
		if !counted[e.d] && s.repo.Has(e.d) {
			counted[e.d] = true
			held += e.size
		}
	}
	if held <= budget {
		return nil
	}
	files := map[manifest.Digest]bool{}
	for _, p := range manifests {
		if err := addFiles(p, files); err != nil {
			return err
		}
	}
	// Newest first: the encodings a neighbour is likeliest to want.
	sort.Slice(encs, func(i, j int) bool { return encs[i].v > encs[j].v })
	var used int64
	seen := map[manifest.Digest]bool{}
	for _, e := range encs {
		if files[e.d] || seen[e.d] || !s.repo.Has(e.d) {
			continue
		}
		seen[e.d] = true
		if used+e.size <= budget {
			used += e.size
			continue
		}
		if err := os.Remove(s.repo.Path(e.d)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

// addFiles adds the file objects of the manifest at path to files, reading
// it as a stream.
func addFiles(path string, files map[manifest.Digest]bool) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	r, err := manifest.NewReader(bufio.NewReader(f))
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	for {
		e, err := r.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if e.Type == manifest.TypeFile {
			files[e.SHA256] = true
		}
	}
}
