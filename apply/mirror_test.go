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
	"time"

	"github.com/peerup/peerup/apply"
	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/manifest"
	"github.com/peerup/peerup/transfer"
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
	res, err := apply.Mirror(context.Background(), mirror, upstream, f.trust, nil)
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
	_, err = apply.Mirror(context.Background(), mirror, upstream, f.trust, nil)
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
	if res, err := apply.Mirror(context.Background(), mirror, upstream, f.trust, nil); err != nil || len(res.Versions) != 1 {
		t.Fatalf("after the repair: %v, %v", res, err)
	}
}

// TestMirrorRefusesExpiredVersion: the mirror applies a laptop's expiry
// rule, so a school server never takes in (nor seeds) a version laptops
// would refuse. The refused pass leaves the mirror as it was, and a newer
// version published afterwards is mirrored past the expired one.
func TestMirrorRefusesExpiredVersion(t *testing.T) {
	f := newFleet(t)
	tree := makeTree(t, "VERSION=1\n")
	f.publish(tree, 1)
	upstream, err := transfer.NewClient(f.url, nil)
	if err != nil {
		t.Fatal(err)
	}
	mirror, err := blobstore.OpenRepo(filepath.Join(t.TempDir(), "mirror"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := apply.Mirror(context.Background(), mirror, upstream, f.trust, nil); err != nil {
		t.Fatal(err)
	}
	latest := func() uint64 {
		ix, err := mirror.ReadIndex()
		if err != nil {
			t.Fatal(err)
		}
		l, _ := ix.Latest("school-laptop")
		return l.Version
	}

	write(t, tree+"/etc/motd", "version 2 news\n", 0o644)
	created := time.Now().Add(-48 * time.Hour)
	if _, err := f.repo.Publish(context.Background(), tree, blobstore.PublishOptions{
		Image: "school-laptop", Version: 2, Signer: f.signer, Created: created, Expires: created.Add(24 * time.Hour)}); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, mirror.Dir())
	res, err := apply.Mirror(context.Background(), mirror, upstream, f.trust, nil)
	if !errors.Is(err, manifest.ErrExpired) || !strings.Contains(err.Error(), "v2") {
		t.Fatalf("expired upstream version: err = %v", err)
	}
	if len(res.Versions) != 0 {
		t.Errorf("mirrored %v", res.Versions)
	}
	if after := snapshot(t, mirror.Dir()); after != before {
		t.Error("a refused mirror pass changed the mirror")
	}
	if v := latest(); v != 1 {
		t.Fatalf("the mirror lists v%d, want its last good v1", v)
	}

	write(t, tree+"/etc/motd", "version 3 news\n", 0o644)
	f.publish(tree, 3)
	res, err = apply.Mirror(context.Background(), mirror, upstream, f.trust, nil)
	if err != nil || len(res.Versions) != 1 || res.Versions[0].Version != 3 {
		t.Fatalf("after a newer version: %v, %v", res, err)
	}
	if v := latest(); v != 3 {
		t.Fatalf("the mirror lists v%d, want v3", v)
	}
}
