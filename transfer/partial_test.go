package transfer

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"net/http/httptest"

	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/manifest"
)

// pulling is a pull in progress: image school-laptop v2, holding the
// objects in order.
type pulling struct {
	dir   string
	order []manifest.Digest
}

func (p *pulling) StagedObject(d manifest.Digest) (string, bool) {
	for _, o := range p.order {
		if o == d {
			return filepath.Join(p.dir, d.String()), true
		}
	}
	return "", false
}

func (p *pulling) Have(image string, v uint64, from int) ([]manifest.Digest, int, bool) {
	if image != "school-laptop" || v != 2 {
		return nil, 0, false
	}
	if from > len(p.order) {
		from = len(p.order)
	}
	return p.order[from:], len(p.order), true
}

// TestPullInProgressLendsObjects: a laptop still fetching a version serves
// the objects it has verified so far, and says which ones, so neighbours
// fetching the same version take them from it; the /have list is
// incremental, and other versions or images get 404.
func TestPullInProgressLendsObjects(t *testing.T) {
	repo, err := blobstore.OpenRepo(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	p := &pulling{dir: t.TempDir()}
	add := func(data string) manifest.Digest {
		d := manifest.Digest(sha256.Sum256([]byte(data)))
		os.WriteFile(filepath.Join(p.dir, d.String()), []byte(data), 0o444)
		p.order = append(p.order, d)
		return d
	}
	first := add(strings.Repeat("first object ", 1000))
	srv := httptest.NewServer(NewHandler(repo.Dir(), nil).WithPartial(p))
	defer srv.Close()
	c, err := NewClient(srv.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	ds, total, err := c.Have(ctx, "school-laptop", 2, 0, nil)
	if err != nil || total != 1 || len(ds) != 1 || ds[0] != first {
		t.Fatalf("have = %v, %d, %v; want the first object", ds, total, err)
	}
	second := add("second object")
	ds, total, err = c.Have(ctx, "school-laptop", 2, total, nil)
	if err != nil || total != 2 || len(ds) != 1 || ds[0] != second {
		t.Fatalf("have from 1 = %v, %d, %v; want only the second object", ds, total, err)
	}
	for _, tc := range []struct {
		image string
		v     uint64
	}{{"school-laptop", 3}, {"other-image", 2}} {
		if _, _, err := c.Have(ctx, tc.image, tc.v, 0, nil); !errors.Is(err, ErrNotFound) {
			t.Errorf("have %s v%d: err = %v, want ErrNotFound", tc.image, tc.v, err)
		}
	}

	b, _ := repo.Begin()
	defer b.Abort()
	if err := c.FetchObject(ctx, b, first, int64(len(strings.Repeat("first object ", 1000)))); err != nil {
		t.Fatalf("staged object not served: %v", err)
	}
	missing := manifest.Digest(sha256.Sum256([]byte("not fetched yet")))
	if err := c.FetchObject(ctx, b, missing, 15); !errors.Is(err, ErrNotFound) {
		t.Errorf("object the pull lacks: err = %v, want ErrNotFound", err)
	}
}

func TestParseHaveRejects(t *testing.T) {
	d := manifest.Digest(sha256.Sum256([]byte("x"))).String()
	for _, tc := range []struct {
		name string
		in   string
		from int
	}{
		{"empty", "", 0},
		{"wrong magic", "peerup-have 2\ntotal 0\n", 0},
		{"count short", "peerup-have 1\ntotal 2\n" + d + "\n", 0},
		{"count long", "peerup-have 1\ntotal 0\n" + d + "\n", 0},
		{"total below from", "peerup-have 1\ntotal 1\n", 3},
		{"non-canonical total", "peerup-have 1\ntotal 01\n" + d + "\n", 0},
		{"bad digest", "peerup-have 1\ntotal 1\n" + strings.ToUpper(d) + "\n", 0},
		{"huge total", "peerup-have 1\ntotal 99999999\n", 0},
	} {
		if _, _, err := ParseHave(strings.NewReader(tc.in), tc.from, nil); err == nil {
			t.Errorf("%s: accepted", tc.name)
		}
	}
}

func FuzzParseHave(f *testing.F) {
	d := manifest.Digest(sha256.Sum256([]byte("x"))).String()
	f.Add([]byte("peerup-have 1\ntotal 1\n"+d+"\n"), 0)
	f.Add([]byte("peerup-have 1\ntotal 3\n"+d+"\n"), 2)
	f.Add([]byte("peerup-have 1\ntotal 0\n"), 0)
	f.Fuzz(func(t *testing.T, b []byte, from int) {
		ds, total, err := ParseHave(bytes.NewReader(b), from, nil)
		if err != nil {
			return
		}
		if total < from || len(ds) != total-from || len(ds) > MaxHave || int64(len(b)) > MaxHaveBytes {
			t.Fatalf("accepted %d entries (%d bytes), total %d from %d", len(ds), len(b), total, from)
		}
		// A filter only drops entries: what it keeps is what it was shown.
		odd := func(d manifest.Digest) bool { return d[0]%2 == 1 }
		kept, ktotal, err := ParseHave(bytes.NewReader(b), from, odd)
		if err != nil || ktotal != total {
			t.Fatalf("filtered parse: %v, total %d want %d", err, ktotal, total)
		}
		var want []manifest.Digest
		for _, d := range ds {
			if odd(d) {
				want = append(want, d)
			}
		}
		if !slices.Equal(kept, want) {
			t.Fatalf("filter kept %v, want %v", kept, want)
		}
	})
}
