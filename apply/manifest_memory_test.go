package apply_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"testing"
	"time"

	"github.com/peerup/peerup/apply"
	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/manifest"
)

// bigManifestPaths is the size of the synthetic image: a large desktop.
const bigManifestPaths = 200_000

// TestPullHeapBigManifest pulls a version whose manifest lists 200,000
// paths (about 15 MiB of text) and samples the puller's live heap throughout:
// the manifest and its delta index stream from a file in staging, so the
// peak is buffers and the tree builder's chain of directories, not the
// manifest's bytes (SPEC.md §17 "Memory for manifests"). The image is
// directories of symlinks, so that the fixture is a manifest alone and no
// object need be stored or fetched.
func TestPullHeapBigManifest(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a tree of 200,000 entries")
	}
	f := newFleet(t)
	size := f.publishManifestOnly(1, bigManifestPaths)
	s := newSysroot(t)
	runtime.GC()
	peak, base := sampleHeap(func() {
		if _, err := s.Pull(context.Background(), f.client(), apply.PullOptions{Version: 1, Trust: f.trust}); err != nil {
			t.Fatalf("pull: %v", err)
		}
	})
	t.Logf("manifest of %d paths, %.1f MiB: pull's peak live heap %.1f MiB above %.1f MiB before",
		bigManifestPaths, float64(size)/(1<<20), float64(peak-base)/(1<<20), float64(base)/(1<<20))
	// Half the manifest: holding it whole once would already exceed this.
	if peak-base > uint64(size)/2 {
		t.Errorf("peak heap %.1f MiB above the baseline for a manifest of %.1f MiB: it is held in memory", float64(peak-base)/(1<<20), float64(size)/(1<<20))
	}
}

// publishManifestOnly signs and lists version v of an image of n symlinks
// in directories of 200, written straight into the repo: a manifest that
// names no object needs none stored. It returns the manifest's size.
func (f *fleet) publishManifestOnly(v uint64, n int) int64 {
	f.t.Helper()
	h := manifest.Header{Format: manifest.FormatVersion, Image: "school-laptop", Version: v, Label: fmt.Sprintf("v%d", v), Created: time.Unix(1700000000, 0).UTC()}
	entries := []manifest.Entry{
		{Path: ".", Type: manifest.TypeDir, Mode: 0o755},
		{Path: "usr", Type: manifest.TypeDir, Mode: 0o755},
		{Path: "usr/lib", Type: manifest.TypeDir, Mode: 0o755},
	}
	const perDir = 200
	for d := 0; d*perDir < n; d++ {
		dir := fmt.Sprintf("usr/lib/package-%05d", d)
		entries = append(entries, manifest.Entry{Path: dir, Type: manifest.TypeDir, Mode: 0o755})
		for i := 0; i < perDir && d*perDir+i < n; i++ {
			entries = append(entries, manifest.Entry{Path: fmt.Sprintf("%s/libexample-%04d.so.1", dir, i), Type: manifest.TypeSymlink, Mode: 0o777,
				Target: fmt.Sprintf("libexample-%04d.so.1.2.%d", i, v)})
		}
	}
	manifest.Totals(&h, entries)
	mb, err := (&manifest.Manifest{Header: h, Entries: entries}).Marshal()
	if err != nil {
		f.t.Fatal(err)
	}
	var sig bytes.Buffer
	if err := f.signer.Sign(&sig, bytes.NewReader(mb)); err != nil {
		f.t.Fatal(err)
	}
	lay := f.repo.Layout()
	if err := os.MkdirAll(lay.ImageDir(h.Image), 0o755); err != nil {
		f.t.Fatal(err)
	}
	if err := os.WriteFile(lay.Manifest(h.Image, v), mb, 0o644); err != nil {
		f.t.Fatal(err)
	}
	if err := os.WriteFile(lay.Signature(h.Image, v), sig.Bytes(), 0o644); err != nil {
		f.t.Fatal(err)
	}
	ix, err := f.repo.ReadIndex()
	if err != nil {
		f.t.Fatal(err)
	}
	ix.Set(blobstore.IndexEntry{Image: h.Image, Version: v, Manifest: manifest.Digest(sha256.Sum256(mb))})
	if err := f.repo.WriteIndex(ix); err != nil {
		f.t.Fatal(err)
	}
	return int64(len(mb))
}

// sampleHeap runs fn and returns the highest live heap the collector
// marked while it ran, and the live heap before. It reads the live heap,
// not the heap in use: garbage awaiting collection is no sign of a
// manifest held whole, and on a loaded machine (CI runs packages side by
// side) the collector lags far enough behind to double the heap in use.
// A low GC percentage makes the collector mark often, so that a manifest
// held whole for even a moment shows in a sample.
func sampleHeap(fn func()) (peak, base uint64) {
	defer debug.SetGCPercent(debug.SetGCPercent(10))
	runtime.GC()
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(sample)
	base = sample[0].Value.Uint64()
	peak = base
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			metrics.Read(s)
			peak = max(peak, s[0].Value.Uint64())
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	fn()
	close(stop)
	wg.Wait()
	return peak, base
}
