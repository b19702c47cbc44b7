package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/peerup/peerup/apply"
	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/diff"
	"github.com/peerup/peerup/manifest"
	"github.com/peerup/peerup/transfer"
)

// announcer is a seed's discovery that only records what it announces.
type announcer struct{ changed chan [2]uint64 }

func (a *announcer) Peers() []string        { return nil }
func (a *announcer) Newer() <-chan struct{} { return nil }
func (a *announcer) Close() error           { return nil }
func (a *announcer) VersionChanged(_ context.Context, _ string, from, to uint64) {
	a.changed <- [2]uint64{from, to}
}

// startRecordedSeed starts a seed of the fleet's repo whose discovery
// records what it announces, until the test ends.
func startRecordedSeed(t *testing.T, f *testFleet) (*Seed, *announcer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	disc := &announcer{changed: make(chan [2]uint64, 4)}
	seed, err := StartSeed(ctx, Config{Repo: f.repo.Dir(), Trust: []string{f.pub}, Listen: "127.0.0.1:0"},
		func(string, uint64, int) (Discovery, error) { return disc, nil }, nil)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); seed.close() }) // its watch ends with ctx
	return seed, disc
}

// TestSeedAnnouncesOnlyWholeVersions: while `peerup publish` makes a
// version's encodings, the seed neither serves nor announces the version,
// and a laptop pulling from it finds nothing new; once the publish lists it,
// the seed announces it with its delta index in place, and the laptop
// fetches it as patches.
func TestSeedAnnouncesOnlyWholeVersions(t *testing.T) {
	f := newTestFleet(t)
	lib := f.tree + "/lib.so"
	publish := func(v int, fault func(string)) {
		t.Helper()
		body := strings.Repeat("the same long line of a library\n", 8192) + fmt.Sprintf("v%d\n", v)
		if err := os.WriteFile(lib, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(f.tree+"/etc/os-release", []byte(fmt.Sprintf("VERSION=%d\n", v)), 0o644)
		_, err := diff.Publish(context.Background(), f.repo, f.tree, diff.PublishOptions{
			PublishOptions: blobstore.PublishOptions{Image: "school-laptop", Signer: f.signer, Fault: fault, AllowSame: true},
			Deltas:         &diff.GenerateOptions{},
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	publish(1, nil)
	laptop := f.sysrootAt(t, 1)

	seed, disc := startRecordedSeed(t, f)
	seedURL := "http://" + seed.Addr.String() + "/"
	cl, err := transfer.NewClient(seedURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	kr, err := manifest.LoadKeyring(f.pub)
	if err != nil {
		t.Fatal(err)
	}
	s, err := apply.Open(laptop)
	if err != nil {
		t.Fatal(err)
	}
	pull := func() (*apply.PullResult, error) {
		return s.Pull(context.Background(), cl, apply.PullOptions{Trust: kr})
	}

	publish(2, func(point string) {
		if point != "list" {
			return
		}
		// Everything is in place but the index entry: give the seed time
		// to react to anything it could see.
		if _, err := os.Stat(f.repo.Layout().Deltas("school-laptop", 2)); err != nil {
			t.Errorf("delta index not in place before listing: %v", err)
		}
		select {
		case c := <-disc.changed:
			t.Errorf("the seed announced %v before the version was listed", c)
		case <-time.After(300 * time.Millisecond):
		}
		ix, err := cl.Index(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if e, ok := ix.Latest("school-laptop"); !ok || e.Version != 1 {
			t.Errorf("the seed serves newest %+v before the version was listed, want v1", e)
		}
		if _, err := pull(); !errors.Is(err, apply.ErrUpToDate) {
			t.Errorf("a laptop pulling from the seed before listing: %v, want up to date", err)
		}
	})
	select {
	case c := <-disc.changed:
		if c != [2]uint64{1, 2} {
			t.Fatalf("the seed announced %v, want v1 → v2", c)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the seed did not announce v2 once it was listed")
	}
	res, err := pull()
	if err != nil {
		t.Fatal(err)
	}
	if res.Version != 2 || res.PatchObjects == 0 {
		t.Fatalf("laptop pulled v%d with %d patches (%d whole): want v2 as patches", res.Version, res.PatchObjects, res.WholeObjects)
	}
}
