package transfer

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/peerup/peerup/blobstore"

	"golang.org/x/time/rate"
)

// DefaultListen is where a node serves its repo unless told otherwise
// (SPEC.md §5).
const DefaultListen = LANPrefix + "7380"

// Handler serves the repo in dir.
type Handler struct {
	dir     string
	log     *slog.Logger
	slots   chan struct{} // concurrent object uploads; nil: no cap
	limiter *rate.Limiter // upload budget; nil: none
	partial Partial       // a pull in progress lending its objects; nil: none

	once     bool // Limits.OncePerObject
	flightMu sync.Mutex
	inFlight map[string]time.Time // objects being uploaded (zero) or just uploaded, when once

	rates *peerRates    // requests per remote address; nil: no cap
	stall time.Duration // longest a response write may block
}

// lendCooldown is how long after uploading an object a seed keeps sending
// other askers on that LAN to their neighbours: well over the second in
// which neighbours learn what each other's pulls hold, and over the time a
// class of laptops on one saturated Wi-Fi takes to pass an object on, their
// own uploads busy (at 8 s, a fleet bench of 20 had the seed send one
// object in eight twice, each about 12 s after the first copy). An object
// whose only holder went away (switched off mid-pull) waits this long, so
// it is not longer.
const lendCooldown = 15 * time.Second

// lendKey names an upload for the super-seeding rule: the object and the
// seed's address the request came to. Lent once per LAN: a seed on two
// LANs (an address on each) sends each side its copy, since laptops on one
// cannot reach the other.
func lendKey(r *http.Request, p string) string {
	if la, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		if host, _, err := net.SplitHostPort(la.String()); err == nil {
			return host + " " + p
		}
	}
	return p
}

// lend reports whether object path p may be uploaded now, and if so marks
// it in flight.
func (h *Handler) lend(p string) bool {
	h.flightMu.Lock()
	defer h.flightMu.Unlock()
	now := time.Now()
	if t, ok := h.inFlight[p]; ok && (t.IsZero() || now.Sub(t) < lendCooldown) {
		return false
	}
	if len(h.inFlight) > 1024 {
		for k, t := range h.inFlight {
			if !t.IsZero() && now.Sub(t) >= lendCooldown {
				delete(h.inFlight, k)
			}
		}
	}
	h.inFlight[p] = time.Time{}
	return true
}

func (h *Handler) lent(p string) {
	h.flightMu.Lock()
	h.inFlight[p] = time.Now()
	h.flightMu.Unlock()
}

// NewHandler returns a handler serving the repo at dir.
func NewHandler(dir string, log *slog.Logger) *Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Handler{dir: dir, log: log, rates: newPeerRates(DefaultRequestRate), stall: DefaultWriteStall}
}

// WithLimits caps concurrent uploads and paces them (see Limits).
func (h *Handler) WithLimits(l Limits) *Handler {
	if l.MaxUploads > 0 {
		h.slots = make(chan struct{}, l.MaxUploads)
	}
	h.limiter = newLimiter(l.UploadRate)
	if l.OncePerObject {
		h.once, h.inFlight = true, map[string]time.Time{}
	}
	switch {
	case l.RequestRate > 0:
		h.rates = newPeerRates(l.RequestRate)
	case l.RequestRate < 0:
		h.rates = nil
	}
	switch {
	case l.WriteStall > 0:
		h.stall = l.WriteStall
	case l.WriteStall < 0:
		h.stall = 0
	}
	return h
}

// notFound answers 404 with no body: a laptop counts every byte it
// receives, and a node asks for what may not exist (a manifest delta, a
// signed list) on every pull.
func notFound(w http.ResponseWriter) {
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusNotFound)
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if h.rates != nil && !h.rates.allow(r.RemoteAddr) {
		// Too many requests from one address: it is told to wait, as a
		// busy node tells it, and goes to a neighbour meanwhile.
		w.Header().Set("Retry-After", "1")
		http.Error(w, "too many requests", http.StatusTooManyRequests)
		return
	}
	p := r.URL.Path
	if m := haveRE.FindStringSubmatch(p); m != nil {
		h.serveHave(w, r, m)
		return
	}
	// Only the layout's own paths are served: anything else, including
	// every traversal attempt, is 404 before the file system is touched.
	kind := blobstore.Layout{}.Kind(strings.TrimPrefix(p, "/"))
	if kind == blobstore.PathNone {
		notFound(w)
		return
	}
	// OpenInRoot refuses a symlink that leads out of the repo: only the
	// repo's own files are ever served, whatever is planted in it.
	f, err := os.OpenInRoot(h.dir, filepath.FromSlash(p[1:]))
	if err != nil {
		var ok bool
		if f, ok = h.stagedFile(p); !ok {
			notFound(w)
			return
		}
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		notFound(w)
		return
	}
	if h.slots != nil && kind == blobstore.PathObject {
		select {
		case h.slots <- struct{}{}:
			defer func() { <-h.slots }()
		default:
			// Busy: say so at once, so the peer asks a neighbour instead
			// of queueing here.
			w.Header().Set("Retry-After", "2")
			http.Error(w, "busy: too many uploads", http.StatusServiceUnavailable)
			return
		}
	}
	if h.once && kind == blobstore.PathObject && r.Method == http.MethodGet {
		p := lendKey(r, p)
		if !h.lend(p) {
			w.Header().Set("Retry-After", "1")
			http.Error(w, "busy: this object is on its way to a neighbour; ask the neighbours", http.StatusServiceUnavailable)
			return
		}
		defer h.lent(p)
	}
	if h.stall > 0 {
		w = stallWriter{ResponseWriter: w, rc: http.NewResponseController(w), stall: h.stall}
	}
	if h.limiter != nil {
		w = limitedWriter{w, r.Context(), h.limiter}
	}
	if kind == blobstore.PathIndex || kind == blobstore.PathList {
		// The index changes as versions are published, a signed list as
		// versions are withdrawn or rolled out; everything else is immutable once it exists
		// under its name.
		w.Header().Set("Cache-Control", "no-cache")
	} else {
		w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	// ServeContent answers Range requests, so a cut transfer resumes.
	http.ServeContent(w, r, "", time.Time{}, f)
	h.log.Debug("served", "path", p, "peer", r.RemoteAddr, "size", fi.Size(), "range", r.Header.Get("Range"))
}

// NewServer wraps a handler with timeouts that keep slow or idle clients from
// holding connections forever: a request's headers must arrive within 10 s
// (slowloris), an idle keep-alive connection is closed after 60 s. Serve it
// on a LimitListener to cap connections per peer.
func NewServer(addr string, h http.Handler) *http.Server {
	return &http.Server{
		Addr:              addr,
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       20 * time.Second, // requests have no body: headers are all
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
	}
}

// Listen listens on addr for NewServer, with l's caps on connections per
// peer and in all.
func Listen(addr string, l Limits) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	return LimitListener(ln, orDefault(l.MaxConnsPerPeer, DefaultMaxConnsPerPeer), orDefault(l.MaxConns, DefaultMaxConns)), nil
}

// orDefault reads a limit: 0 is the default, negative is none.
func orDefault(n, def int) int {
	switch {
	case n == 0:
		return def
	case n < 0:
		return 0
	}
	return n
}
