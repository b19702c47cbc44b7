package diff_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"peerup/blobstore"
	"peerup/diff"
	"peerup/manifest"
)

// TestPublishMakesEncodingsWhenAsked: a version gets encodings only when
// Deltas asks and there is an earlier version, and Published hears of the
// version before they are made.
func TestPublishMakesEncodingsWhenAsked(t *testing.T) {
	e, err := manifest.GenerateKey("fleet")
	if err != nil {
		t.Fatal(err)
	}
	signer := manifest.NewSigner(e)
	repo, err := blobstore.OpenRepo(filepath.Join(t.TempDir(), "repo"))
	if err != nil {
		t.Fatal(err)
	}
	tree := t.TempDir()
	tests := []struct {
		deltas *diff.GenerateOptions
		want   bool // encodings made
	}{
		{&diff.GenerateOptions{Depth: 2}, false}, // v1: nothing earlier
		{&diff.GenerateOptions{Depth: 2}, true},
		{nil, false},
	}
	for i, tc := range tests {
		v := uint64(i + 1)
		t.Run(fmt.Sprintf("v%d", v), func(t *testing.T) {
			// A file big enough to be worth a patch, changed a little each time.
			body := strings.Repeat("the same long line of a library\n", 4096) + fmt.Sprintf("v%d\n", v)
			if err := os.WriteFile(filepath.Join(tree, "lib.so"), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
			var heard uint64
			res, err := diff.Publish(context.Background(), repo, tree, diff.PublishOptions{
				PublishOptions: blobstore.PublishOptions{Image: "school-laptop", Signer: signer},
				Deltas:         tc.deltas,
				Published:      func(p *blobstore.Published) { heard = p.Header.Version },
			})
			if err != nil {
				t.Fatal(err)
			}
			if res.Header.Version != v || heard != v {
				t.Errorf("published version %d, Published heard %d, want %d", res.Header.Version, heard, v)
			}
			if got := res.Deltas != nil && res.Deltas.Encodings > 0; got != tc.want {
				t.Errorf("encodings made: %v (%+v), want %v", got, res.Deltas, tc.want)
			}
		})
	}
}
