package apply_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/peerup/peerup/apply"
	"github.com/peerup/peerup/transfer"
)

// TestSwarmSpreadsAndSurvivesABadPeer: a laptop fetches from every peer
// that has the version, and a peer that serves wrong bytes costs it nothing
// but that peer's share.
func TestSwarmSpreadsAndSurvivesABadPeer(t *testing.T) {
	f := newFleet(t)
	tree := makeTree(t, "VERSION=1\n")
	for i := range 40 {
		write(t, filepath.Join(tree, fmt.Sprintf("usr/share/doc/file-%02d", i)), strings.Repeat(fmt.Sprint(i), 5000+i), 0o644)
	}
	f.publish(tree, 1)
	repo := transfer.NewHandler(f.repo.Dir(), nil)
	serve := func(n *atomic.Int64, evil bool) *transfer.Client {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasPrefix(r.URL.Path, "/objects/") {
				n.Add(1)
				if evil {
					w.Write([]byte("not what the manifest says"))
					return
				}
			}
			repo.ServeHTTP(w, r)
		}))
		t.Cleanup(srv.Close)
		c, _ := transfer.NewClient(srv.URL, nil)
		return c
	}
	var a, b, c atomic.Int64
	good1, evil, good2 := serve(&a, false), serve(&b, true), serve(&c, false)
	s := newSysroot(t)
	res, err := s.Pull(context.Background(), good1, apply.PullOptions{Trust: f.trust, Peers: []apply.Source{evil, good2}})
	if err != nil {
		t.Fatal(err)
	}
	if a.Load() == 0 || c.Load() == 0 {
		t.Errorf("objects from the good peers: %d and %d; the work was not spread", a.Load(), c.Load())
	}
	if b.Load() > 4 {
		t.Errorf("the bad peer was asked %d times; it should be dropped after its first bad answer (4 fetches run at once)", b.Load())
	}
	t.Logf("%d objects: peer A %d, bad peer %d, peer C %d", res.FetchedObjects, a.Load(), b.Load(), c.Load())
	if _, _, err := s.Apply(1); err != nil {
		t.Fatal(err)
	}
	compareTrees(t, tree, filepath.Join(s.Dir(), "current")+"/")
}

// TestOpenSourceSuggestsAURL: a server given without its scheme is not
// taken for a folder that does not exist.
func TestOpenSourceSuggestsAURL(t *testing.T) {
	for _, tc := range []struct{ loc, want string }{
		{"127.0.0.1:7380", "give its URL: http://127.0.0.1:7380/"},
		{"school-server:7380/", "give its URL: http://school-server:7380/"},
		{"[fe80::1]:7380", "give its URL: http://[fe80::1]:7380/"},
		{"/media/stick", ""},
		{"http://school-server:7380/", ""},
	} {
		_, err := apply.OpenSource(tc.loc)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.loc, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: err = %v, want one saying %q", tc.loc, err, tc.want)
		}
	}
}
