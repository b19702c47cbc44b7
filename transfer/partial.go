package transfer

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"

	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/manifest"
)

// Partial is a pull in progress that lends its neighbours what it has
// verified so far: laptops fetching the same version pass objects to each
// other instead of each taking them all from the school server.
type Partial interface {
	// StagedObject returns the path of a verified object the pull holds.
	StagedObject(d manifest.Digest) (string, bool)
	// Have lists, from the from'th on, the objects the pull of image's
	// version v holds, and how many it holds in all; ok is false if no
	// such pull is running.
	Have(image string, v uint64, from int) (ds []manifest.Digest, total int, ok bool)
}

// WithPartial serves a running pull's verified objects beside the repo's,
// and its /have list.
func (h *Handler) WithPartial(p Partial) *Handler {
	h.partial = p
	return h
}

var haveRE = regexp.MustCompile(`^/have/([a-z0-9][a-z0-9._-]{0,62})/([1-9][0-9]{0,19})$`)

const haveMagic = "peerup-have 1"

// MaxHave bounds the entries of one /have answer, and so its size
// (MaxHaveBytes). A neighbour that verified more is learned about over a
// few polls, one a second.
const MaxHave = 4096

// serveHave answers GET /have/<image>/<v>?from=N (SPEC.md §5).
func (h *Handler) serveHave(w http.ResponseWriter, r *http.Request, m []string) {
	v, err := strconv.ParseUint(m[2], 10, 64)
	from, ferr := strconv.Atoi(r.URL.Query().Get("from"))
	if r.URL.Query().Get("from") == "" {
		from, ferr = 0, nil
	}
	if err != nil || ferr != nil || from < 0 || h.partial == nil {
		notFound(w)
		return
	}
	ds, total, ok := h.partial.Have(m[1], v, from)
	if !ok {
		notFound(w)
		return
	}
	if len(ds) > MaxHave {
		ds, total = ds[:MaxHave], from+MaxHave
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s\ntotal %d\n", haveMagic, total)
	for _, d := range ds {
		b.WriteString(d.String())
		b.WriteByte('\n')
	}
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("Content-Type", "text/plain")
	w.Write(b.Bytes())
}

// stagedFile opens an object a running pull holds, if the repo lacks it.
func (h *Handler) stagedFile(p string) (*os.File, bool) {
	if h.partial == nil {
		return nil, false
	}
	d, ok := blobstore.Layout{}.ObjectOf(strings.TrimPrefix(p, "/"))
	if !ok {
		return nil, false
	}
	sp, ok := h.partial.StagedObject(d)
	if !ok {
		return nil, false
	}
	f, err := os.Open(sp)
	if err != nil {
		return nil, false
	}
	return f, true
}

// Have asks a neighbour which objects its pull of image's version v holds,
// from the from'th on; total is the count to ask from next time. Only the
// digests keep accepts are returned (nil keeps all): the answer is parsed as
// it arrives and the rest never held, so a neighbour listing objects this
// pull does not need costs it nothing. A neighbour with no such pull
// answers ErrNotFound.
func (c *Client) Have(ctx context.Context, image string, v uint64, from int, keep func(manifest.Digest) bool) ([]manifest.Digest, int, error) {
	rel := fmt.Sprintf("have/%s/%d?from=%d", image, v, from)
	resp, err := c.get(ctx, rel)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	if resp.ContentLength > MaxHaveBytes {
		return nil, 0, fmt.Errorf("%w: have list from %s: %d bytes declared, over the limit of %d bytes", ErrPeer, c, resp.ContentLength, MaxHaveBytes)
	}
	ds, total, err := ParseHave(resp.Body, from, keep)
	var rerr readError
	if errors.As(err, &rerr) {
		return nil, 0, fmt.Errorf("GET %s: %w", c.base.JoinPath(rel), rerr.err)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("%w: have list from %s: %w", ErrPeer, c, err)
	}
	return ds, total, nil
}

// MaxHaveBytes bounds the bytes of one /have answer: the magic, the total
// and MaxHave lines of 65 bytes, about 260 KiB.
const MaxHaveBytes = int64(len(haveMagic) + 1 + len("total ") + 20 + 1 + MaxHave*(2*len(manifest.Digest{})+1))

// readError is a failure to read an answer, as opposed to a bad one.
type readError struct{ err error }

func (e readError) Error() string { return e.err.Error() }

// haveReader cuts an answer at MaxHaveBytes and remembers why reading
// stopped, so ParseHave can tell a broken link from a bad answer.
type haveReader struct {
	r    io.Reader
	n    int64
	err  error
	over bool
}

func (h *haveReader) Read(p []byte) (int, error) {
	if h.n >= MaxHaveBytes {
		h.over = true
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), MaxHaveBytes-h.n)]
	n, err := h.r.Read(p)
	h.n += int64(n)
	if err != nil && err != io.EOF {
		h.err = err
	}
	return n, err
}

// ParseHave reads a /have answer strictly, as a stream of at most
// MaxHaveBytes, returning the digests keep accepts (nil: all) and the
// total. Every line is checked, kept or not.
func ParseHave(r io.Reader, from int, keep func(manifest.Digest) bool) ([]manifest.Digest, int, error) {
	hr := &haveReader{r: r}
	ds, total, err := parseHave(hr, from, keep)
	switch {
	case hr.err != nil:
		return nil, 0, readError{hr.err}
	case hr.over:
		return nil, 0, fmt.Errorf("larger than the limit of %d bytes", MaxHaveBytes)
	}
	return ds, total, err
}

func parseHave(r io.Reader, from int, keep func(manifest.Digest) bool) ([]manifest.Digest, int, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 128), 128)
	if !sc.Scan() || sc.Text() != haveMagic {
		return nil, 0, fmt.Errorf("not a have list")
	}
	if !sc.Scan() {
		return nil, 0, fmt.Errorf("no total")
	}
	t, ok := strings.CutPrefix(sc.Text(), "total ")
	total, err := strconv.Atoi(t)
	if !ok || err != nil || strconv.Itoa(total) != t || total < from || total-from > MaxHave {
		return nil, 0, fmt.Errorf("bad total %q", sc.Text())
	}
	var ds []manifest.Digest
	n := 0
	for sc.Scan() {
		d, err := manifest.ParseDigest(sc.Text())
		if err != nil {
			return nil, 0, err
		}
		if n++; n > total-from {
			return nil, 0, fmt.Errorf("more entries than the total of %d from %d", total, from)
		}
		if keep == nil || keep(d) {
			ds = append(ds, d)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, 0, err
	}
	if n != total-from {
		return nil, 0, fmt.Errorf("%d entries for a total of %d from %d", n, total, from)
	}
	return ds, total, nil
}
