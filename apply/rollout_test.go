package apply_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/peerup/peerup/apply"
	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/manifest"
)

// rolloutFleet publishes v1 and, to percent of machines, v2, and returns a
// laptop on v1 with a machine id.
func rolloutFleet(t *testing.T, percent int) (*fleet, *apply.Sysroot) {
	t.Helper()
	f := newFleet(t)
	tree := makeTree(t, "VERSION=1\n")
	f.publish(tree, 1)
	write(t, tree+"/etc/os-release", "VERSION=2\n", 0o644)
	if _, err := f.repo.Publish(context.Background(), tree, blobstore.PublishOptions{Image: "school-laptop", Version: 2, Signer: f.signer, Rollout: &percent}); err != nil {
		t.Fatal(err)
	}
	s := newSysroot(t)
	s.MachineIDFile = filepath.Join(t.TempDir(), "machine-id")
	write(t, s.MachineIDFile, "0123456789abcdef0123456789abcdef\n", 0o444)
	f.update(s, 1)
	return f, s
}

// current is the laptop's current version.
func current(t *testing.T, s *apply.Sysroot) uint64 {
	t.Helper()
	st, err := s.Status()
	if err != nil {
		t.Fatal(err)
	}
	return st.Current
}

// TestRolloutTravelsOnAStick: an export carries the rollout list, so a
// laptop updating from the stick stages a version held back from it but
// does not apply it, unless told to ignore the rollout.
func TestRolloutTravelsOnAStick(t *testing.T) {
	f, s := rolloutFleet(t, 0)
	stick := t.TempDir()
	export(t, f, []string{stick}, apply.ExportOptions{Trust: f.trust})
	want, _, _ := f.repo.ReadList(blobstore.ListRollout, "school-laptop")
	if got, err := os.ReadFile(filepath.Join(stick, blobstore.Layout{}.List(blobstore.ListRollout, "school-laptop"))); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("the stick holds rollout list %q (%v), want %q", got, err, want)
	}
	src, err := apply.OpenSource(stick)
	if err != nil {
		t.Fatal(err)
	}
	res, _, err := s.Update(context.Background(), src, apply.PullOptions{Trust: f.trust})
	if !errors.Is(err, apply.ErrNotRolledOut) || res == nil || res.Version != 2 {
		t.Fatalf("update at 0%%: %+v, %v; want v2 staged and ErrNotRolledOut", res, err)
	}
	if st, _ := s.Status(); st.Current != 1 || st.Staged != 2 {
		t.Fatalf("after the held-back update: %+v", st)
	}
	if _, _, err := s.Update(context.Background(), src, apply.PullOptions{Trust: f.trust, IgnoreRollout: true}); err != nil || current(t, s) != 2 {
		t.Fatalf("update --ignore-rollout: %v, current %d", err, current(t, s))
	}
}

// TestRolloutRules: only a list signed by a trusted key holds a version
// back, and below 100% a machine without an id waits.
func TestRolloutRules(t *testing.T) {
	t.Run("rogue list", func(t *testing.T) {
		f, s := rolloutFleet(t, 100)
		rogue, _ := manifest.GenerateKey("rogue")
		rl := (&blobstore.Rollout{ListHead: blobstore.ListHead{Image: "school-laptop", Seq: 9}, Versions: []blobstore.RolloutEntry{{Version: 2, Percent: 0}}}).Marshal()
		var sig bytes.Buffer
		if err := manifest.NewSigner(rogue).Sign(&sig, bytes.NewReader(rl)); err != nil {
			t.Fatal(err)
		}
		if err := f.repo.StoreList(blobstore.ListRollout, "school-laptop", rl, sig.Bytes()); err != nil {
			t.Fatal(err)
		}
		if _, _, err := s.Update(context.Background(), f.client(), apply.PullOptions{Trust: f.trust}); err != nil || current(t, s) != 2 {
			t.Fatalf("a rogue list held v2 back: %v, current %d", err, current(t, s))
		}
	})
	t.Run("no machine id", func(t *testing.T) {
		f, s := rolloutFleet(t, 99)
		os.Remove(s.MachineIDFile)
		if _, _, err := s.Update(context.Background(), f.client(), apply.PullOptions{Trust: f.trust}); !errors.Is(err, apply.ErrNotRolledOut) || current(t, s) != 1 {
			t.Fatalf("without a machine id at 99%%: %v, current %d", err, current(t, s))
		}
		rs, err := s.Rollout("school-laptop", 2, f.trust)
		if err == nil || rs.In || rs.Percent != 99 {
			t.Errorf("Rollout without a machine id: %+v, %v", rs, err)
		}
	})
	t.Run("publish without a rollout clears a stale one", func(t *testing.T) {
		f, _ := rolloutFleet(t, 5)
		// A failed publish of v3 at 5% leaves its rollout; the next
		// publish of v3, with none, goes to every machine.
		tree := makeTree(t, "VERSION=3\n")
		five := 5
		stop := func(point string) {
			if point == "list" {
				panic("killed before listing")
			}
		}
		p, err := f.repo.Stage(context.Background(), tree, blobstore.PublishOptions{Image: "school-laptop", Version: 3, Signer: f.signer, Rollout: &five, Fault: stop})
		if err != nil {
			t.Fatal(err)
		}
		func() {
			defer func() { recover() }()
			p.List()
		}()
		p.Close()
		if data, _, _ := f.repo.ReadList(blobstore.ListRollout, "school-laptop"); !bytes.Contains(data, []byte("version 3 percent 5\n")) {
			t.Fatalf("the killed publish left no rollout of v3: %q", data)
		}
		f.publish(tree, 3)
		data, _, _ := f.repo.ReadList(blobstore.ListRollout, "school-laptop")
		ro, err := blobstore.ParseRollout(data)
		if err != nil || ro.Percent(3) != 100 || ro.Percent(2) != 5 {
			t.Errorf("rollout list after v3's publish: %q (%v)", data, err)
		}
	})
}
