package apply_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"peerup/apply"
	"peerup/blobstore"
	"peerup/manifest"
	"peerup/transfer"
)

// TestMirrorFromNginxUpstream: a school server mirrors a repo that nginx
// serves, laptops update from the mirror, and a tampered upstream is refused
// with the mirror keeping its last good state.
func TestMirrorFromNginxUpstream(t *testing.T) {
	f := newFleet(t)
	tree := makeTree(t, "VERSION=1\n")
	write(t, tree+"/usr/lib/libschool.so.1", library(1), 0o755)
	f.publishWithDeltas(tree, 1)
	write(t, tree+"/usr/lib/libschool.so.1", library(2), 0o755)
	f.publishWithDeltas(tree, 2)
	upstream, err := transfer.NewClient(startNginx(t, f.repo.Dir()), nil)
	if err != nil {
		t.Fatal(err)
	}
	mirror, err := blobstore.OpenRepo(filepath.Join(t.TempDir(), "mirror"))
	if err != nil {
		t.Fatal(err)
	}
	res, err := transfer.Mirror(context.Background(), mirror, upstream, f.trust, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Versions) != 2 {
		t.Fatalf("mirrored %v", res.Versions)
	}
	srv := httptest.NewServer(transfer.NewHandler(mirror.Dir(), nil))
	defer srv.Close()
	laptop := newSysroot(t)
	cl, _ := transfer.NewClient(srv.URL, nil)
	if _, err := laptop.Pull(context.Background(), cl, apply.PullOptions{Version: 1, Trust: f.trust}); err != nil {
		t.Fatal(err)
	}
	laptop.Apply(1)
	pr, err := laptop.Pull(context.Background(), cl, apply.PullOptions{Trust: f.trust})
	if err != nil {
		t.Fatal(err)
	}
	if pr.PatchObjects == 0 {
		t.Error("the mirror did not pass on the patches")
	}
	laptop.Apply(2)
	compareTrees(t, tree, filepath.Join(laptop.Dir(), "current")+"/")

	// Upstream publishes v3, but an object is tampered with on the way.
	write(t, tree+"/etc/motd", "version 3 news\n", 0o644)
	f.publishWithDeltas(tree, 3)
	d := manifest.Digest(sha256.Sum256([]byte("version 3 news\n")))
	os.Chmod(f.repo.Path(d), 0o644)
	os.WriteFile(f.repo.Path(d), []byte("version 3 evil\n"), 0o644)
	before := snapshot(t, mirror.Dir())
	_, err = transfer.Mirror(context.Background(), mirror, upstream, f.trust, nil)
	if !errors.Is(err, blobstore.ErrMismatch) || !strings.Contains(err.Error(), d.String()) {
		t.Fatalf("tampered upstream: err = %v", err)
	}
	if after := snapshot(t, mirror.Dir()); after != before {
		t.Errorf("a refused mirror pass changed the mirror")
	}
	if ix, _ := mirror.ReadIndex(); func() uint64 { l, _ := ix.Latest("school-laptop"); return l.Version }() != 2 {
		t.Fatal("the mirror lists the tampered version")
	}
	os.WriteFile(f.repo.Path(d), []byte("version 3 news\n"), 0o644)
	if res, err := transfer.Mirror(context.Background(), mirror, upstream, f.trust, nil); err != nil || len(res.Versions) != 1 {
		t.Fatalf("after the repair: %v, %v", res, err)
	}
}
