package transfer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// ErrStalled is a peer that sends too slowly: fewer than Stall.MinBytes in
// some Stall.Window. Errors wrapping it also wrap ErrPeer.
var ErrStalled = errors.New("peer too slow")

// Stall is the slowest a peer may be before the client gives up on it and
// the pull moves to another: at least MinBytes in every Window, counted
// from the request (so a peer slow to answer at all is cut off too). It is
// a rate, not a deadline, so a large object on a fair link is never cut.
//
// A rate checked per window still lets a peer trickle just above it for
// hours, so an object's transfer also has a deadline: Grace plus its size
// at FloorRate bytes a second (FloorRate 0: none).
type Stall struct {
	Window    time.Duration
	MinBytes  int64
	FloorRate int64
	Grace     time.Duration
}

// DefaultStall cuts off a peer that sends under 16 KiB in 30 s (about
// 550 B/s): far below a congested school Wi-Fi, far above a trickle. An
// object must arrive within 60 s plus its size at 8 KiB/s: a school server
// uploading to 30 laptops at four fetches each over 8 Mbit/s still gives
// each fetch that, and a cut-off fetch resumes where it stopped.
func DefaultStall() Stall {
	return Stall{Window: 30 * time.Second, MinBytes: 16 << 10, FloorRate: 8 << 10, Grace: 60 * time.Second}
}

// deadline is how long a transfer of n bytes may take (0: no deadline).
func (s Stall) deadline(n int64) time.Duration {
	if s.FloorRate <= 0 || n <= 0 {
		return 0
	}
	return s.Grace + time.Duration(float64(n)/float64(s.FloorRate)*float64(time.Second))
}

// watchdog cancels a request whose body arrives below the minimum rate.
type watchdog struct {
	s      Stall
	n      atomic.Int64
	last   int64
	cancel context.CancelCauseFunc
	timer  *time.Timer
	late   *time.Timer // the whole transfer's deadline, if any
	err    error
}

// watch starts a watchdog over a request made with the returned context,
// for a body of expect bytes (0: unknown, no deadline).
func watch(ctx context.Context, s Stall, what string, expect int64) (context.Context, *watchdog) {
	ctx, cancel := context.WithCancelCause(ctx)
	w := &watchdog{s: s, cancel: cancel}
	w.err = fmt.Errorf("%w: %w: %s: under %d bytes in %s", ErrPeer, ErrStalled, what, s.MinBytes, s.Window)
	w.timer = time.AfterFunc(s.Window, w.tick)
	if d := s.deadline(expect); d > 0 {
		late := fmt.Errorf("%w: %w: %s: %d bytes not delivered within %s (at least %d B/s after %s)", ErrPeer, ErrStalled, what, expect, d.Round(time.Second), s.FloorRate, s.Grace)
		w.late = time.AfterFunc(d, func() { w.cancel(late) })
	}
	return ctx, w
}

func (w *watchdog) tick() {
	n := w.n.Load()
	if n-w.last < w.s.MinBytes {
		w.cancel(w.err)
		return
	}
	w.last = n
	w.timer.Reset(w.s.Window)
}

// stop ends the watch; the request's context is cancelled too.
func (w *watchdog) stop() {
	w.timer.Stop()
	if w.late != nil {
		w.late.Stop()
	}
	w.cancel(nil)
}

// blame turns the error of a request cut off by the watchdog into the
// watchdog's own, so callers see ErrStalled rather than a cancellation.
func (w *watchdog) blame(ctx context.Context, err error) error {
	if cause := context.Cause(ctx); err != nil && errors.Is(cause, ErrStalled) {
		return cause
	}
	return err
}

// watchedBody counts what arrives and stops the watchdog when closed.
type watchedBody struct {
	io.ReadCloser
	ctx context.Context
	w   *watchdog
}

func (b *watchedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.w.n.Add(int64(n))
	return n, b.w.blame(b.ctx, err)
}

func (b *watchedBody) Close() error {
	err := b.ReadCloser.Close()
	b.w.stop()
	return err
}

// readLimited reads a whole body of at most limit bytes. It refuses a
// declared length over the limit before reading, and never holds more than
// limit+1 bytes however the body is sent.
func readLimited(r io.Reader, declared, limit int64) ([]byte, error) {
	if declared > limit {
		return nil, errTooLarge
	}
	initial := int64(64 << 10)
	if declared >= 0 {
		initial = declared + 1
	}
	buf := make([]byte, 0, min(initial, limit+1))
	for {
		if len(buf) == cap(buf) {
			if int64(len(buf)) > limit {
				return nil, errTooLarge
			}
			grow := min(int64(cap(buf))*2, limit+1) - int64(len(buf))
			buf = append(buf, make([]byte, grow)...)[:len(buf)]
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if int64(len(buf)) > limit {
			return nil, errTooLarge
		}
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

var errTooLarge = errors.New("too large")

// copyLimited copies a body of at most limit bytes to w as it arrives (a
// manifest, into a file: it is never whole in memory). It refuses a
// declared length over the limit before reading, and never writes more
// than limit bytes however the body is sent.
func copyLimited(w io.Writer, r io.Reader, declared, limit int64) error {
	if declared > limit {
		return errTooLarge
	}
	n, err := io.Copy(w, io.LimitReader(r, limit))
	if err != nil {
		return err
	}
	if n == limit {
		// At the cap: one byte more means the body is longer.
		var one [1]byte
		if k, _ := io.ReadFull(r, one[:]); k > 0 {
			return errTooLarge
		}
	}
	return nil
}

// Server-side defaults (SPEC.md §5, §17).
const (
	DefaultMaxConnsPerPeer = 16
	DefaultMaxConns        = 512
	DefaultRequestRate     = 1000 // requests a second from one address
	DefaultWriteStall      = 30 * time.Second
	maxRateEntries         = 4096
)

// peerRates keeps a request budget per remote address. The table is
// bounded: when full it starts afresh, which at worst forgives a few peers.
type peerRates struct {
	mu    sync.Mutex
	rps   rate.Limit
	burst int
	m     map[string]*rate.Limiter
}

func newPeerRates(rps float64) *peerRates {
	if rps <= 0 {
		return nil
	}
	return &peerRates{rps: rate.Limit(rps), burst: max(1, int(2*rps)), m: map[string]*rate.Limiter{}}
}

func (p *peerRates) allow(addr string) bool {
	host := hostOf(addr)
	p.mu.Lock()
	l, ok := p.m[host]
	if !ok {
		if len(p.m) >= maxRateEntries {
			clear(p.m)
		}
		l = rate.NewLimiter(p.rps, p.burst)
		p.m[host] = l
	}
	p.mu.Unlock()
	return l.Allow()
}

func hostOf(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}

// stallWriter gives each write of a response a deadline, so a client that
// stops reading (or reads a byte a second) loses its connection instead of
// holding an upload slot for ever.
type stallWriter struct {
	http.ResponseWriter
	rc    *http.ResponseController
	stall time.Duration
}

func (w stallWriter) Write(p []byte) (int, error) {
	w.rc.SetWriteDeadline(time.Now().Add(w.stall))
	return w.ResponseWriter.Write(p)
}

// LimitListener caps the connections open at once from one address
// (perPeer) and in all (total), so one host cannot use up the server's
// descriptors or goroutines. A connection over its address's cap is closed
// at once. When the total is reached, the cap is shared fairly: a newcomer
// from an address holding fewer connections than the heaviest one is let
// in, and the heaviest address's oldest connection is closed for it. So
// many addresses each under their own cap (60 holding 12 slow connections
// each) cannot keep a new honest client out; only an address already
// holding as many as the heaviest is refused.
func LimitListener(l net.Listener, perPeer, total int) net.Listener {
	return &limitListener{Listener: l, perPeer: perPeer, total: total, open: map[string][]*limitConn{}}
}

type limitListener struct {
	net.Listener
	perPeer, total int
	mu             sync.Mutex
	open           map[string][]*limitConn // by address, oldest first
	n              int
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		host := hostOf(c.RemoteAddr().String())
		lc := &limitConn{Conn: c, l: l, host: host}
		l.mu.Lock()
		mine := len(l.open[host])
		ok := l.perPeer <= 0 || mine < l.perPeer
		var shed *limitConn
		if ok && l.total > 0 && l.n >= l.total {
			shed = l.heaviest()
			if shed == nil || len(l.open[shed.host]) <= mine+1 {
				ok, shed = false, nil // no one holds more than a newcomer would
			} else {
				l.forget(shed)
			}
		}
		if ok {
			l.open[host] = append(l.open[host], lc)
			l.n++
		}
		l.mu.Unlock()
		if shed != nil {
			shed.Conn.Close()
		}
		if !ok {
			c.Close()
			continue
		}
		return lc, nil
	}
}

// heaviest is the oldest connection of the address holding the most.
func (l *limitListener) heaviest() *limitConn {
	var top []*limitConn
	for _, cs := range l.open {
		if len(cs) > len(top) {
			top = cs
		}
	}
	if len(top) == 0 {
		return nil
	}
	return top[0]
}

// forget drops c from the counts, once.
func (l *limitListener) forget(c *limitConn) {
	if c.gone {
		return
	}
	c.gone = true
	cs := l.open[c.host]
	if i := slices.Index(cs, c); i >= 0 {
		cs = slices.Delete(cs, i, i+1)
	}
	if len(cs) == 0 {
		delete(l.open, c.host)
	} else {
		l.open[c.host] = cs
	}
	l.n--
}

type limitConn struct {
	net.Conn
	l    *limitListener
	host string
	gone bool // counted out; under l.mu
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.l.mu.Lock()
	c.l.forget(c)
	c.l.mu.Unlock()
	return err
}
