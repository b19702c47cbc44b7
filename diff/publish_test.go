package diff_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/diff"
	"github.com/peerup/peerup/manifest"
	"github.com/peerup/peerup/transfer"
)

// TestPublishMakesEncodingsWhenAsked: a version gets encodings only when
// Deltas asks and there is an earlier version, and Stored hears of the
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
				PublishOptions: blobstore.PublishOptions{Image: "school-laptop", Signer: signer, AllowSame: true},
				Deltas:         tc.deltas,
				Stored:         func(p *blobstore.Published) { heard = p.Header.Version },
			})
			if err != nil {
				t.Fatal(err)
			}
			if res.Header.Version != v || heard != v {
				t.Errorf("published version %d, Stored heard %d, want %d", res.Header.Version, heard, v)
			}
			if got := res.Deltas != nil && res.Deltas.Encodings > 0; got != tc.want {
				t.Errorf("encodings made: %v (%+v), want %v", got, res.Deltas, tc.want)
			}
		})
	}
}

// TestPublishListsVersionLast: until the index lists a version, which
// happens after its delta index and encodings are in, the repo serves (over
// HTTP, as a laptop or a seed reads it) only what it held before; a publish
// that fails before that point leaves no trace of the version.
func TestPublishListsVersionLast(t *testing.T) {
	tests := []struct {
		name   string
		cancel bool // at "stored": Generate fails, so nothing is listed
		listed bool
		points []string // the fault points reached
	}{
		{"paused before listing", false, true, []string{"stored", "list"}},
		{"cancelled while encoding", true, false, []string{"stored"}},
	}
	e, err := manifest.GenerateKey("fleet")
	if err != nil {
		t.Fatal(err)
	}
	signer := manifest.NewSigner(e)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			repo, err := blobstore.OpenRepo(filepath.Join(t.TempDir(), "repo"))
			if err != nil {
				t.Fatal(err)
			}
			srv := httptest.NewServer(transfer.NewHandler(repo.Dir(), nil))
			defer srv.Close()
			cl, err := transfer.NewClient(srv.URL+"/", nil)
			if err != nil {
				t.Fatal(err)
			}
			tree := t.TempDir()
			lay := repo.Layout()
			served := func() []uint64 {
				t.Helper()
				ix, err := cl.Index(context.Background())
				if err != nil {
					t.Fatal(err)
				}
				var vs []uint64
				for _, e := range ix.Entries {
					vs = append(vs, e.Version)
				}
				return vs
			}
			publish := func(ctx context.Context, v int, fault func(string)) error {
				body := strings.Repeat("the same long line of a library\n", 4096) + fmt.Sprintf("v%d\n", v)
				if err := os.WriteFile(filepath.Join(tree, "lib.so"), []byte(body), 0o644); err != nil {
					t.Fatal(err)
				}
				_, err := diff.Publish(ctx, repo, tree, diff.PublishOptions{
					PublishOptions: blobstore.PublishOptions{Image: "school-laptop", Signer: signer, Fault: fault, AllowSame: true},
					Deltas:         &diff.GenerateOptions{Depth: 1},
				})
				return err
			}
			if err := publish(context.Background(), 1, nil); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var seen []string
			err = publish(ctx, 2, func(point string) {
				seen = append(seen, point)
				if got := served(); !slices.Equal(got, []uint64{1}) {
					t.Errorf("at %q the served index lists %v, want [1]", point, got)
				}
				if _, err := os.Stat(lay.Manifest("school-laptop", 2)); err != nil {
					t.Errorf("at %q: %v", point, err)
				}
				if point == "list" {
					// The window is real: everything is in place but the entry.
					if _, err := os.Stat(lay.Deltas("school-laptop", 2)); err != nil {
						t.Errorf("at %q the delta index is not in place yet: %v", point, err)
					}
				}
				if point == "stored" && tc.cancel {
					cancel()
				}
			})
			if (err == nil) != tc.listed || !slices.Equal(seen, tc.points) {
				t.Fatalf("publish v2: %v, points %v; want listed %v, points %v", err, seen, tc.listed, tc.points)
			}
			want := []uint64{1}
			if tc.listed {
				want = []uint64{1, 2}
			}
			if got := served(); !slices.Equal(got, want) {
				t.Fatalf("served index lists %v, want %v", got, want)
			}
			for _, p := range []string{lay.Manifest("school-laptop", 2), lay.Signature("school-laptop", 2), lay.Deltas("school-laptop", 2), lay.DeltasSignature("school-laptop", 2)} {
				if _, err := os.Stat(p); (err == nil) != tc.listed {
					t.Errorf("%s: %v, want present %v", p, err, tc.listed)
				}
			}
			if err := publish(context.Background(), 3, nil); err != nil {
				t.Fatalf("the next publish after: %v", err)
			}
		})
	}
}
