package daemon

import (
	"context"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/peerup/peerup/apply"
	"github.com/peerup/peerup/blobstore"
)

// TestSelectOffers: the poll's choice of what to fetch from whom, on its
// own. The newest version wins, its peers in discovery's order; older
// newer-than-current ones are fallbacks; current, older and bad versions
// are not offered (though their peers are recorded); failed peers only
// leave their error; a node without an image takes a peer's only one.
func TestSelectOffers(t *testing.T) {
	ix := func(entries ...blobstore.IndexEntry) *blobstore.Index {
		x := &blobstore.Index{}
		for _, e := range entries {
			x.Set(e)
		}
		return x
	}
	v := func(img string, n uint64) blobstore.IndexEntry { return blobstore.IndexEntry{Image: img, Version: n} }
	down := errors.New("connection refused")
	tests := []struct {
		name     string
		indexes  []*blobstore.Index
		errs     []error
		image    string
		current  uint64
		bad      uint64
		want     []offer
		wantImg  string
		records  int
		wantLast error
	}{
		{name: "no peers"},
		{name: "one newer", indexes: []*blobstore.Index{ix(v("laptop", 3))}, image: "laptop", current: 2,
			want: []offer{{3, []string{"p0"}}}, wantImg: "laptop", records: 1},
		{name: "newest wins, ties keep discovery's order, older are fallbacks",
			indexes: []*blobstore.Index{ix(v("laptop", 3)), ix(v("laptop", 5)), ix(v("laptop", 4)), ix(v("laptop", 5))},
			image:   "laptop", current: 2,
			want: []offer{{5, []string{"p1", "p3"}}, {4, []string{"p2"}}, {3, []string{"p0"}}}, wantImg: "laptop", records: 4},
		{name: "current and older are recorded, not offered",
			indexes: []*blobstore.Index{ix(v("laptop", 2)), ix(v("laptop", 1))}, image: "laptop", current: 2, records: 2},
		{name: "a version marked bad is passed over",
			indexes: []*blobstore.Index{ix(v("laptop", 4)), ix(v("laptop", 3))}, image: "laptop", current: 2, bad: 4,
			want: []offer{{3, []string{"p1"}}}, wantImg: "laptop", records: 2},
		{name: "only the node's image counts",
			indexes: []*blobstore.Index{ix(v("other", 9)), ix(v("laptop", 3), v("other", 7))}, image: "laptop", current: 2,
			want: []offer{{3, []string{"p1"}}}, wantImg: "laptop", records: 1},
		{name: "failed peers leave their error",
			indexes: []*blobstore.Index{nil, ix(v("laptop", 3))}, errs: []error{down, nil}, image: "laptop", current: 2,
			want: []offer{{3, []string{"p1"}}}, wantImg: "laptop", records: 1, wantLast: down},
		{name: "a node without an image takes a peer's only one",
			indexes: []*blobstore.Index{ix(v("laptop", 1)), ix(v("laptop", 1), v("other", 1))},
			want:    []offer{{1, []string{"p0"}}}, wantImg: "laptop", records: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			peers := make([]string, len(tc.indexes))
			errs := tc.errs
			if errs == nil {
				errs = make([]error, len(tc.indexes))
			}
			for i := range peers {
				peers[i] = "p" + string(rune('0'+i))
			}
			bad := func(v uint64) bool { return v == tc.bad }
			sel := selectOffers(peers, tc.indexes, errs, tc.image, tc.current, bad, time.Unix(0, 0))
			if !reflect.DeepEqual(sel.groups, tc.want) {
				t.Errorf("offers = %v, want %v", sel.groups, tc.want)
			}
			if sel.image != tc.wantImg {
				t.Errorf("image = %q, want %q", sel.image, tc.wantImg)
			}
			if len(sel.records) != tc.records {
				t.Errorf("%d peers recorded, want %d", len(sel.records), tc.records)
			}
			if sel.lastErr != tc.wantLast {
				t.Errorf("last error = %v, want %v", sel.lastErr, tc.wantLast)
			}
		})
	}
}

// blockingSource answers Index only once released, so a poll stays running.
type blockingSource struct {
	apply.Source
	release chan struct{}
}

func (b blockingSource) Index(ctx context.Context) (*blobstore.Index, error) {
	select {
	case <-b.release:
		return nil, errors.New("no index")
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// TestAskingForTheRunningOperationJoinsIt: "peerup check" typed while the
// daemon polls on its own joins that poll; asking for another operation
// still fails with WrongState.
func TestAskingForTheRunningOperationJoinsIt(t *testing.T) {
	f := newTestFleet(t)
	f.publish(t, 1)
	s, err := apply.Open(f.sysrootAt(t, 1))
	if err != nil {
		t.Fatal(err)
	}
	db, err := OpenDB(t.TempDir() + "/state.db")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	release := make(chan struct{})
	c, err := NewCore(context.Background(), Options{
		Sysroot: s,
		DB:      db,
		Peers:   func() []string { return []string{"http://peer.invalid/"} },
		Open:    func(string) (apply.Source, error) { return blockingSource{release: release}, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Poll(); err != nil {
		t.Fatal(err)
	}
	if err := c.Poll(); err != nil {
		t.Errorf("Poll while polling: %v, want it to join the running poll", err)
	}
	var ws *WrongStateError
	if err := c.Fetch(); !errors.As(err, &ws) {
		t.Errorf("Fetch while polling: %v, want WrongState", err)
	}
	if err := c.Rollback(); !errors.As(err, &ws) {
		t.Errorf("Rollback while polling: %v, want WrongState", err)
	}
	close(release)
	c.Wait()
	if st := c.Props().State; st == StatePolling {
		t.Errorf("state after the poll ended: %s", st)
	}
}

// TestAskOrder: configured sources first as given, then discovered peers
// that answered before, then the rest in the shuffle's order; banned and
// repeated peers are left out.
func TestAskOrder(t *testing.T) {
	reverse := func(n int, swap func(int, int)) {
		for i := 0; i < n/2; i++ {
			swap(i, n-1-i)
		}
	}
	tests := []struct {
		name              string
		first, discovered []string
		answered          map[string]bool
		banned            string
		want              []string
	}{
		{name: "nothing", want: nil},
		{name: "configured keep their order", first: []string{"/media/stick", "http://server/"}, want: []string{"/media/stick", "http://server/"}},
		{
			name:       "a flood claiming newer versions goes behind the peer that answered before",
			first:      []string{"http://server/"},
			discovered: []string{"http://forged1/", "http://forged2/", "http://laptop/", "http://forged3/"},
			answered:   map[string]bool{"http://laptop/": true},
			want:       []string{"http://server/", "http://laptop/", "http://forged3/", "http://forged2/", "http://forged1/"},
		},
		{
			name:       "banned and repeated peers are left out",
			first:      []string{"http://server/"},
			discovered: []string{"http://server/", "http://bad/", "http://a/"},
			banned:     "http://bad/",
			want:       []string{"http://server/", "http://a/"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := askOrder(tc.first, tc.discovered, tc.answered, func(u string) bool { return u == tc.banned }, reverse)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("askOrder = %q, want %q", got, tc.want)
			}
		})
	}
}
