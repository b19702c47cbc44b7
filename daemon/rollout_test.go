package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/peerup/peerup/apply"
	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/manifest"
)

// stateLog records every state a core passes through.
type stateLog struct {
	mu     sync.Mutex
	seen   []State
	change chan struct{}
}

func newStateLog() *stateLog { return &stateLog{change: make(chan struct{}, 1)} }

func (l *stateLog) PropsChanged(old, cur Props) {
	if old.State == cur.State {
		return
	}
	l.mu.Lock()
	l.seen = append(l.seen, cur.State)
	l.mu.Unlock()
	select {
	case l.change <- struct{}{}:
	default:
	}
}

func (l *stateLog) UpdateReady(uint64) {}

func (l *stateLog) states() []State {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.seen)
}

// waitFor blocks until the core has reached want n times in all, failing
// on an error state.
func (l *stateLog) waitFor(ctx context.Context, c *Core, want State, n int) error {
	for {
		count := 0
		for _, s := range l.states() {
			if s == StateError {
				return fmt.Errorf("error state: %s", c.Props().ErrorMessage)
			}
			if s == want {
				count++
			}
		}
		if count >= n {
			return nil
		}
		select {
		case <-l.change:
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s #%d: %w; states %v", want, n, ctx.Err(), l.states())
		}
	}
}

// pollAgain starts a poll, waiting out an operation still running.
func pollAgain(ctx context.Context, c *Core) error {
	for {
		err := c.Poll()
		var ws *WrongStateError
		if !errors.As(err, &ws) {
			return err
		}
		select {
		case <-time.After(10 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// TestPhasedRolloutOnTwentyLaptops: v2 is published to 20% of machines.
// Of 20 laptops on the auto policy, those whose machine ids put them in
// the first 20% apply it; the others fetch and stage it (and could serve
// it to neighbours) but stay on v1, refusing Apply. Raising the rollout to
// 100%, without publishing anything, brings the rest on their next poll.
func TestPhasedRolloutOnTwentyLaptops(t *testing.T) {
	f := newTestFleet(t)
	f.publish(t, 1)
	const n = 20
	type laptop struct {
		sys  *apply.Sysroot
		core *Core
		log  *stateLog
		in   bool
	}
	kr, _ := manifest.LoadKeyring(f.pub)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	laptops := make([]*laptop, n)
	var want []int
	for i := range laptops {
		sys, err := apply.Open(f.sysrootAt(t, 1))
		if err != nil {
			t.Fatal(err)
		}
		id := fmt.Sprintf("%032x", 0x5c001+i)
		sys.MachineIDFile = filepath.Join(t.TempDir(), "machine-id")
		if err := os.WriteFile(sys.MachineIDFile, []byte(id+"\n"), 0o444); err != nil {
			t.Fatal(err)
		}
		db, err := OpenDB(filepath.Join(sys.StateDir(), "state.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		core, err := NewCore(ctx, Options{Sysroot: sys, DB: db, Trust: kr, Policy: PolicyAuto, Peers: func() []string { return []string{f.url} }})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(core.Wait)
		l := &laptop{sys: sys, core: core, log: newStateLog(), in: blobstore.InRollout(blobstore.RolloutBucket(id, "school-laptop", 2), 20)}
		core.Observe(l.log)
		laptops[i] = l
		if l.in {
			want = append(want, i)
		}
	}
	// The machine ids are fixed, so the set is too: a fifth, roughly.
	if len(want) == 0 || len(want) > 8 {
		t.Fatalf("%d of %d laptops predicted in a 20%% rollout", len(want), n)
	}
	t.Logf("predicted in the 20%% rollout: laptops %v", want)

	pct := 20
	os.WriteFile(f.tree+"/etc/os-release", []byte("VERSION=2\n"), 0o644)
	if _, err := f.repo.Publish(ctx, f.tree, blobstore.PublishOptions{Image: "school-laptop", Version: 2, Signer: f.signer, Rollout: &pct}); err != nil {
		t.Fatal(err)
	}
	for _, l := range laptops {
		if err := l.core.Poll(); err != nil {
			t.Fatal(err)
		}
	}
	var got []int
	for i, l := range laptops {
		final := StateUpdateReady
		if l.in {
			final = StateUpdateApplied
		}
		if err := l.log.waitFor(ctx, l.core, final, 1); err != nil {
			t.Fatalf("laptop %d: %v", i, err)
		}
		st, err := l.sys.Status()
		if err != nil {
			t.Fatal(err)
		}
		if st.Current == 2 {
			got = append(got, i)
		}
		if l.in {
			continue
		}
		p := l.core.Props()
		if st.Current != 1 || st.Staged != 2 || p.RolloutPercent != 20 || !p.RolloutWaiting {
			t.Errorf("laptop %d outside the rollout: status %+v, props rollout %d%% waiting %v; want v1 current, v2 staged, waiting at 20%%", i, st, p.RolloutPercent, p.RolloutWaiting)
		}
		// It holds v2 for its neighbours all the same.
		if ix, err := l.sys.Repo().ReadIndex(); err != nil || !hasVersion(ix, 2) {
			t.Errorf("laptop %d does not list v2 to serve its neighbours (%v)", i, err)
		}
		if err := l.core.Apply(); !errors.Is(err, apply.ErrNotRolledOut) {
			t.Errorf("laptop %d: Apply outside the rollout: %v, want ErrNotRolledOut", i, err)
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("laptops %v applied v2 at 20%%, want exactly %v", got, want)
	}

	if _, err := f.repo.SetRollout("school-laptop", 2, 100, f.signer); err != nil {
		t.Fatal(err)
	}
	for i, l := range laptops {
		if l.in {
			continue
		}
		if err := pollAgain(ctx, l.core); err != nil {
			t.Fatal(err)
		}
		if err := l.log.waitFor(ctx, l.core, StateUpdateApplied, 1); err != nil {
			t.Fatalf("laptop %d at 100%%: %v", i, err)
		}
		seen := l.log.states()
		// Nothing was applied before the rollout was raised: the first
		// apply comes after the second poll.
		if first, second := slices.Index(seen, StateApplying), nthIndex(seen, StatePolling, 2); first < second {
			t.Errorf("laptop %d applied before the rollout reached it: states %v", i, seen)
		}
		if st, _ := l.sys.Status(); st.Current != 2 {
			t.Errorf("laptop %d at 100%%: current %d", i, st.Current)
		}
	}
}

func hasVersion(ix *blobstore.Index, v uint64) bool {
	_, ok := ix.Find("school-laptop", v)
	return ok
}

// nthIndex is the index of the nth s in seen (-1: fewer).
func nthIndex(seen []State, s State, nth int) int {
	for i, x := range seen {
		if x == s {
			if nth--; nth == 0 {
				return i
			}
		}
	}
	return -1
}

// TestSeedAnnouncesARaisedRollout: a seed announces its version again,
// from the one before, when the rollout list changes, so laptops held back
// poll and find the rollout raised; an unchanged list announces nothing.
func TestSeedAnnouncesARaisedRollout(t *testing.T) {
	f := newTestFleet(t)
	f.publish(t, 1)
	pct := 20
	os.WriteFile(f.tree+"/etc/os-release", []byte("VERSION=2\n"), 0o644)
	if _, err := f.repo.Publish(context.Background(), f.tree, blobstore.PublishOptions{Image: "school-laptop", Version: 2, Signer: f.signer, Rollout: &pct}); err != nil {
		t.Fatal(err)
	}
	_, disc := startRecordedSeed(t, f)
	if _, err := f.repo.SetRollout("school-laptop", 2, 100, f.signer); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-disc.changed:
		if got != [2]uint64{1, 2} {
			t.Errorf("announced %v, want v2 to the laptops on v1", got)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no announcement after the rollout was raised")
	}
}
