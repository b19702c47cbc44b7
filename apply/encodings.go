package apply

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"peerup/diff"
	"peerup/manifest"
)

// DefaultEncodingBudget bounds the disk a node spends on encodings it keeps
// for its neighbours (SPEC.md §10).
const DefaultEncodingBudget = 256 << 20

// trimEncodings deletes kept encodings, those of the oldest versions first,
// until what remains fits in budget. An encoding is an object named in one
// of the node's delta indexes and not a file of any version the node holds;
// neighbours that ask for a deleted one fall back to another way.
func (s *Sysroot) trimEncodings(image string, budget int64) error {
	if budget < 0 {
		return nil
	}
	dir := filepath.Join(s.repo.Dir(), "images", image)
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
	files := map[manifest.Digest]bool{}
	var encs []kept
	for _, e := range ents {
		name := e.Name()
		switch {
		case strings.HasSuffix(name, ".manifest"):
			b, err := os.ReadFile(filepath.Join(dir, name))
			if err != nil {
				return err
			}
			m, err := manifest.Parse(b)
			if err != nil {
				return err
			}
			for i := range m.Entries {
				if m.Entries[i].Type == manifest.TypeFile {
					files[m.Entries[i].SHA256] = true
				}
			}
		case strings.HasSuffix(name, ".deltas"):
			v, err := strconv.ParseUint(strings.TrimSuffix(name, ".deltas"), 10, 64)
			if err != nil {
				continue
			}
			b, err := os.ReadFile(filepath.Join(dir, name))
			if err != nil {
				return err
			}
			x, err := diff.ParseDeltaIndex(b)
			if err != nil {
				continue
			}
			for _, enc := range x.Encodings {
				encs = append(encs, kept{v, enc.Digest, enc.Size})
			}
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
