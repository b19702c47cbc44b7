package apply_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/peerup/peerup/apply"
	"github.com/peerup/peerup/diff"
	"github.com/peerup/peerup/transfer"
)

// library returns version v of a large file in which each version changes a
// few bytes, as a security update does to a shared library.
func library(v int) string {
	b := bytes.Repeat([]byte("machine code of a shared library; "), 30000)
	for i := 1; i <= v; i++ {
		copy(b[i*7919:], fmt.Sprintf("[fix %d]", i))
	}
	return string(b)
}

// libraryReleases publishes v1 to last with delta indexes, each version
// changing the os-release and a few bytes of a large library, and extra
// (if set) changing more of the tree first. It returns the tree as the
// last version has it.
func libraryReleases(t *testing.T, last int, extra func(tree string, v int)) (*fleet, string) {
	t.Helper()
	f := newFleet(t)
	tree := makeTree(t, "VERSION=1\n")
	write(t, tree+"/usr/lib/libschool.so.1", library(1), 0o755)
	f.publishWithDeltas(tree, 1)
	for v := 2; v <= last; v++ {
		write(t, tree+"/etc/os-release", fmt.Sprintf("VERSION=%d\n", v), 0o644)
		write(t, tree+"/usr/lib/libschool.so.1", library(v), 0o755)
		if extra != nil {
			extra(tree, v)
		}
		f.publishWithDeltas(tree, uint64(v))
	}
	return f, tree
}

func (f *fleet) publishWithDeltas(tree string, v uint64) {
	f.t.Helper()
	f.publish(tree, v)
	if v == 1 {
		return
	}
	f.publishDeltasOnly(v)
}

// publishDeltasOnly makes the encodings of a version already published.
func (f *fleet) publishDeltasOnly(v uint64) {
	f.t.Helper()
	if _, err := diff.Generate(context.Background(), f.repo, "school-laptop", v, diff.GenerateOptions{Signer: f.signer, Depth: 3}); err != nil {
		f.t.Fatal(err)
	}
}

func TestDeltasCatchUpAndPassOn(t *testing.T) {
	f := newFleet(t)
	tree := makeTree(t, "VERSION=1\n")
	write(t, tree+"/usr/lib/libschool.so.1", library(1), 0o755)
	f.publishWithDeltas(tree, 1)
	a, b := newSysroot(t), newSysroot(t)
	f.update(a, 1)
	f.update(b, 1)
	for v := 2; v <= 4; v++ {
		write(t, tree+"/etc/os-release", fmt.Sprintf("VERSION=%d\n", v), 0o644)
		write(t, tree+"/usr/lib/libschool.so.1", library(v), 0o755)
		f.publishWithDeltas(tree, uint64(v))
	}

	// Laptop A was off through v2 and v3: it goes straight to v4 with
	// patches against the v1 files it holds.
	res, err := f.pull(a, 0)
	if err != nil {
		t.Fatal(err)
	}
	if res.Version != 4 {
		t.Fatalf("pulled v%d, want 4", res.Version)
	}
	if res.PatchObjects == 0 || res.FetchedBytes*10 > res.RawBytes {
		t.Errorf("catch-up fetched %d bytes for %d raw (%d patches): patches not used", res.FetchedBytes, res.RawBytes, res.PatchObjects)
	}
	if res.FetchedBytes != res.MetadataBytes+res.PatchBytes+res.WholeBytes {
		t.Errorf("bytes by kind do not add up: %+v", res)
	}
	if _, _, err := a.Apply(4); err != nil {
		t.Fatal(err)
	}
	compareTrees(t, tree, filepath.Join(a.Dir(), "current")+"/")

	// Laptop B, also at v1, fetches from laptop A instead of the server:
	// A kept the patches it fetched and serves them.
	srv := httptest.NewServer(transfer.NewHandler(a.Repo().Dir(), nil))
	defer srv.Close()
	peer, err := transfer.NewClient(srv.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	res2, err := b.Pull(context.Background(), peer, apply.PullOptions{Trust: f.trust})
	if err != nil {
		t.Fatal(err)
	}
	// (The metadata differ: the server has a manifest delta and a packed
	// delta index, a laptop only what it verified.)
	if res2.PatchObjects != res.PatchObjects || res2.PatchBytes+res2.WholeBytes != res.PatchBytes+res.WholeBytes {
		t.Errorf("from the peer: %d patches, %d bytes; from the server: %d patches, %d bytes", res2.PatchObjects, res2.PatchBytes+res2.WholeBytes, res.PatchObjects, res.PatchBytes+res.WholeBytes)
	}
	if _, _, err := b.Apply(4); err != nil {
		t.Fatal(err)
	}
	compareTrees(t, tree, filepath.Join(b.Dir(), "current")+"/")
}

func TestDeltasNeverCostMoreThanWhole(t *testing.T) {
	f := newFleet(t)
	tree := makeTree(t, "VERSION=1\n")
	f.publishWithDeltas(tree, 1)
	s := newSysroot(t)
	f.update(s, 1)
	// Unrelated new content: no patch can help, and none must be chosen
	// over the whole object.
	rnd := make([]byte, 200000)
	for i := range rnd {
		rnd[i] = byte(i*7 + i/251)
	}
	write(t, tree+"/usr/lib/big.so", string(rnd), 0o755)
	f.publishWithDeltas(tree, 2)
	res, err := f.pull(s, 2)
	if err != nil {
		t.Fatal(err)
	}
	if res.FetchedBytes > res.RawBytes {
		t.Fatalf("fetched %d bytes, more than the %d raw", res.FetchedBytes, res.RawBytes)
	}
	os.Stdout.Sync()
}

// TestKeptEncodingsStayWithinBudget: a node keeps the encodings it fetched
// for its neighbours, but no more bytes of them than its budget.
func TestKeptEncodingsStayWithinBudget(t *testing.T) {
	f := newFleet(t)
	tree := makeTree(t, "VERSION=1\n")
	write(t, tree+"/usr/lib/libschool.so.1", library(1), 0o755)
	f.publishWithDeltas(tree, 1)
	s := newSysroot(t)
	f.update(s, 1)
	write(t, tree+"/usr/lib/libschool.so.1", library(2), 0o755)
	f.publishWithDeltas(tree, 2)
	held := func(budget int64) int {
		t.Helper()
		res, err := s.Pull(context.Background(), f.client(), apply.PullOptions{Version: 2, Trust: f.trust, EncodingBudget: budget})
		if err != nil {
			t.Fatal(err)
		}
		if res.PatchObjects == 0 {
			t.Fatal("no patch fetched")
		}
		raw, _ := os.ReadFile(filepath.Join(s.Repo().Dir(), "images/school-laptop/2.deltas"))
		x, err := diff.ParseDeltaIndex(raw)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, e := range x.Encodings {
			if s.Repo().Has(e.Digest) {
				n++
			}
		}
		return n
	}
	if n := held(-1); n == 0 {
		t.Fatal("no encoding kept without a budget")
	}
	// Pull the same version again into a fresh sysroot with a budget of
	// one byte: nothing can be kept.
	s = newSysroot(t)
	f.update(s, 1)
	if n := held(1); n != 0 {
		t.Fatalf("%d encodings kept over a one-byte budget", n)
	}
}

// gzipped returns text as Debian compresses man pages: gzip -9n.
func gzipped(t *testing.T, text string) string {
	t.Helper()
	cmd := exec.Command("gzip", "-9n", "-c")
	cmd.Stdin = strings.NewReader(text)
	out, err := cmd.Output()
	if err != nil {
		t.Skipf("needs gzip (apt-get install gzip): %v", err)
	}
	return string(out)
}

func manPage(date string) string {
	var b strings.Builder
	fmt.Fprintf(&b, ".TH SCHOOL-TOOL 1 %q \"school tools\"\n", date)
	for i := range 2000 {
		fmt.Fprintf(&b, ".IP \"\\-\\-option%d\" 4\nWhat option %d does, in a sentence or two.\n", i, i)
	}
	return b.String()
}

// TestDeltasDiffGzipFilesAsText: a man page whose date changed is a new
// gzip file from its first bytes on, but a laptop fetches only the change
// in its text and rebuilds the exact file; a laptop without gzip still
// updates, by the next way.
func TestDeltasDiffGzipFilesAsText(t *testing.T) {
	f := newFleet(t)
	tree := makeTree(t, "VERSION=1\n")
	write(t, tree+"/usr/share/man/man1/school-tool.1.gz", gzipped(t, manPage("2025-01-11")), 0o644)
	f.publishWithDeltas(tree, 1)
	write(t, tree+"/usr/share/man/man1/school-tool.1.gz", gzipped(t, manPage("2026-05-08")), 0o644)
	f.publishWithDeltas(tree, 2)

	a, b := newSysroot(t), newSysroot(t)
	f.update(a, 1)
	f.update(b, 1)
	res, err := f.pull(a, 2)
	if err != nil {
		t.Fatal(err)
	}
	if res.PatchObjects != 1 || res.PatchBytes+res.WholeBytes > 200 {
		t.Errorf("fetched %d bytes (%d patches) for a changed date in a %d-byte man page", res.PatchBytes+res.WholeBytes, res.PatchObjects, res.RawBytes)
	}
	if _, _, err := a.Apply(2); err != nil {
		t.Fatal(err)
	}
	compareTrees(t, tree, filepath.Join(a.Dir(), "current")+"/")

	t.Setenv("PATH", t.TempDir())
	res, err = f.pull(b, 2)
	if err != nil {
		t.Fatalf("without gzip: %v", err)
	}
	if _, _, err := b.Apply(2); err != nil {
		t.Fatal(err)
	}
	compareTrees(t, tree, filepath.Join(b.Dir(), "current")+"/")
}

// TestPullCountsEveryByteTheServerSends: what a pull reports received is
// what the server sent, body byte for body byte (index, manifest delta,
// signatures, packed delta index, encodings and objects).
func TestPullCountsEveryByteTheServerSends(t *testing.T) {
	f, _ := libraryReleases(t, 3, nil)
	s := newSysroot(t)
	f.update(s, 1)
	var mu sync.Mutex
	sent := map[string]int64{}
	h := transfer.NewHandler(f.repo.Dir(), nil)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cw := &countingResponse{ResponseWriter: w}
		h.ServeHTTP(cw, r)
		mu.Lock()
		sent[r.URL.Path] += cw.n
		mu.Unlock()
	}))
	defer srv.Close()
	src, err := transfer.NewClient(srv.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := s.Pull(context.Background(), src, apply.PullOptions{Version: 3, Trust: f.trust})
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, n := range sent {
		total += n
	}
	if res.FetchedBytes != total || res.ManifestFrom != 1 {
		t.Fatalf("the pull counted %d bytes (metadata %d, from v%d), the server sent %d: %v", res.FetchedBytes, res.MetadataBytes, res.ManifestFrom, total, sent)
	}
}

type countingResponse struct {
	http.ResponseWriter
	n int64
}

func (c *countingResponse) Write(b []byte) (int, error) {
	n, err := c.ResponseWriter.Write(b)
	c.n += int64(n)
	return n, err
}
