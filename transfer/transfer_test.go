package transfer

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/manifest"
)

func TestServerServesOnlyRepoPaths(t *testing.T) {
	repo, err := blobstore.OpenRepo(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	data := strings.Repeat("object bytes ", 100)
	d := manifest.Digest(sha256.Sum256([]byte(data)))
	b, _ := repo.Begin()
	b.Put(context.Background(), d, int64(len(data)), strings.NewReader(data))
	b.Commit()
	os.WriteFile(filepath.Join(repo.Dir(), "secret"), []byte("private"), 0o600)
	srv := httptest.NewServer(NewHandler(repo.Dir(), nil))
	defer srv.Close()

	tests := []struct {
		path string
		want int
	}{
		{"/peerup-repo", 200},
		{"/" + blobstore.Layout{}.Object(d), 200},
		{"/secret", 404},
		{"/lock", 404},
		{"/objects/../secret", 404},
		{"/objects/%2e%2e/secret", 404},
		{"/images/x/../../secret", 404},
		{"/files/" + d.String()[:2] + "/" + d.String(), 404},
		{"/staging/", 404},
		{"/objects/" + d.String()[:2] + "/" + strings.ToUpper(d.String()), 404},
	}
	for _, tc := range tests {
		req, _ := http.NewRequest("GET", srv.URL+tc.path, nil)
		req.URL.Opaque = tc.path // send the path exactly as written, unnormalised
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("GET %s = %d, want %d", tc.path, resp.StatusCode, tc.want)
		}
	}
	req, _ := http.NewRequest("GET", srv.URL+"/"+blobstore.Layout{}.Object(d), nil)
	req.Header.Set("Range", "bytes=100-")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent || string(got) != data[100:] {
		t.Errorf("Range request: %d, %d bytes", resp.StatusCode, len(got))
	}
	resp, _ = http.Post(srv.URL+"/peerup-repo", "text/plain", nil)
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST = %d", resp.StatusCode)
	}
}

// hostile serves whatever body a test gives for every path.
func hostile(t *testing.T, h http.HandlerFunc) *Client {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	c, err := NewClient(srv.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestClientRefusesBadPeers(t *testing.T) {
	data := "the real object"
	d := manifest.Digest(sha256.Sum256([]byte(data)))
	size := int64(len(data))
	endless := func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(data))
		buf := make([]byte, 64<<10)
		for i := 0; i < 1<<10; i++ { // 64 MiB unless the client hangs up
			if _, err := w.Write(buf); err != nil {
				return
			}
		}
	}
	tests := []struct {
		name string
		h    http.HandlerFunc
		want error
	}{
		{"wrong bytes", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("the fake object")) }, blobstore.ErrMismatch},
		{"truncated", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte(data[:4])) }, blobstore.ErrTooShort},
		{"endless", endless, blobstore.ErrTooLong},
		{"declares too much", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "1000000")
			w.Write([]byte(data))
		}, ErrPeer},
		{"not found", func(w http.ResponseWriter, r *http.Request) { http.NotFound(w, r) }, ErrNotFound},
		{"redirect", func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "http://127.0.0.1:1/", http.StatusFound)
		}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := blobstore.Open(t.TempDir())
			b, _ := s.Begin()
			defer b.Abort()
			err := hostile(t, tc.h).FetchObject(context.Background(), b, d, size)
			if err == nil {
				t.Fatal("accepted")
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if b.Has(d) {
				t.Fatal("bad bytes kept under the object's name")
			}
		})
	}
	t.Run("endless index", func(t *testing.T) {
		_, err := hostile(t, endless).Index(context.Background())
		if !errors.Is(err, ErrPeer) {
			t.Fatalf("err = %v", err)
		}
	})
}

// TestUploadCapAnswersBusy: at its upload cap a node answers 503 with
// Retry-After at once, and the client reports ErrBusy (no fault of the
// peer's), so the laptop asks a neighbour instead.
func TestUploadCapAnswersBusy(t *testing.T) {
	repo, _ := blobstore.OpenRepo(t.TempDir())
	data := "an object"
	d := manifest.Digest(sha256.Sum256([]byte(data)))
	b, _ := repo.Begin()
	b.Put(context.Background(), d, int64(len(data)), strings.NewReader(data))
	b.Commit()
	h := NewHandler(repo.Dir(), nil).WithLimits(Limits{MaxUploads: 1})
	srv := httptest.NewServer(h)
	defer srv.Close()
	h.slots <- struct{}{} // one upload in progress
	resp, err := http.Get(srv.URL + "/" + blobstore.Layout{}.Object(d))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("at the cap: %s, Retry-After %q", resp.Status, resp.Header.Get("Retry-After"))
	}
	if resp, _ := http.Get(srv.URL + "/index"); resp.StatusCode == http.StatusServiceUnavailable {
		t.Error("the cap applies to objects, not the small index")
	}
	c, _ := NewClient(srv.URL, nil)
	s, _ := blobstore.Open(t.TempDir())
	bb, _ := s.Begin()
	defer bb.Abort()
	if err := c.FetchObject(context.Background(), bb, d, int64(len(data))); !errors.Is(err, ErrBusy) {
		t.Fatalf("err = %v, want ErrBusy", err)
	}
	<-h.slots
	if err := c.FetchObject(context.Background(), bb, d, int64(len(data))); err != nil {
		t.Fatalf("below the cap: %v", err)
	}
}

// TestOneUploadPerObject covers the seed's super-seeding rule
// (Limits.OncePerObject): while an object is on its way to one peer, and
// for lendCooldown after, others asking for it are told to wait (503 with
// Retry-After) so that they take it from that peer instead; other objects,
// HEAD requests and the small files are never held back, and
// without the rule every ask is served.
func TestOneUploadPerObject(t *testing.T) {
	repo, _ := blobstore.OpenRepo(t.TempDir())
	var ds []manifest.Digest
	b, _ := repo.Begin()
	for _, data := range []string{"object one", "object two"} {
		d := manifest.Digest(sha256.Sum256([]byte(data)))
		b.Put(context.Background(), d, int64(len(data)), strings.NewReader(data))
		ds = append(ds, d)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	one, two := "/"+blobstore.Layout{}.Object(ds[0]), "/"+blobstore.Layout{}.Object(ds[1])
	marker := "/" + blobstore.Layout{}.Marker()
	type step struct {
		method, path string
		before       func(h *Handler) // sets the in-flight state, if any
		want         int
	}
	// The test server is on 127.0.0.1: lendKey's LAN.
	inFlight := func(p string) func(h *Handler) { return func(h *Handler) { h.inFlight["127.0.0.1 "+p] = time.Time{} } }
	cooled := func(p string) func(h *Handler) {
		return func(h *Handler) { h.inFlight["127.0.0.1 "+p] = time.Now().Add(-lendCooldown - time.Second) }
	}
	tests := []struct {
		name  string
		once  bool
		steps []step
	}{
		{"second asker just after the upload waits", true, []step{
			{"GET", one, nil, 200}, {"GET", one, nil, 503}}},
		{"second asker during the upload waits", true, []step{
			{"GET", one, inFlight(one), 503}}},
		{"after the cooldown it is served again", true, []step{
			{"GET", one, nil, 200}, {"GET", one, cooled(one), 200}}},
		{"another object is served", true, []step{
			{"GET", one, nil, 200}, {"GET", two, nil, 200}}},
		{"HEAD is not an upload", true, []step{
			{"HEAD", one, nil, 200}, {"HEAD", one, nil, 200}, {"GET", one, nil, 200}, {"HEAD", one, nil, 200}}},
		{"the small files are never held back", true, []step{
			{"GET", marker, nil, 200}, {"GET", marker, nil, 200}}},
		{"without the rule every ask is served", false, []step{
			{"GET", one, nil, 200}, {"GET", one, nil, 200}, {"GET", one, nil, 200}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := NewHandler(repo.Dir(), nil).WithLimits(Limits{OncePerObject: tc.once, RequestRate: -1})
			srv := httptest.NewServer(h)
			defer srv.Close()
			for i, st := range tc.steps {
				if st.before != nil {
					st.before(h)
				}
				req, _ := http.NewRequest(st.method, srv.URL+st.path, nil)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != st.want {
					t.Fatalf("step %d: %s %s = %d, want %d", i, st.method, st.path, resp.StatusCode, st.want)
				}
				if st.want == 503 && resp.Header.Get("Retry-After") == "" {
					t.Errorf("step %d: 503 without Retry-After", i)
				}
			}
		})
	}
}

// TestOnlyUpstreamClientsTakeTheProxy: the client for an admin-given
// upstream follows http_proxy; the one every LAN peer is fetched with
// (DefaultHTTPClient, the daemon's) has no proxy at all, so the school's
// proxy never sees LAN traffic.
func TestOnlyUpstreamClientsTakeTheProxy(t *testing.T) {
	if DefaultHTTPClient().Transport.(*http.Transport).Proxy != nil {
		t.Error("the LAN client has a proxy")
	}
	if UpstreamHTTPClient().Transport.(*http.Transport).Proxy == nil {
		t.Error("the upstream client ignores http_proxy")
	}
}

// TestUnreachablePeerSaysSoOnce: an error reaching a peer names the URL
// once and says what went wrong, and a deadline still reads as one.
func TestUnreachablePeerSaysSoOnce(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + ln.Addr().String() + "/"
	ln.Close() // nobody listens there now
	c, err := NewClient(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Index(context.Background())
	if err == nil || strings.Count(err.Error(), "http://") != 1 || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("err = %v, want the URL once and the refusal", err)
	}
	ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	if _, err := c.Index(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want one wrapping the deadline", err)
	}
}
