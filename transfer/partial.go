package transfer

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"

	"peerup/blobstore"
	"peerup/manifest"
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

// MaxHave bounds the entries of one /have answer, and so its size.
const MaxHave = 1 << 16

// serveHave answers GET /have/<image>/<v>?from=N (SPEC.md §5).
func (h *Handler) serveHave(w http.ResponseWriter, r *http.Request, m []string) {
	v, err := strconv.ParseUint(m[2], 10, 64)
	from, ferr := strconv.Atoi(r.URL.Query().Get("from"))
	if r.URL.Query().Get("from") == "" {
		from, ferr = 0, nil
	}
	if err != nil || ferr != nil || from < 0 || h.partial == nil {
		http.NotFound(w, r)
		return
	}
	ds, total, ok := h.partial.Have(m[1], v, from)
	if !ok {
		http.NotFound(w, r)
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
// from the from'th on; total is the count to ask from next time. A
// neighbour with no such pull answers ErrNotFound.
func (c *Client) Have(ctx context.Context, image string, v uint64, from int) ([]manifest.Digest, int, error) {
	b, err := c.getSmall(ctx, fmt.Sprintf("have/%s/%d?from=%d", image, v, from), int64(len(haveMagic))+32+MaxHave*65)
	if err != nil {
		return nil, 0, err
	}
	ds, total, err := ParseHave(b, from)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: have list from %s: %w", ErrPeer, c, err)
	}
	return ds, total, nil
}

// ParseHave reads a /have answer strictly.
func ParseHave(b []byte, from int) ([]manifest.Digest, int, error) {
	sc := bufio.NewScanner(bytes.NewReader(b))
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
	for sc.Scan() {
		d, err := manifest.ParseDigest(sc.Text())
		if err != nil {
			return nil, 0, err
		}
		ds = append(ds, d)
	}
	if err := sc.Err(); err != nil {
		return nil, 0, err
	}
	if len(ds) != total-from {
		return nil, 0, fmt.Errorf("%d entries for a total of %d from %d", len(ds), total, from)
	}
	return ds, total, nil
}
