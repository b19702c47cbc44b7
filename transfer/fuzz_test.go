package transfer

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/manifest"
)

// fuzzPeer answers every request with one made-up response: the status,
// headers and body the fuzzer chose, exactly as a hostile peer could send
// them (the length it declares need not be the length it sends).
type fuzzPeer struct {
	status        int
	contentLength int64
	header        string // "Key: value" lines
	body          []byte
}

func (p *fuzzPeer) RoundTrip(r *http.Request) (*http.Response, error) {
	h := http.Header{}
	for _, line := range strings.Split(p.header, "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			h.Add(strings.TrimSpace(k), strings.TrimSpace(v))
		}
	}
	return &http.Response{
		StatusCode: p.status, Status: strconv.Itoa(p.status), Header: h,
		ContentLength: p.contentLength, Body: io.NopCloser(bytes.NewReader(p.body)), Request: r,
	}, nil
}

// FuzzClientResponse feeds arbitrary responses to every Client method.
// Whatever the peer sends: no panic; an object is kept only if its bytes
// are exactly the ones asked for; small files are never longer than their
// limit; every refusal is an error, never a silent success.
func FuzzClientResponse(f *testing.F) {
	obj := []byte("the real object bytes")
	idx := []byte("peerup-index 1\nschool-laptop 2 " + strings.Repeat("ab", 32) + "\n")
	f.Add(200, int64(-1), "", obj)
	f.Add(200, int64(len(obj)), "Content-Type: application/octet-stream", obj)
	f.Add(206, int64(5), "Content-Range: bytes 16-20/21", obj[16:])
	f.Add(206, int64(5), "Content-Range: bytes -5-20/21", obj[16:])
	f.Add(200, int64(3), "", obj)
	f.Add(200, int64(1<<40), "", obj)
	f.Add(200, int64(-1), "", idx)
	f.Add(404, int64(0), "", []byte(nil))
	f.Add(503, int64(0), "Retry-After: 2", []byte(nil))
	f.Add(429, int64(0), "Retry-After: 99999999999", []byte(nil))
	f.Add(302, int64(0), "Location: http://127.0.0.1:1/", []byte(nil))
	f.Add(200, int64(-1), "", []byte("peerup-manifest 1\n"))
	want := manifest.Digest(sha256.Sum256(obj))
	// One store for every input: each runs in its own batch, aborted at
	// the end, so nothing carries over.
	s, err := blobstore.Open(f.TempDir())
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, status int, contentLength int64, header string, body []byte) {
		if status < 100 || status > 999 {
			return // net/http itself refuses these before a client sees them
		}
		peer := &fuzzPeer{status: status, contentLength: contentLength, header: header, body: body}
		c, err := NewClient("http://peer.invalid/", &http.Client{Transport: peer})
		if err != nil {
			t.Fatal(err)
		}
		c.WithStall(Stall{Window: time.Minute, MinBytes: 1})
		ctx := context.Background()
		if ix, err := c.Index(ctx); err == nil && ix == nil {
			t.Fatal("Index: no error and no index")
		}
		var m, ix bytes.Buffer
		if sig, err := c.Manifest(ctx, "school-laptop", 2, 4<<10, &m); err == nil && (m.Len() > 4<<10 || len(sig) > manifest.MaxSignature) {
			t.Fatalf("Manifest: %d and %d bytes accepted", m.Len(), len(sig))
		}
		if sig, err := c.Deltas(ctx, "school-laptop", 2, 4<<10, &ix); err == nil && (ix.Len() > 4<<10 || len(sig) > manifest.MaxSignature) {
			t.Fatalf("Deltas: %d and %d bytes accepted", ix.Len(), len(sig))
		}
		if m.Len() > 4<<10 || ix.Len() > 4<<10 {
			t.Fatalf("a refused body wrote %d and %d bytes, more than the cap", m.Len(), ix.Len())
		}
		b, err := s.Begin()
		if err != nil {
			t.Fatal(err)
		}
		defer b.Abort()
		err = c.FetchObject(ctx, b, want, int64(len(obj)))
		if err != nil && b.Has(want) {
			t.Fatalf("FetchObject failed (%v) but kept the object", err)
		}
		if err != nil && status == 200 && !errors.Is(err, ErrPeer) && !errors.Is(err, blobstore.ErrMismatch) &&
			!errors.Is(err, blobstore.ErrTooShort) && !errors.Is(err, blobstore.ErrTooLong) {
			t.Fatalf("a bad 200 answer is not blamed on the peer: %v", err)
		}
		if err == nil {
			// Kept: its bytes must be the real ones.
			p, _ := b.ObjectPath(want)
			got, rerr := os.ReadFile(p)
			if rerr != nil || !bytes.Equal(got, obj) {
				t.Fatalf("kept %q, %v", got, rerr)
			}
		}
	})
}
