package apply_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/peerup/peerup/apply"
	"github.com/peerup/peerup/blobstore"
)

// TestPreviewSizesAnOfferAndChangesNothing: a preview of v2 on a node at v1
// gives the sizes a pull would fetch and write, from the signed metadata
// alone; the pull then fetches what it said, without the metadata the
// preview already received, and the preview itself left no tree, link or
// object behind.
func TestPreviewSizesAnOfferAndChangesNothing(t *testing.T) {
	f := newFleet(t)
	tree := makeTree(t, "VERSION=1\n")
	write(t, tree+"/usr/lib/libschool.so.1", library(1), 0o755)
	f.publishWithDeltas(tree, 1)
	s := newSysroot(t)
	f.update(s, 1)
	write(t, tree+"/etc/os-release", "VERSION=2\n", 0o644)
	write(t, tree+"/usr/lib/libschool.so.1", library(2), 0o755)
	if _, err := f.repo.Publish(context.Background(), tree, blobstore.PublishOptions{
		Image: "school-laptop", Version: 2, Signer: f.signer, Label: "Security update\nFixes libschool."}); err != nil {
		t.Fatal(err)
	}
	f.publishDeltasOnly(2)

	before := snapshot(t, s.Dir())
	pv, err := s.Preview(context.Background(), f.client(), apply.PullOptions{Trust: f.trust})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", *pv)
	if after := snapshot(t, s.Dir()); after != before {
		t.Errorf("the preview changed the sysroot:\nbefore %s\nafter  %s", before, after)
	}
	mf, err := os.ReadFile(filepath.Join(f.repo.Dir(), blobstore.Layout{}.Manifest("school-laptop", 2)))
	if err != nil {
		t.Fatal(err)
	}
	if pv.Version != 2 || pv.UpdateID != fmt.Sprintf("%x", sha256.Sum256(mf)) || pv.Label != "Security update" || pv.Message != "Fixes libschool." {
		t.Errorf("preview = %+v", *pv)
	}
	res, err := f.pull(s, 2)
	if err != nil {
		t.Fatal(err)
	}
	// Two files changed: the preview counts them, through their patches.
	if pv.DownloadSize != res.FetchedBytes || pv.UnpackedSize != res.RawBytes || pv.UnpackedSize == 0 {
		t.Errorf("preview said download %d, unpacked %d; the pull fetched %d for %d raw", pv.DownloadSize, pv.UnpackedSize, res.FetchedBytes, res.RawBytes)
	}
	// The manifest and delta index the preview verified were kept for
	// the pull: it received the index alone again.
	if meta := pv.FullDownloadSize - pv.FullUnpackedSize; res.MetadataBytes >= meta {
		t.Errorf("the pull after the preview received %d bytes of metadata, of %d in all", res.MetadataBytes, meta)
	}
	if pv.FullUnpackedSize < pv.UnpackedSize || pv.FullDownloadSize < pv.FullUnpackedSize {
		t.Errorf("full sizes %d, %d below the update's", pv.FullUnpackedSize, pv.FullDownloadSize)
	}
}
