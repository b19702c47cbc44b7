package transfer_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/internal/hostile"
	"github.com/peerup/peerup/manifest"
	"github.com/peerup/peerup/transfer"
)

// attackDeadline bounds every attack: a defence that hangs fails the test
// by its context, not by a stopwatch.
const attackDeadline = 30 * time.Second

func client(t *testing.T, url string) *transfer.Client {
	t.Helper()
	c, err := transfer.NewClient(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestAttackSlowRetrievalClient asserts that a peer trickling a byte a
// second, or sending headers and then nothing, is cut off with ErrStalled
// (and ErrPeer, so it is blamed) once it falls below the minimum rate —
// for objects and for the small files alike — and nothing is kept.
func TestAttackSlowRetrievalClient(t *testing.T) {
	data := []byte(strings.Repeat("object ", 100))
	d := manifest.Digest(sha256.Sum256(data))
	p := hostile.New(t, nil)
	p.On("/objects/", "", hostile.Trickle(data, time.Second))
	p.On("/index", "", hostile.Silent())
	c := client(t, p.URL()).WithStall(transfer.Stall{Window: 200 * time.Millisecond, MinBytes: 64})
	s, _ := blobstore.Open(t.TempDir())
	b, _ := s.Begin()
	defer b.Abort()
	ctx := hostile.Context(t, attackDeadline)
	err := c.FetchObject(ctx, b, d, int64(len(data)))
	if !errors.Is(err, transfer.ErrStalled) || !errors.Is(err, transfer.ErrPeer) {
		t.Fatalf("trickled object: err = %v, want ErrStalled and ErrPeer", err)
	}
	if ctx.Err() != nil {
		t.Fatal("the deadline, not the stall check, ended the fetch")
	}
	if b.Has(d) {
		t.Fatal("a trickled object was kept")
	}
	if _, err := c.Index(ctx); !errors.Is(err, transfer.ErrStalled) {
		t.Fatalf("silent index: err = %v, want ErrStalled", err)
	}
}

// TestAttackTrickleAboveTheMinimumRate: a peer that sends a byte every
// 10 ms keeps above the per-window minimum for ever (as 20,000 bytes every
// 25 s does against the default), so the object's own deadline (grace plus
// its size at the floor rate) cuts it off and blames it, and nothing is
// kept.
func TestAttackTrickleAboveTheMinimumRate(t *testing.T) {
	data := []byte(strings.Repeat("object ", 1000))
	d := manifest.Digest(sha256.Sum256(data))
	p := hostile.New(t, nil)
	p.On("/objects/", "", hostile.Trickle(data, 10*time.Millisecond))
	// Window check: 10 bytes in 200 ms passes (the trickle sends 20).
	// Deadline: 300 ms + 7000 bytes at 10 kB/s = 1 s, where the trickle
	// needs 70 s.
	stall := transfer.Stall{Window: 200 * time.Millisecond, MinBytes: 10, FloorRate: 10000, Grace: 300 * time.Millisecond}
	c := client(t, p.URL()).WithStall(stall)
	s, _ := blobstore.Open(t.TempDir())
	b, _ := s.Begin()
	defer b.Abort()
	ctx := hostile.Context(t, attackDeadline)
	err := c.FetchObject(ctx, b, d, int64(len(data)))
	if !errors.Is(err, transfer.ErrStalled) || !errors.Is(err, transfer.ErrPeer) || !strings.Contains(err.Error(), "not delivered within") {
		t.Fatalf("trickled object: err = %v, want ErrStalled and ErrPeer for a missed deadline", err)
	}
	if ctx.Err() != nil {
		t.Fatal("the test's deadline, not the transfer's, ended the fetch")
	}
	if b.Has(d) {
		t.Fatal("a trickled object was kept")
	}
}

// TestAttackEndlessManifest asserts that an endless manifest (no length
// declared) is refused at the client's limit with ErrPeer, holding at most
// about that limit in memory, and that a declared length over the limit is
// refused before any of the body is read.
func TestAttackEndlessManifest(t *testing.T) {
	p := hostile.New(t, nil)
	p.On("/images/", ".manifest", hostile.Endless([]byte("peerup-manifest 1\n")))
	p.On("/images/", ".deltas", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "200000000000")
		w.Write([]byte("peerup-deltas 1\n"))
	}))
	p.On("/index", "", hostile.Endless([]byte("peerup-index 1\n")))
	const limit = 2 << 20
	c := client(t, p.URL())
	ctx := hostile.Context(t, attackDeadline)
	var err error
	var got countingWriter
	n := hostile.Allocated(func() { _, err = c.Manifest(ctx, "school-laptop", 2, limit, &got) })
	if !errors.Is(err, transfer.ErrPeer) || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("endless manifest: err = %v", err)
	}
	if got > limit {
		t.Errorf("an endless manifest wrote %d bytes, limit is %d", got, limit)
	}
	// Streamed to the writer: the manifest is never held, so what it costs
	// is buffers, not its length.
	if n > limit/2 {
		t.Errorf("an endless manifest cost %d KiB of allocations, limit is %d KiB", n>>10, limit>>10)
	}
	if _, err := c.Deltas(ctx, "school-laptop", 2, limit, io.Discard); !errors.Is(err, transfer.ErrPeer) {
		t.Fatalf("oversized declared delta index: err = %v", err)
	}
	n = hostile.Allocated(func() { _, err = c.Index(ctx) })
	if !errors.Is(err, transfer.ErrPeer) || n > 8*blobstore.MaxIndex {
		t.Fatalf("endless index: err = %v after %d KiB", err, n>>10)
	}
}

// servedRepo is a repo holding one object, served by NewServer on a
// limited listener, as the daemon serves it.
func servedRepo(t *testing.T, l transfer.Limits, objSize int, tune func(*http.Server)) (url string, d manifest.Digest, dir string) {
	t.Helper()
	repo, err := blobstore.OpenRepo(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	data := []byte(strings.Repeat("x", objSize))
	d = manifest.Digest(sha256.Sum256(data))
	b, _ := repo.Begin()
	if err := b.Put(context.Background(), d, int64(len(data)), strings.NewReader(string(data))); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	ln, err := transfer.Listen("127.0.0.1:0", l)
	if err != nil {
		t.Fatal(err)
	}
	srv := transfer.NewServer(ln.Addr().String(), transfer.NewHandler(repo.Dir(), nil).WithLimits(l))
	if tune != nil {
		tune(srv)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String() + "/", d, repo.Dir()
}

// TestAttackServerPathTraversal asserts that request paths that climb out
// of the repo, name its private parts, or follow a symlink planted in it
// to /etc are all 404: only repo files are ever served.
func TestAttackServerPathTraversal(t *testing.T) {
	url, d, dir := servedRepo(t, transfer.Limits{}, 100, nil)
	evil := manifest.Digest(sha256.Sum256([]byte("evil")))
	os.MkdirAll(filepath.Join(dir, "objects", evil.String()[:2]), 0o755)
	if err := os.Symlink("/etc/passwd", blobstore.LayoutOf(dir).Object(evil)); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(dir, "images"), 0o755)
	os.Symlink("/etc", filepath.Join(dir, "images", "etc-link"))
	host := strings.TrimSuffix(strings.TrimPrefix(url, "http://"), "/")
	for _, path := range []string{
		"/" + blobstore.Layout{}.Object(evil), // symlink out of the repo
		"/images/etc-link/1.manifest",
		"/../../../../etc/passwd",
		"/objects/%2e%2e/%2e%2e/etc/passwd",
		"/objects/..%2f..%2fetc/passwd",
		"//etc/passwd",
		"/index/../lock",
		"/lock",
		"/staging/",
		"/files/" + d.String()[:2] + "/" + d.String(),
	} {
		conn, err := net.Dial("tcp", host)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", path)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		conn.Close()
		if resp.StatusCode/100 == 2 || strings.Contains(string(body), "root:") {
			t.Errorf("GET %s = %s, %q", path, resp.Status, body)
		}
	}
	resp, err := http.Get(url + blobstore.Layout{}.Object(d))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("a real object: %v %v", resp, err)
	}
	resp.Body.Close()
}

// TestAttackServerConnectionFlood asserts that one address cannot hold
// more than the per-peer number of connections: the next is closed at
// once, while the ones within the cap are still served.
func TestAttackServerConnectionFlood(t *testing.T) {
	const perPeer = 4
	url, _, _ := servedRepo(t, transfer.Limits{MaxConnsPerPeer: perPeer}, 10, nil)
	host := strings.TrimSuffix(strings.TrimPrefix(url, "http://"), "/")
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for range perPeer {
		c, err := net.Dial("tcp", host)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	// Accept runs in the server's goroutine: a request on each held
	// connection proves all of them were accepted and counted.
	for _, c := range held {
		fmt.Fprintf(c, "GET /peerup-repo HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("connection within the cap: %v %v", resp, err)
		}
	}
	extra, err := net.Dial("tcp", host)
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	extra.SetDeadline(time.Now().Add(attackDeadline))
	fmt.Fprintf(extra, "GET /peerup-repo HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp, err := http.ReadResponse(bufio.NewReader(extra), nil); err == nil {
		t.Fatalf("connection %d from one address was served: %s", perPeer+1, resp.Status)
	}
	held[0].Close()
	held = held[1:]
	// A freed place is taken again: poll with a bounded number of tries,
	// each a full round trip, since the close is seen asynchronously.
	for i := 0; ; i++ {
		c, err := net.Dial("tcp", host)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(attackDeadline))
		fmt.Fprintf(c, "GET /peerup-repo HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		c.Close()
		if err == nil && resp.StatusCode == 200 {
			break
		}
		if i > 1000 {
			t.Fatal("a closed connection's place was never freed")
		}
	}
}

// TestAttackServerSlowloris asserts that a client sending its request
// headers a byte at a time, or a client that asks for an object and never
// reads it, loses its connection (ReadHeaderTimeout, the write stall), so
// neither holds a connection or an upload slot for ever.
func TestAttackServerSlowloris(t *testing.T) {
	closed := make(chan struct{}, 16)
	url, d, _ := servedRepo(t, transfer.Limits{MaxUploads: 1, WriteStall: 200 * time.Millisecond}, 64<<20, func(s *http.Server) {
		s.ReadHeaderTimeout = 200 * time.Millisecond
		s.ConnState = func(_ net.Conn, st http.ConnState) {
			if st == http.StateClosed {
				closed <- struct{}{}
			}
		}
	})
	host := strings.TrimSuffix(strings.TrimPrefix(url, "http://"), "/")
	ctx := hostile.Context(t, attackDeadline)
	wait := func(what string) {
		t.Helper()
		select {
		case <-closed:
		case <-ctx.Done():
			t.Fatalf("%s: the server kept the connection", what)
		}
	}
	slow, err := net.Dial("tcp", host)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	fmt.Fprintf(slow, "GET /index HTTP/1.1\r\nHo") // and never the rest
	wait("slow headers")

	reader, err := net.Dial("tcp", host)
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()
	reader.(*net.TCPConn).SetReadBuffer(4096)
	fmt.Fprintf(reader, "GET /%s HTTP/1.1\r\nHost: x\r\n\r\n", blobstore.Layout{}.Object(d))
	wait("a client that never reads")
	// Its upload slot is free again: the one allowed upload is ours.
	resp, err := http.Get(url + blobstore.Layout{}.Object(d))
	if err != nil {
		t.Fatal(err)
	}
	n, _ := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || n != 64<<20 {
		t.Fatalf("after the stalled reader: %s, %d bytes", resp.Status, n)
	}
}

// TestAttackServerRequestFlood asserts that one address asking faster than
// its request budget gets 429 with Retry-After, which the client reads as
// a busy peer (no fault: it goes elsewhere and comes back).
func TestAttackServerRequestFlood(t *testing.T) {
	url, _, _ := servedRepo(t, transfer.Limits{RequestRate: 5}, 10, nil)
	limited := 0
	for range 100 {
		resp, err := http.Get(url + "peerup-repo")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusTooManyRequests {
			limited++
			if resp.Header.Get("Retry-After") == "" {
				t.Fatal("429 without Retry-After")
			}
		}
	}
	if limited == 0 {
		t.Fatal("100 requests at once from one address were all served")
	}
	if _, err := client(t, url).Index(hostile.Context(t, attackDeadline)); !errors.Is(err, transfer.ErrBusy) {
		t.Fatalf("client on a rate-limited peer: err = %v, want ErrBusy", err)
	}
}

// countingWriter counts what is written to it and keeps none of it.
type countingWriter int64

func (w *countingWriter) Write(p []byte) (int, error) {
	*w += countingWriter(len(p))
	return len(p), nil
}

// TestAttackPoisonedPartial: a peer declares the whole object, sends
// garbage and resets the connection; the partial is kept for resuming. The
// resume from an honest server then fails the hash through no fault of
// that server, so the client starts over from it once, and the object
// arrives: the honest server is never blamed for the poisoned prefix.
func TestAttackPoisonedPartial(t *testing.T) {
	data := bytes.Repeat([]byte("honest object bytes\n"), (blobstore.ResumeMin*2)/20)
	d := manifest.Digest(sha256.Sum256(data))
	rel := "/" + blobstore.Layout{}.Object(d)
	serve := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(data))
	})
	poison := hostile.New(t, nil)
	poison.OnPath(rel, hostile.Poisoned(serve))
	honest := hostile.New(t, nil)
	honest.OnPath(rel, serve)
	s, _ := blobstore.Open(t.TempDir())
	b, _ := s.Begin()
	defer b.Abort()
	ctx := hostile.Context(t, attackDeadline)
	if err := client(t, poison.URL()).FetchObject(ctx, b, d, int64(len(data))); err == nil {
		t.Fatal("the poisoned transfer was accepted")
	}
	if err := client(t, honest.URL()).FetchObject(ctx, b, d, int64(len(data))); err != nil {
		t.Fatalf("the honest server was refused after a poisoned partial: %v", err)
	}
	if !b.Has(d) {
		t.Fatal("the object is not in the batch")
	}
	if n := honest.HitsPath(rel); n != 2 {
		t.Errorf("the honest server was asked %d times, want 2 (the resume, then from the start)", n)
	}
}

// TestAttackSlowConnectionsFromManyAddresses: slow connections from many
// addresses, each under the per-address cap, fill the server's total;
// an honest client from a new address still gets its object, within 10 s,
// because the heaviest address gives up its oldest connection for it.
func TestAttackSlowConnectionsFromManyAddresses(t *testing.T) {
	const addrs, each = 12, 3 // 36 slow connections, 3 below the per-address cap
	url, d, _ := servedRepo(t, transfer.Limits{MaxConns: 30, MaxConnsPerPeer: 6}, 100, nil)
	host := strings.TrimSuffix(strings.TrimPrefix(url, "http://"), "/")
	var flood []net.Conn
	t.Cleanup(func() {
		for _, c := range flood {
			c.Close()
		}
	})
	for a := range addrs {
		dialer := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(10+a))}}
		for range each {
			c, err := dialer.Dial("tcp", host)
			if err != nil {
				t.Fatal(err)
			}
			c.Write([]byte("GET /index HTTP/1.1\r\n")) // and never the rest
			flood = append(flood, c)
		}
	}
	time.Sleep(200 * time.Millisecond) // let the server accept them all
	ctx := hostile.Context(t, 10*time.Second)
	hc := &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 200)}}).DialContext}}
	c, err := transfer.NewClient(url, hc)
	if err != nil {
		t.Fatal(err)
	}
	s, _ := blobstore.Open(t.TempDir())
	b, _ := s.Begin()
	defer b.Abort()
	if err := c.FetchObject(ctx, b, d, 100); err != nil {
		t.Fatalf("the honest client was kept out by the flood: %v", err)
	}
}
