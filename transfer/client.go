package transfer

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"golang.org/x/time/rate"

	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/manifest"
)

// Errors a caller can test for with errors.Is. ErrPeer blames the peer (bad
// status, bad data), as opposed to local failures; ErrNotFound is a peer
// that does not have what was asked for, which is no fault.
var (
	ErrPeer     = errors.New("peer error")
	ErrNotFound = errors.New("not found")
	// ErrBusy is a peer at its upload cap (503): no fault, ask another.
	ErrBusy = errors.New("peer busy")
)

// BusyError is a peer at its upload cap or request rate (503, 429): no
// fault. Wait is how long it asked the client to stay away (Retry-After,
// capped), DefaultRetryAfter when it did not say.
type BusyError struct {
	URL, Status string
	Wait        time.Duration
}

func (e *BusyError) Error() string {
	return fmt.Sprintf("GET %s: %v (%s; retry after %s)", e.URL, ErrBusy, e.Status, e.Wait)
}

func (e *BusyError) Unwrap() error { return ErrBusy }

// Retry-After bounds: what a peer may ask of a client that honours it.
const (
	DefaultRetryAfter = 2 * time.Second
	MaxRetryAfter     = 30 * time.Second
)

// retryAfter reads a Retry-After header in seconds (an HTTP date is not
// worth trusting a peer's clock for), capped.
func retryAfter(h string) time.Duration {
	n, err := strconv.Atoi(strings.TrimSpace(h))
	if err != nil || n < 0 {
		return DefaultRetryAfter
	}
	return min(time.Duration(n)*time.Second, MaxRetryAfter)
}

// RetryAfter is how long err, a failed fetch, says to wait before asking
// again: the longest Retry-After among the busy peers it reports, or
// DefaultRetryAfter.
func RetryAfter(err error) time.Duration {
	var b *BusyError
	if errors.As(err, &b) {
		return b.Wait
	}
	return DefaultRetryAfter
}

// Client fetches from one repo URL.
type Client struct {
	base    *url.URL
	http    *http.Client
	limiter *rate.Limiter
	stall   Stall
}

// WithStall sets the slowest this peer may be (DefaultStall if unset); a
// zero Window turns the check off.
func (c *Client) WithStall(s Stall) *Client {
	c.stall = s
	return c
}

// WithDownloadRate paces this client's downloads to bps bytes a second.
// Clients may share one budget by sharing the limiter's rate via Limits.
func (c *Client) WithDownloadRate(l *rate.Limiter) *Client {
	c.limiter = l
	return c
}

// NewRateLimiter makes a byte budget to share among clients (nil for 0).
func NewRateLimiter(bps int64) *rate.Limiter { return newLimiter(bps) }

// NewClient returns a client for the repo at base (http:// or https://).
func NewClient(base string, hc *http.Client) (*Client, error) {
	u, err := url.Parse(base)
	if err != nil {
		return nil, fmt.Errorf("repo URL %q: %w", base, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("repo URL %q: want http:// or https://", base)
	}
	if !strings.HasSuffix(u.Path, "/") {
		u.Path += "/"
	}
	if hc == nil {
		hc = DefaultHTTPClient()
	}
	return &Client{base: u, http: hc, stall: DefaultStall()}, nil
}

// DefaultHTTPClient has timeouts for each phase of a request but none for the
// whole body: a large object on a slow link may take long, and the caller's
// context bounds it. It never asks for gzip: the transport would inflate it
// unseen, and a 1 MiB bomb would pass every cap, which count bytes as read.
func DefaultHTTPClient() *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			ResponseHeaderTimeout: 30 * time.Second,
			MaxIdleConnsPerHost:   8,
			IdleConnTimeout:       60 * time.Second,
			DisableCompression:    true,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return errors.New("repo redirects are not followed")
		},
	}
}

// UpstreamHTTPClient is DefaultHTTPClient going through the proxy that
// http_proxy, https_proxy and no_proxy name: for a repo URL an admin gave
// (a mirror's upstream, `update --from`), which may be beyond a school's
// proxy. Never for a peer found on the LAN: its traffic stays on the LAN.
func UpstreamHTTPClient() *http.Client {
	c := DefaultHTTPClient()
	c.Transport.(*http.Transport).Proxy = http.ProxyFromEnvironment
	return c
}

// String is the repo URL.
func (c *Client) String() string { return c.base.String() }

func (c *Client) get(ctx context.Context, rel string) (*http.Response, error) {
	return c.getRange(ctx, rel, 0, 0)
}

// getRange GETs rel from offset on; the answer is 200 (whole) or 206.
// The response body is watched for stalls (see Stall) until it is closed,
// and must bring expect bytes (0: unknown) within the Stall's deadline.
func (c *Client) getRange(ctx context.Context, rel string, offset, expect int64) (*http.Response, error) {
	rel, query, _ := strings.Cut(rel, "?")
	u := c.base.JoinPath(rel)
	u.RawQuery = query
	if c.stall.Window > 0 {
		var w *watchdog
		ctx, w = watch(ctx, c.stall, "GET "+u.String(), expect)
		resp, err := c.do(ctx, u, offset)
		if err != nil {
			w.stop()
			return nil, w.blame(ctx, err)
		}
		resp.Body = &watchedBody{ReadCloser: resp.Body, ctx: ctx, w: w}
		return resp, nil
	}
	return c.do(ctx, u, offset)
}

func (c *Client) do(ctx context.Context, u *url.URL, offset int64) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	if offset > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", offset))
	}
	// Set even on a caller's own http.Client: a transport that did not add
	// Accept-Encoding itself never decompresses, so the caps below count
	// what is on the wire.
	req.Header.Set("Accept-Encoding", "identity")
	resp, err := c.http.Do(req)
	if err != nil {
		// net/http's own error repeats the method and URL ("Get \"…\":").
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("GET %s: %w", u, err)
	}
	switch resp.StatusCode {
	case http.StatusNotFound:
		resp.Body.Close()
		return nil, fmt.Errorf("GET %s: %w", u, ErrNotFound)
	case http.StatusServiceUnavailable, http.StatusTooManyRequests:
		resp.Body.Close()
		return nil, &BusyError{URL: u.String(), Status: resp.Status, Wait: retryAfter(resp.Header.Get("Retry-After"))}
	}
	if ce := resp.Header.Get("Content-Encoding"); (ce != "" && ce != "identity") || resp.Uncompressed {
		resp.Body.Close()
		return nil, fmt.Errorf("%w: GET %s: Content-Encoding %q was not asked for (only identity is accepted, so size limits count wire bytes)", ErrPeer, u, ce)
	}
	if c.limiter != nil {
		resp.Body = limitedReader{resp.Body, ctx, c.limiter}
	}
	if resp.StatusCode != http.StatusOK && (offset == 0 || resp.StatusCode != http.StatusPartialContent) {
		resp.Body.Close()
		return nil, fmt.Errorf("%w: GET %s: %s", ErrPeer, u, resp.Status)
	}
	return resp, nil
}

// getSmall reads a whole small file, refusing more than limit bytes.
func (c *Client) getSmall(ctx context.Context, rel string, limit int64) ([]byte, error) {
	resp, err := c.get(ctx, rel)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := readLimited(resp.Body, resp.ContentLength, limit)
	if errors.Is(err, errTooLarge) {
		return nil, fmt.Errorf("%w: %s is larger than the limit of %d bytes", ErrPeer, c.base.JoinPath(rel), limit)
	}
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", c.base.JoinPath(rel), err)
	}
	return b, nil
}

// Index fetches the repo's index of versions.
func (c *Client) Index(ctx context.Context) (*blobstore.Index, error) {
	b, err := c.getSmall(ctx, blobstore.Layout{}.Index(), blobstore.MaxIndex)
	if err != nil {
		return nil, err
	}
	ix, err := blobstore.ParseIndex(b)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrPeer, c.base, err)
	}
	return ix, nil
}

// getTo streams a file of at most limit bytes to w and fetches the
// detached signature at sigRel: the file's own, or that of the file it
// rebuilds.
func (c *Client) getTo(ctx context.Context, rel, sigRel string, limit int64, w io.Writer) ([]byte, error) {
	resp, err := c.get(ctx, rel)
	if err != nil {
		return nil, err
	}
	err = copyLimited(w, resp.Body, resp.ContentLength, limit)
	resp.Body.Close()
	if errors.Is(err, errTooLarge) {
		return nil, fmt.Errorf("%w: %s is larger than the limit of %d bytes", ErrPeer, c.base.JoinPath(rel), limit)
	}
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", c.base.JoinPath(rel), err)
	}
	return c.getSmall(ctx, sigRel, manifest.MaxSignature)
}

// Manifest streams a version's manifest, of at most limit bytes (see
// blobstore.ManifestLimit), to w and returns its signature, unverified.
func (c *Client) Manifest(ctx context.Context, image string, v uint64, limit int64, w io.Writer) (sig []byte, err error) {
	m := blobstore.Layout{}.Manifest(image, v)
	return c.getTo(ctx, m, blobstore.SignatureOf(m), limit, w)
}

// ManifestDelta streams the compressed delta that rebuilds version v's
// manifest from version from's, of at most limit bytes, to w, and returns
// the signature of v's manifest, unverified. A repo without one answers
// with an error wrapping ErrNotFound.
func (c *Client) ManifestDelta(ctx context.Context, image string, v, from uint64, limit int64, w io.Writer) (sig []byte, err error) {
	l := blobstore.Layout{}
	return c.getTo(ctx, l.ManifestDelta(image, v, from), l.Signature(image, v), limit, w)
}

// PackedDeltas streams a version's compressed delta index, of at most
// limit bytes, to w and returns the signature of the uncompressed one,
// unverified; ErrNotFound as for Deltas.
func (c *Client) PackedDeltas(ctx context.Context, image string, v uint64, limit int64, w io.Writer) (sig []byte, err error) {
	l := blobstore.Layout{}
	return c.getTo(ctx, l.PackedDeltas(image, v), l.DeltasSignature(image, v), limit, w)
}

// Deltas streams a version's delta index, of at most limit bytes (see
// blobstore.DeltasLimit), to w and returns its signature, unverified. A
// repo without one answers with an error wrapping ErrNotFound.
func (c *Client) Deltas(ctx context.Context, image string, v uint64, limit int64, w io.Writer) (sig []byte, err error) {
	d := blobstore.Layout{}.Deltas(image, v)
	return c.getTo(ctx, d, blobstore.SignatureOf(d), limit, w)
}

// List fetches image's signed list of kind k and its signature,
// unverified; an error wrapping ErrNotFound if the repo has none.
func (c *Client) List(ctx context.Context, k blobstore.ListKind, image string) (data, sig []byte, err error) {
	w := blobstore.Layout{}.List(k, image)
	if data, err = c.getSmall(ctx, w, k.Max()); err != nil {
		return nil, nil, err
	}
	if sig, err = c.getSmall(ctx, blobstore.SignatureOf(w), manifest.MaxSignature); err != nil {
		return nil, nil, err
	}
	return data, sig, nil
}

// FetchObject streams object d of the given size into the batch, which checks
// the size and hash; a peer that sends more than size bytes is cut off.
// A large object cut off part-way is resumed with a Range request, from
// this peer or another, the next time it is fetched.
func (c *Client) FetchObject(ctx context.Context, b *blobstore.Batch, d manifest.Digest, size int64) error {
	open := func(ctx context.Context, offset int64) (io.ReadCloser, int64, error) {
		resp, err := c.getRange(ctx, blobstore.Layout{}.Object(d), offset, size-offset)
		if err != nil {
			return nil, 0, err
		}
		start := int64(0)
		if resp.StatusCode == http.StatusPartialContent {
			var first, last, total int64
			if _, err := fmt.Sscanf(resp.Header.Get("Content-Range"), "bytes %d-%d/%d", &first, &last, &total); err != nil || total != size {
				resp.Body.Close()
				return nil, 0, fmt.Errorf("%w: object %s: bad Content-Range %q", ErrPeer, d, resp.Header.Get("Content-Range"))
			}
			start = first
		}
		if resp.ContentLength > size-start {
			resp.Body.Close()
			return nil, 0, fmt.Errorf("%w: object %s: peer offers %d bytes, manifest says %d", ErrPeer, d, resp.ContentLength, size)
		}
		return resp.Body, start, nil
	}
	return blame(b.PutFrom(ctx, d, size, open), c.base.String())
}

func sha256sum(b []byte) [32]byte { return sha256.Sum256(b) }
