// Package hostile is a programmable hostile peer for attack tests: an HTTP
// server on loopback that answers some paths the way an attacker would
// (wrong bytes, endless bodies, a byte a second) and passes the rest to an
// honest handler, plus forged discovery traffic. It is real networking and
// real HTTP; only the peer's intent is made up.
package hostile

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	crand "crypto/rand"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// Peer is an HTTP server whose answers a test programs path by path.
type Peer struct {
	srv    *httptest.Server
	honest http.Handler

	mu    sync.Mutex
	rules []rule
	hits  map[string]int // by rule name
}

type rule struct {
	name  string
	match func(path string) bool
	h     http.Handler
}

// New starts a peer on loopback that passes every request no rule claims to
// honest (nil: 404). It stops when the test ends.
func New(t testing.TB, honest http.Handler) *Peer {
	t.Helper()
	if honest == nil {
		honest = http.NotFoundHandler()
	}
	p := &Peer{honest: honest, hits: map[string]int{}}
	p.srv = httptest.NewServer(http.HandlerFunc(p.serve))
	t.Cleanup(p.srv.Close)
	return p
}

// URL is the peer's repo URL, with a final slash.
func (p *Peer) URL() string { return p.srv.URL + "/" }

// Addr is the peer's host:port.
func (p *Peer) Addr() string { return p.srv.Listener.Addr().String() }

// On makes every request whose path starts with prefix (and ends with
// suffix, if given) answered by h. Later rules are tried first, so a test
// can narrow an earlier one.
func (p *Peer) On(prefix, suffix string, h http.Handler) {
	p.mu.Lock()
	defer p.mu.Unlock()
	name := prefix + "*" + suffix
	p.rules = append([]rule{{name: name, h: h, match: func(path string) bool {
		return strings.HasPrefix(path, prefix) && strings.HasSuffix(path, suffix)
	}}}, p.rules...)
}

// OnPath makes requests for exactly path answered by h.
func (p *Peer) OnPath(path string, h http.Handler) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rules = append([]rule{{name: path, h: h, match: func(q string) bool { return q == path }}}, p.rules...)
}

// HitsPath is how many requests the OnPath rule for path has answered.
func (p *Peer) HitsPath(path string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.hits[path]
}

// Hits is how many requests the rule for prefix and suffix has answered.
func (p *Peer) Hits(prefix, suffix string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.hits[prefix+"*"+suffix]
}

func (p *Peer) serve(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	h := p.honest
	for _, rl := range p.rules {
		if rl.match(r.URL.Path) {
			h = rl.h
			p.hits[rl.name]++
			break
		}
	}
	p.mu.Unlock()
	h.ServeHTTP(w, r)
}

// Bytes answers with b, whatever was asked.
func Bytes(b []byte) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(b) })
}

// Status answers with an empty body and the given status.
func Status(code int) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(code) })
}

// Endless sends prefix, then zeros without end, chunked (no length is
// declared), until the client hangs up.
func Endless(prefix []byte) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := w.Write(prefix); err != nil {
			return
		}
		buf := make([]byte, 32<<10)
		for r.Context().Err() == nil {
			if _, err := w.Write(buf); err != nil {
				return
			}
		}
	})
}

// Trickle sends body one byte every interval, flushing each, until the
// body ends or the client hangs up: the slow-retrieval attack.
func Trickle(body []byte, every time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", fmt.Sprint(len(body)))
		w.WriteHeader(http.StatusOK)
		rc := http.NewResponseController(w)
		rc.Flush()
		tick := time.NewTicker(every)
		defer tick.Stop()
		for i := range body {
			select {
			case <-r.Context().Done():
				return
			case <-tick.C:
			}
			if _, err := w.Write(body[i : i+1]); err != nil {
				return
			}
			rc.Flush()
		}
	})
}

// Poisoned answers as honest would, but declares the whole body, sends
// half its length in garbage and resets the connection: the poisoned
// partial download (SPEC.md §17). Answers other than 200 pass as they are.
func Poisoned(honest http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := httptest.NewRecorder()
		honest.ServeHTTP(rec, r)
		if rec.Code != http.StatusOK {
			for k, v := range rec.Header() {
				w.Header()[k] = v
			}
			w.WriteHeader(rec.Code)
			w.Write(rec.Body.Bytes())
			return
		}
		n := rec.Body.Len()
		w.Header().Set("Content-Length", fmt.Sprint(n))
		w.WriteHeader(http.StatusOK)
		w.Write(bytes.Repeat([]byte{0x5a}, n/2))
		rc := http.NewResponseController(w)
		rc.Flush()
		// A reset drops what the client has not read yet: give it time
		// to take the garbage in, so that a partial is always kept.
		select {
		case <-r.Context().Done():
		case <-time.After(300 * time.Millisecond):
		}
		if conn, _, err := rc.Hijack(); err == nil {
			if tc, ok := conn.(*net.TCPConn); ok {
				tc.SetLinger(0) // a reset, not a clean end
			}
			conn.Close()
		}
	})
}

// Silent sends headers, then nothing, until the client hangs up.
func Silent() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		http.NewResponseController(w).Flush()
		<-r.Context().Done()
	})
}

// Announcement spells a per-version announcement (SPEC.md §9) as a
// hostile node would send it.
func Announcement(image string, version uint64, manifestHex string, port int) []byte {
	return fmt.Appendf(nil, "peerup-announce 1\nimage %s\nversion %d\nmanifest %s\nport %d\n", image, version, manifestHex, port)
}

// Advert is an mDNS response advertising one fake peerup node, with extra
// TXT strings appended to the real ones (to make it oversized, say).
func Advert(instance string, ip net.IP, port uint16, image string, version uint64, extraTXT ...string) *dns.Msg {
	svc := "_peerup._tcp.local."
	name := instance + "." + svc
	host := instance + ".local."
	hdr := func(n string, t uint16) dns.RR_Header {
		return dns.RR_Header{Name: n, Rrtype: t, Class: dns.ClassINET, Ttl: 120}
	}
	txt := append([]string{"txtvers=1", "image=" + image, fmt.Sprintf("version=%d", version)}, extraTXT...)
	m := &dns.Msg{MsgHdr: dns.MsgHdr{Response: true, Authoritative: true}}
	m.Answer = []dns.RR{
		&dns.PTR{Hdr: hdr(svc, dns.TypePTR), Ptr: name},
		&dns.SRV{Hdr: hdr(name, dns.TypeSRV), Port: port, Target: host},
		&dns.TXT{Hdr: hdr(name, dns.TypeTXT), Txt: txt},
		&dns.A{Hdr: hdr(host, dns.TypeA), A: ip},
	}
	return m
}

// TrickleFrom answers with what honest would answer, status and headers
// included, but sends the body one byte every interval.
func TrickleFrom(honest http.Handler, every time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := httptest.NewRecorder()
		honest.ServeHTTP(rec, r)
		if rec.Code != http.StatusOK {
			w.WriteHeader(rec.Code)
			return
		}
		Trickle(rec.Body.Bytes(), every).ServeHTTP(w, r)
	})
}

// Context bounds one attack: a defence that hangs fails the test by its
// context's deadline, not by a stopwatch.
func Context(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// Allocated runs f and returns the bytes it allocated in all: an upper
// bound on the memory it held at any moment.
func Allocated(f func()) uint64 {
	var a, b runtime.MemStats
	runtime.ReadMemStats(&a)
	f()
	runtime.ReadMemStats(&b)
	return b.TotalAlloc - a.TotalAlloc
}

// GzipBomb answers with prefix and then size zero bytes, gzipped and
// labelled Content-Encoding: gzip whatever the client asked for: a few
// hundred KiB on the wire that inflate to size, for a client whose caps
// count bytes after a transparent gunzip.
func GzipBomb(prefix []byte, size int64) http.Handler {
	var b bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&b, gzip.BestCompression)
	zw.Write(prefix)
	zeros := make([]byte, 1<<20)
	for n := int64(0); n < size; n += int64(len(zeros)) {
		zw.Write(zeros[:min(int64(len(zeros)), size-n)])
	}
	zw.Close()
	bomb := b.Bytes()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Encoding", "gzip")
		w.Header().Set("Content-Length", strconv.Itoa(len(bomb)))
		w.Write(bomb)
	})
}

// HaveFlood answers every /have poll, from=N, with n fresh random digests
// and a total of N+n, well-formed (SPEC.md §10): a neighbour claiming to
// gain n objects a poll, none of which anyone needs.
func HaveFlood(n int) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		from, _ := strconv.Atoi(r.URL.Query().Get("from"))
		bw := bufio.NewWriter(w)
		defer bw.Flush()
		fmt.Fprintf(bw, "peerup-have 1\ntotal %d\n", from+n)
		var d [32]byte
		for range n {
			crand.Read(d[:])
			fmt.Fprintf(bw, "%x\n", d)
		}
	})
}

// Delayed answers as h does, after d: an honest peer on a slow link, so
// that a pull lasts long enough for an attack to run beside it.
func Delayed(h http.Handler, d time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
			return
		case <-time.After(d):
		}
		h.ServeHTTP(w, r)
	})
}
