package daemon

import (
	"context"
	"crypto/sha256"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/peerup/peerup/apply"
	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/internal/hostile"
	"github.com/peerup/peerup/manifest"
	"github.com/peerup/peerup/transfer"
)

// states forwards the core's state changes to a channel.
type states chan State

func (s states) PropsChanged(old, cur Props) {
	if old.State != cur.State {
		s <- cur.State
	}
}
func (s states) UpdateReady(uint64) {}

// TestAttackIndefiniteFreeze asserts that hostile peers cannot hold a
// laptop back while a newer version exists elsewhere: peers that keep
// offering an old version, and a liar whose (unsigned) index claims a
// version it cannot serve, are outvoted by the one honest peer offering
// the newest. The daemon chooses the newest, falls back past the liar,
// stages the honest newest version within the deadline, and bans the liar.
func TestAttackIndefiniteFreeze(t *testing.T) {
	f := newTestFleet(t)
	for v := uint64(1); v <= 3; v++ {
		f.publish(t, v)
	}
	honest := transfer.NewHandler(f.repo.Dir(), nil)
	ix, err := f.repo.ReadIndex()
	if err != nil {
		t.Fatal(err)
	}
	// Old peers: an index that stops at v2 (say, laptops that hoard it).
	old := &blobstore.Index{}
	for _, e := range ix.Entries {
		if e.Version <= 2 {
			old.Set(e)
		}
	}
	var peers []string
	for range 3 {
		p := hostile.New(t, honest)
		p.OnPath("/index", hostile.Bytes(old.Marshal()))
		peers = append(peers, p.URL())
	}
	// The liar claims v9 and has nothing to show for it.
	liarIx := &blobstore.Index{}
	for _, e := range ix.Entries {
		liarIx.Set(e)
	}
	e3, _ := ix.Latest("school-laptop")
	e3.Version = 9
	liarIx.Set(e3)
	liar := hostile.New(t, honest)
	liar.OnPath("/index", hostile.Bytes(liarIx.Marshal()))
	liar.On("/images/", "", hostile.Status(http.StatusNotFound))
	good := hostile.New(t, honest)
	peers = append([]string{liar.URL()}, append(peers, good.URL())...)

	sys, core, db := stageFromPeers(t, f, 1, peers)
	st, _ := sys.Status()
	if st.Staged != 3 || core.Props().AvailableVersion != 3 {
		t.Fatalf("staged v%d (available v%d), want the honest newest, v3", st.Staged, core.Props().AvailableVersion)
	}
	if !db.Banned(liar.URL(), time.Now()) {
		t.Error("the peer that listed a version it could not serve is not banned")
	}
	for _, u := range peers[1:] {
		if db.Banned(u, time.Now()) {
			t.Errorf("honest peer %s banned", u)
		}
	}
}

// TestAttackPoisonedPartialBlamesNoHonestPeer: a neighbour declares the
// whole of a large object, sends garbage and resets, so the laptop keeps a
// poisoned partial; the honest server it resumes from must not be banned
// for the hash that then fails, and the update completes from it. The
// honest server answers its first request for the object busy, so the
// poisoner gets it first whichever of them the daemon asks first.
func TestAttackPoisonedPartialBlamesNoHonestPeer(t *testing.T) {
	for _, poisonerFirst := range []bool{true, false} {
		t.Run(fmt.Sprintf("poisoner first %v", poisonerFirst), func(t *testing.T) {
			f := newTestFleet(t)
			f.publish(t, 1)
			f.publish(t, 2)
			// A large object, beyond the size from which partials are kept.
			big := make([]byte, 3*blobstore.ResumeMin)
			for i := range big {
				big[i] = byte(i*7 + i/4093)
			}
			os.MkdirAll(f.tree+"/usr/lib", 0o755)
			os.WriteFile(f.tree+"/usr/lib/big.so", big, 0o644)
			f.publish(t, 3)
			rel := "/" + blobstore.Layout{}.Object(manifest.Digest(sha256.Sum256(big)))

			served := transfer.NewHandler(f.repo.Dir(), nil)
			poisoner := hostile.New(t, served)
			poisoner.On("/objects/", "", hostile.Poisoned(served))
			honest := hostile.New(t, served)
			var asked atomic.Int32
			honest.OnPath(rel, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if asked.Add(1) == 1 {
					w.Header().Set("Retry-After", "1")
					w.WriteHeader(http.StatusServiceUnavailable)
					return
				}
				served.ServeHTTP(w, r)
			}))
			peers := []string{poisoner.URL(), honest.URL()}
			if !poisonerFirst {
				peers = []string{honest.URL(), poisoner.URL()}
			}

			sys, _, db := stageFromPeers(t, f, 2, peers)
			if st, _ := sys.Status(); st.Staged != 3 {
				t.Fatalf("staged v%d, want v3", st.Staged)
			}
			if db.Banned(honest.URL(), time.Now()) {
				t.Error("the honest server was banned for the poisoner's bytes")
			}
			if n := poisoner.Hits("/objects/", ""); n == 0 {
				t.Error("the poisoner was never asked for an object: the scenario did not happen")
			}
			if n := honest.HitsPath(rel); n < 3 {
				t.Errorf("the honest server was asked %d times for the object, want the busy answer, the resume and the fetch from the start", n)
			}
			if problems, err := sys.Verify(hostile.Context(t, 30*time.Second)); err != nil || len(problems) > 0 {
				t.Errorf("verify after the attack: %v %v", problems, err)
			}
		})
	}
}

// stageFromPeers runs a daemon core on a sysroot at version from, with
// peers as its static list, until it has staged an update; it fails the
// test on an error state or after 60 s.
func stageFromPeers(t *testing.T, f *testFleet, from uint64, peers []string) (*apply.Sysroot, *Core, *DB) {
	t.Helper()
	sys, err := apply.Open(f.sysrootAt(t, from))
	if err != nil {
		t.Fatal(err)
	}
	db, err := OpenDB(filepath.Join(sys.StateDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	kr, _ := manifest.LoadKeyring(f.pub)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	core, err := NewCore(ctx, Options{Sysroot: sys, DB: db, Trust: kr, Policy: PolicyDownload, Peers: func() []string { return peers }})
	if err != nil {
		t.Fatal(err)
	}
	ch := make(states, 64)
	core.Observe(ch)
	if err := core.Poll(); err != nil {
		t.Fatal(err)
	}
	for done := false; !done; {
		select {
		case s := <-ch:
			if s == StateError {
				t.Fatalf("no update: %s", core.Props().ErrorMessage)
			}
			done = s == StateUpdateReady
		case <-ctx.Done():
			t.Fatalf("no update within the deadline; state %s", core.Props().State)
		}
	}
	core.Wait()
	return sys, core, db
}
