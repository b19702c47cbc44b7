package apply_test

import (
	"bytes"
	"context"
	"errors"
	"net/http/httptest"
	"os"
	"testing"

	"github.com/peerup/peerup/apply"
	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/manifest"
	"github.com/peerup/peerup/transfer"
)

// TestWithdrawnVersionIsSkipped: once the publisher withdraws v3, a laptop
// at v1 takes v2, refuses v3 by name, keeps the signed list and passes it
// on to a laptop that pulls from it; a list signed by another key, or
// older than the one held, withdraws nothing.
func TestWithdrawnVersionIsSkipped(t *testing.T) {
	f := newFleet(t)
	tree := makeTree(t, "VERSION=1\n")
	for v := uint64(1); v <= 3; v++ {
		write(t, tree+"/etc/os-release", "VERSION="+string(rune('0'+v))+"\n", 0o644)
		f.publish(tree, v)
	}
	a := newSysroot(t)
	f.update(a, 1)

	// A list signed by a key the laptops do not trust is no withdrawal.
	rogue, _ := manifest.GenerateKey("rogue")
	rl := (&blobstore.Withdrawn{ListHead: blobstore.ListHead{Image: "school-laptop", Seq: 9}, Versions: []uint64{2, 3}}).Marshal()
	var rs bytes.Buffer
	if err := manifest.NewSigner(rogue).Sign(&rs, bytes.NewReader(rl)); err != nil {
		t.Fatal(err)
	}
	if err := f.repo.StoreList(blobstore.ListWithdrawn, "school-laptop", rl, rs.Bytes()); err != nil {
		t.Fatal(err)
	}
	pv, err := a.Preview(context.Background(), f.client(), apply.PullOptions{Trust: f.trust})
	if err != nil || pv.Version != 3 {
		t.Fatalf("with a rogue list, the newest offer is %+v (%v), want v3", pv, err)
	}

	for _, p := range []string{f.repo.Layout().List(blobstore.ListWithdrawn, "school-laptop"), blobstore.SignatureOf(f.repo.Layout().List(blobstore.ListWithdrawn, "school-laptop"))} {
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
	}

	w, err := f.repo.Withdraw("school-laptop", 3, f.signer)
	if err != nil {
		t.Fatal(err)
	}
	if w.Seq != 1 || !w.Has(3) || w.Has(2) {
		t.Fatalf("withdrawn list %+v", w)
	}
	if _, err := f.repo.Withdraw("school-laptop", 7, f.signer); err == nil {
		t.Error("withdrew a version the repo does not list")
	}
	if _, err := f.pull(a, 3); !errors.Is(err, apply.ErrWithdrawn) {
		t.Fatalf("pull of withdrawn v3: err = %v, want ErrWithdrawn", err)
	}
	res, err := a.Pull(context.Background(), f.client(), apply.PullOptions{Trust: f.trust})
	if err != nil || res.Version != 2 {
		t.Fatalf("pull of the newest: %+v, %v; want v2", res, err)
	}
	if data, _, _ := a.Repo().ReadList(blobstore.ListWithdrawn, "school-laptop"); !bytes.Equal(data, w.Marshal()) {
		t.Errorf("the laptop did not keep the list: %q", data)
	}

	// A second laptop learns it from the first, which serves what it holds.
	srv := httptest.NewServer(transfer.NewHandler(a.Repo().Dir(), nil))
	defer srv.Close()
	b := newSysroot(t)
	f.update(b, 1)
	cl, _ := transfer.NewClient(srv.URL, nil)
	if _, err := b.Pull(context.Background(), cl, apply.PullOptions{Trust: f.trust}); err != nil {
		t.Fatal(err)
	}
	if data, _, _ := b.Repo().ReadList(blobstore.ListWithdrawn, "school-laptop"); !bytes.Equal(data, w.Marshal()) {
		t.Errorf("the list did not pass from laptop to laptop: %q", data)
	}

	// An older list (seq 1 < 2) from a peer does not undo a newer one.
	if _, err := f.repo.Withdraw("school-laptop", 2, f.signer); err != nil {
		t.Fatal(err)
	}
	data, sig, _ := b.Repo().ReadList(blobstore.ListWithdrawn, "school-laptop") // seq 1
	if err := a.Repo().StoreList(blobstore.ListWithdrawn, "school-laptop", data, sig); err != nil {
		t.Fatal(err)
	}
	c := newSysroot(t)
	f.update(c, 1)
	if _, err := c.Pull(context.Background(), f.client(), apply.PullOptions{Trust: f.trust, Version: 2}); !errors.Is(err, apply.ErrWithdrawn) {
		t.Fatalf("v2 withdrawn at seq 2: err = %v", err)
	}
	srvA := httptest.NewServer(transfer.NewHandler(a.Repo().Dir(), nil))
	defer srvA.Close()
	clA, _ := transfer.NewClient(srvA.URL, nil)
	if _, err := c.Pull(context.Background(), clA, apply.PullOptions{Trust: f.trust, Version: 2}); !errors.Is(err, apply.ErrWithdrawn) {
		t.Errorf("an older list from a peer brought v2 back: err = %v", err)
	}

	// A school's mirror carries the list to its laptops.
	school, err := blobstore.OpenRepo(t.TempDir() + "/school")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := apply.Mirror(context.Background(), school, f.client(), f.trust, nil); err != nil {
		t.Fatal(err)
	}
	want, _, _ := f.repo.ReadList(blobstore.ListWithdrawn, "school-laptop")
	if got, _, _ := school.ReadList(blobstore.ListWithdrawn, "school-laptop"); !bytes.Equal(got, want) {
		t.Errorf("the mirror holds withdrawn list %q, want %q", got, want)
	}
}
