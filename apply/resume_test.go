package apply_test

import (
	"context"
	"crypto/rand"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/peerup/peerup/apply"
	"github.com/peerup/peerup/transfer"
)

// countingWriter counts the body bytes a handler sends.
type countingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (c countingWriter) Write(b []byte) (int, error) {
	c.n.Add(int64(len(b)))
	return c.ResponseWriter.Write(b)
}

// TestCutDownloadResumesFromAnotherPeer: a 30 MB object cut off at 90% by
// one peer is finished from another with a Range request, and the whole
// object is still verified.
func TestCutDownloadResumesFromAnotherPeer(t *testing.T) {
	f := newFleet(t)
	tree := makeTree(t, "VERSION=1\n")
	f.publish(tree, 1)
	s := newSysroot(t)
	f.update(s, 1)
	big := make([]byte, 30<<20)
	rand.Read(big)
	write(t, tree+"/usr/lib/big-30mb.so", string(big), 0o755)
	f.publish(tree, 2)
	repo := transfer.NewHandler(f.repo.Dir(), nil)
	isBig := func(r *http.Request) bool {
		return strings.HasPrefix(r.URL.Path, "/objects/") && r.Header.Get("Range") == "" && r.ContentLength <= 0 && bigObject(f, r.URL.Path)
	}

	// Peer A sends 90% of the big object, then drops the connection.
	cut := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !isBig(r) {
			repo.ServeHTTP(w, r)
			return
		}
		w.Header().Set("Content-Length", "31457280")
		w.WriteHeader(http.StatusOK)
		w.Write(big[:len(big)*9/10])
		if hj, ok := w.(http.Hijacker); ok {
			conn, _, _ := hj.Hijack()
			conn.Close()
		}
	}))
	defer cut.Close()
	var sentB atomic.Int64
	peerB := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/objects/") {
			w = countingWriter{w, &sentB}
		}
		repo.ServeHTTP(w, r)
	}))
	defer peerB.Close()

	before := snapshot(t, s.Dir())
	clA, _ := transfer.NewClient(cut.URL, nil)
	if _, err := s.Pull(context.Background(), clA, apply.PullOptions{Version: 2, Trust: f.trust}); err == nil {
		t.Fatal("pull from the peer that hung up succeeded")
	}
	if after := snapshot(t, s.Dir()); after != before {
		t.Fatal("the failed pull changed the sysroot")
	}
	clB, _ := transfer.NewClient(peerB.URL, nil)
	res, err := s.Pull(context.Background(), clB, apply.PullOptions{Version: 2, Trust: f.trust})
	if err != nil {
		t.Fatal(err)
	}
	if got := sentB.Load(); got > int64(len(big))/10+(1<<20) {
		t.Errorf("peer B sent %d bytes of the 30 MB object's last 10%%: the download started over", got)
	}
	t.Logf("peer B sent %d bytes; pull reports %d fetched", sentB.Load(), res.FetchedBytes)
	if _, _, err := s.Apply(2); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(s.Dir() + "/current/usr/lib/big-30mb.so")
	if string(got) != string(big) {
		t.Fatal("the resumed object differs")
	}
}

func bigObject(f *fleet, path string) bool {
	fi, err := os.Stat(f.repo.Dir() + path)
	return err == nil && fi.Size() == 30<<20
}
