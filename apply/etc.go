package apply

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/peerup/peerup/manifest"
)

// etcDir is the node's /etc inside a tree.
const etcDir = "etc"

// isEtc reports whether a tree path belongs to the node's /etc. The booted
// system writes there (hostname, users, machine-id), so every tree has its
// own copy, never linked into the store, that an update merges the node's
// edits into and verify does not hold to the manifest (SPEC.md §6, §7, §15).
func isEtc(path string) bool {
	return path == etcDir || strings.HasPrefix(path, etcDir+"/")
}

// under reports whether path lies strictly inside directory dir.
func under(path, dir string) bool {
	return len(path) > len(dir) && path[len(dir)] == '/' && strings.HasPrefix(path, dir)
}

// step is one entry to build: the image's (from == "") or the node's own,
// copied from the path from in the current tree.
type step struct {
	e    *manifest.Entry
	from string
}

// etcMerge carries the node's own changes to /etc into the tree being built:
// a 3-way merge of the current version's manifest (base), the current tree's
// etc/ as it is on disk (local) and the manifest being built (new). Path by
// path, where the node left base as it was the new image's entry is taken;
// whatever the node changed, added or deleted stays as the node has it,
// whatever the image did (SPEC.md §7 step 5). It decides from the manifests
// and the disk and writes nothing itself: the builder writes only inside the
// temporary tree, so a crash leaves nothing to undo and a rerun decides the
// same.
type etcMerge struct {
	cur   string            // the current tree; "" on a first install
	local string            // SYSROOT/local: its files win over everything
	base  []*manifest.Entry // base's etc/ entries, in manifest order
	node  []manifest.Entry  // the current tree's etc/, in manifest order
	bi    int               // next base entry
	ni    int               // next node entry
	// skip is a directory of the new image the node replaced or deleted:
	// the image's entries inside it are not built, only compared with
	// base's (skipChanged), so that a change of the image's there is
	// reported.
	skip        string
	skipChanged bool
	out         []step
	// kept lists the paths changed on both sides, differently, where the
	// node's version was kept.
	kept []string
}

// newEtcMerge reads what the merge needs: base's etc/ entries (streamed; the
// rest of the manifest is not kept) and the current tree's etc/. With no
// current version there is nothing to merge and the image's entries are
// built as they are.
func (s *Sysroot) newEtcMerge(ctx context.Context, image string, current uint64) (*etcMerge, error) {
	m := &etcMerge{local: s.LocalDir()}
	if current == 0 {
		return m, nil
	}
	mf, err := s.repo.OpenVersion(image, current)
	if err != nil {
		return nil, fmt.Errorf("merge /etc: manifest of the current version %d: %w", current, err)
	}
	defer mf.Close()
	if m.base, err = etcEntries(mf.Reader()); err != nil {
		return nil, fmt.Errorf("merge /etc: manifest of the current version %d: %w", current, err)
	}
	m.cur = s.TreePath(current)
	if m.node, err = scanEtc(ctx, m.cur); err != nil {
		return nil, fmt.Errorf("merge /etc: current tree: %w", err)
	}
	return m, nil
}

// etcEntries streams a manifest and keeps only its etc/ entries, which sort
// together: it stops reading once past them.
func etcEntries(mr io.Reader) ([]*manifest.Entry, error) {
	r, err := manifest.NewReader(mr)
	if err != nil {
		return nil, err
	}
	var out []*manifest.Entry
	for {
		e, err := r.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		if isEtc(e.Path) {
			out = append(out, e)
		} else if manifest.ComparePaths(e.Path, etcDir) > 0 {
			return out, nil
		}
	}
}

// scanEtc lists a tree's etc/ as manifest entries with tree paths (file
// digests left zero: hashed only when needed). A tree without etc/ has none.
func scanEtc(ctx context.Context, tree string) ([]manifest.Entry, error) {
	if _, err := os.Lstat(tree); err != nil {
		return nil, err
	}
	root := filepath.Join(tree, etcDir)
	if _, err := os.Lstat(root); errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	ents, err := manifest.Scan(ctx, root)
	if err != nil {
		return nil, err
	}
	for i := range ents {
		if ents[i].Path == "." {
			ents[i].Path = etcDir
		} else {
			ents[i].Path = etcDir + "/" + ents[i].Path
		}
	}
	return ents, nil
}

// feed takes the next entry of the new manifest (nil at its end) and returns
// what to build, in manifest order, up to and including it: the entries only
// base or the node have that sort before it, then its own outcome.
func (m *etcMerge) feed(n *manifest.Entry) ([]step, error) {
	m.out = m.out[:0]
	if m.skip != "" {
		if n != nil && under(n.Path, m.skip) {
			m.skipped(n)
			return m.out, nil
		}
		m.endSkip()
	}
	for {
		p, ok := m.pending()
		if !ok || n != nil && manifest.ComparePaths(p, n.Path) >= 0 {
			break
		}
		if err := m.decide(p, nil); err != nil {
			return nil, err
		}
	}
	switch {
	case n == nil:
	case !isEtc(n.Path):
		m.out = append(m.out, step{e: n})
	default:
		if err := m.decide(n.Path, n); err != nil {
			return nil, err
		}
	}
	return m.out, nil
}

// pending is the next path base or the node has, not yet decided.
func (m *etcMerge) pending() (string, bool) {
	var p string
	if m.bi < len(m.base) {
		p = m.base[m.bi].Path
	}
	if m.ni < len(m.node) {
		if np := m.node[m.ni].Path; p == "" || manifest.ComparePaths(np, p) < 0 {
			p = np
		}
	}
	return p, p != ""
}

// decide builds path p: n is the new image's entry (nil if it has none).
func (m *etcMerge) decide(p string, n *manifest.Entry) error {
	var b, l *manifest.Entry
	if m.bi < len(m.base) && m.base[m.bi].Path == p {
		b = m.base[m.bi]
		m.bi++
	}
	if m.ni < len(m.node) && m.node[m.ni].Path == p {
		l = &m.node[m.ni]
		m.ni++
	}
	if n != nil {
		if _, ok := override(m.local, n); ok {
			// SYSROOT/local decides this path on every tree (the builder
			// copies it); what the node had there is replaced.
			m.out = append(m.out, step{e: n})
			m.passBelow(p)
			return nil
		}
	}
	unchanged, err := m.sameAsNode(l, b)
	if err != nil {
		return err
	}
	if unchanged && l != nil && l.Type == manifest.TypeDir && (n == nil || n.Type != manifest.TypeDir) {
		// The image removes or replaces a directory: it stays the node's
		// if the node changed anything inside it.
		if unchanged, err = m.subtreeUnchanged(p); err != nil {
			return err
		}
	}
	if unchanged {
		if n != nil {
			m.out = append(m.out, step{e: n})
		}
		if n == nil || n.Type != manifest.TypeDir {
			m.passBelow(p) // all as base had it: it follows the image out
		}
		return nil
	}
	// The node changed, added or deleted p: its state wins.
	if !same(n, b) {
		agree, err := m.sameAsNode(l, n)
		if err != nil {
			return err
		}
		if !agree {
			m.kept = append(m.kept, p)
		}
	}
	switch {
	case l == nil: // deleted by the node: stays deleted
		m.dropBelow(p, n)
	case l.Type == manifest.TypeDir && n != nil && n.Type == manifest.TypeDir:
		// Both have a directory: the node's metadata, the contents merged
		// path by path.
		m.out = append(m.out, m.nodeStep(l))
	case l.Type == manifest.TypeDir:
		m.out = append(m.out, m.nodeStep(l))
		for m.ni < len(m.node) && under(m.node[m.ni].Path, p) {
			m.out = append(m.out, m.nodeStep(&m.node[m.ni]))
			m.ni++
		}
		m.passBelow(p)
	default:
		m.out = append(m.out, m.nodeStep(l))
		m.dropBelow(p, n)
	}
	return nil
}

// dropBelow passes over what is inside p, which the node deleted or made a
// non-directory: base's and the node's entries now, the new image's (n is
// its entry at p) as they come.
func (m *etcMerge) dropBelow(p string, n *manifest.Entry) {
	if n != nil && n.Type == manifest.TypeDir {
		m.skip, m.skipChanged = p, false
		return
	}
	m.passBelow(p)
}

// skipped compares an image entry inside skip with base's, passing over
// base's entries before it.
func (m *etcMerge) skipped(n *manifest.Entry) {
	for m.bi < len(m.base) && under(m.base[m.bi].Path, m.skip) {
		b := m.base[m.bi]
		c := manifest.ComparePaths(b.Path, n.Path)
		if c > 0 {
			break
		}
		m.bi++
		if c == 0 {
			m.skipChanged = m.skipChanged || !same(n, b)
			return
		}
		m.skipChanged = true // the image dropped it
	}
	m.skipChanged = true // the image added it
}

// endSkip closes skip once the image's entries inside it are over.
func (m *etcMerge) endSkip() {
	for m.bi < len(m.base) && under(m.base[m.bi].Path, m.skip) {
		m.bi++
		m.skipChanged = true
	}
	if m.skipChanged && (len(m.kept) == 0 || m.kept[len(m.kept)-1] != m.skip) {
		m.kept = append(m.kept, m.skip)
	}
	m.skip, m.skipChanged = "", false
}

func (m *etcMerge) nodeStep(l *manifest.Entry) step {
	return step{e: l, from: filepath.Join(m.cur, filepath.FromSlash(l.Path))}
}

// passBelow passes over base's and the node's entries inside p.
func (m *etcMerge) passBelow(p string) {
	for m.bi < len(m.base) && under(m.base[m.bi].Path, p) {
		m.bi++
	}
	for m.ni < len(m.node) && under(m.node[m.ni].Path, p) {
		m.ni++
	}
}

// subtreeUnchanged reports whether everything inside directory p is as base
// has it: nothing changed, added or deleted by the node.
func (m *etcMerge) subtreeUnchanged(p string) (bool, error) {
	bi, ni := m.bi, m.ni
	for {
		var b, l *manifest.Entry
		if bi < len(m.base) && under(m.base[bi].Path, p) {
			b = m.base[bi]
		}
		if ni < len(m.node) && under(m.node[ni].Path, p) {
			l = &m.node[ni]
		}
		switch {
		case b == nil && l == nil:
			return true, nil
		case b == nil || l != nil && manifest.ComparePaths(l.Path, b.Path) < 0:
			b = nil
			ni++
		case l == nil || manifest.ComparePaths(l.Path, b.Path) > 0:
			l = nil
			bi++
		default:
			bi++
			ni++
		}
		if ok, err := m.sameAsNode(l, b); err != nil || !ok {
			return false, err
		}
	}
}

// sameAsNode compares the node's entry l with a manifest's (nil: absent),
// hashing l's bytes only when everything else matches.
func (m *etcMerge) sameAsNode(l, e *manifest.Entry) (bool, error) {
	if l == nil || e == nil {
		return l == nil && e == nil, nil
	}
	if l.Type == manifest.TypeFile && e.Type == manifest.TypeFile && l.Size == e.Size && l.SHA256.IsZero() {
		d, err := hashPath(filepath.Join(m.cur, filepath.FromSlash(l.Path)))
		if err != nil {
			return false, fmt.Errorf("merge /etc: %s: %w", l.Path, err)
		}
		l.SHA256 = d
	}
	return same(l, e), nil
}

// same is the merge's notion of an unchanged entry (nil: absent): type,
// mode, owner, and for files size and SHA-256, for symlinks the target, for
// devices the numbers. Directories and fifos compare by mode and owner.
func same(a, b *manifest.Entry) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	if a.Type != b.Type || a.Mode != b.Mode || a.UID != b.UID || a.GID != b.GID {
		return false
	}
	switch a.Type {
	case manifest.TypeFile:
		return a.Size == b.Size && a.SHA256 == b.SHA256
	case manifest.TypeSymlink:
		return a.Target == b.Target
	case manifest.TypeChar, manifest.TypeBlock:
		return a.Major == b.Major && a.Minor == b.Minor
	}
	return true
}

func hashPath(p string) (manifest.Digest, error) {
	var d manifest.Digest
	f, err := os.Open(p)
	if err != nil {
		return d, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return d, err
	}
	h.Sum(d[:0])
	return d, nil
}

// override returns the node's own version of a file in SYSROOT/local, which
// replaces the image's at that path in every tree built here. Only paths
// the image has as regular files are replaced.
func override(localDir string, e *manifest.Entry) (string, bool) {
	if localDir == "" || e.Type != manifest.TypeFile {
		return "", false
	}
	p := filepath.Join(localDir, filepath.FromSlash(e.Path))
	return p, isRegular(p)
}
