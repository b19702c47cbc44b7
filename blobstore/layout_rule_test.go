package blobstore_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestNoRepoPathOutsideBlobstore enforces that Layout is the one place that
// spells a repo's paths: no non-test Go file of another package holds a
// string literal naming a repo file (SPEC.md §5). A package that needs a
// path asks blobstore.Layout for it.
func TestNoRepoPathOutsideBlobstore(t *testing.T) {
	exact := map[string]bool{"index": true, "peerup-repo": true, "images": true, "seed.lock": true, "staging": true}
	parts := []string{"images/", "objects/", ".manifest", ".deltas"}
	fset := token.NewFileSet()
	err := filepath.WalkDir("..", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			switch d.Name() {
			case "blobstore", "testdata", ".git", "dist":
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, p, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			if _, ok := n.(*ast.ImportSpec); ok {
				return false
			}
			lit, ok := n.(*ast.BasicLit)
			if !ok || lit.Kind != token.STRING {
				return true
			}
			s, err := strconv.Unquote(lit.Value)
			if err != nil {
				return true
			}
			bad := exact[s]
			for _, part := range parts {
				bad = bad || strings.Contains(s, part)
			}
			if bad {
				t.Errorf("%s: %q spells a repo path; use blobstore.Layout", fset.Position(lit.Pos()), s)
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
