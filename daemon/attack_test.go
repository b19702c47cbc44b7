package daemon

import (
	"context"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"peerup/apply"
	"peerup/blobstore"
	"peerup/internal/hostile"
	"peerup/manifest"
	"peerup/transfer"
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

	dir := f.sysrootAt(t, 1)
	sys, err := apply.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	db, err := OpenDB(filepath.Join(sys.StateDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	kr, _ := manifest.LoadKeyring(f.pub)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
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
				t.Fatalf("frozen: %s", core.Props().ErrorMessage)
			}
			done = s == StateUpdateReady
		case <-ctx.Done():
			t.Fatalf("no update within the deadline; state %s", core.Props().State)
		}
	}
	core.Wait()
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
