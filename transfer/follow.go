package transfer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"
)

// LANPrefix starts a listen address that means "the LAN interfaces, on
// this port" (SPEC.md §5): lan:7380.
const LANPrefix = "lan:"

// Addrs lists the addresses a node should serve on now.
type Addrs func() ([]net.IP, error)

// followEvery is how often the LAN's addresses are looked at again: as
// often as discovery looks at its links, so that a node is served where
// it is advertised.
const followEvery = 2 * time.Second

// ListenOn listens where listen says: lan:PORT for loopback and the
// addresses lan lists (ListenFollowing), anything else as net.Listen
// takes it (":7380" is every address). lan may be nil: loopback only.
func ListenOn(ctx context.Context, listen string, lan Addrs, l Limits, log *slog.Logger) (net.Listener, error) {
	port, ok, err := ParseLAN(listen)
	if err != nil {
		return nil, err
	}
	if !ok {
		return Listen(listen, l)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if lan == nil {
		log.Warn("serving on loopback only: no LAN addresses to follow", "listen", listen)
		lan = func() ([]net.IP, error) { return nil, nil }
	}
	return ListenFollowing(ctx, port, lan, followEvery, l, log)
}

// ListenFollowing listens on port at loopback and at every address addrs
// lists, looking again every interval until ctx ends or the listener is
// closed: a laptop's Wi-Fi address comes and goes, and a socket bound to
// every address would also answer on a café's network or a public IPv6
// address the node was never meant to serve. Port 0 picks one port, at
// loopback, and uses it everywhere. The listener's Addr is the loopback
// one.
func ListenFollowing(ctx context.Context, port int, addrs Addrs, every time.Duration, l Limits, log *slog.Logger) (net.Listener, error) {
	lo, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	f := &following{
		lo: lo, port: lo.Addr().(*net.TCPAddr).Port, addrs: addrs, log: log,
		conns: make(chan net.Conn), done: make(chan struct{}), cancel: cancel,
		bound: map[netip.Addr]net.Listener{},
	}
	f.serve(lo)
	f.sync()
	go func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				f.Close()
				return
			case <-t.C:
				f.sync()
			}
		}
	}()
	return LimitListener(f, orDefault(l.MaxConnsPerPeer, DefaultMaxConnsPerPeer), orDefault(l.MaxConns, DefaultMaxConns)), nil
}

// ParseLAN reads a listen address: for lan:PORT, the port and true.
func ParseLAN(listen string) (int, bool, error) {
	rest, ok := strings.CutPrefix(listen, LANPrefix)
	if !ok {
		return 0, false, nil
	}
	port, err := strconv.ParseUint(rest, 10, 16)
	if err != nil {
		return 0, true, fmt.Errorf("listen %q: want %sPORT, with PORT a number up to 65535", listen, LANPrefix)
	}
	return int(port), true, nil
}

type following struct {
	lo     net.Listener
	port   int
	addrs  Addrs
	log    *slog.Logger
	conns  chan net.Conn
	done   chan struct{}
	cancel context.CancelFunc
	once   sync.Once

	mu    sync.Mutex
	bound map[netip.Addr]net.Listener
	said  string // the last failure logged, so that a lasting one is logged once
}

// sync binds the addresses listed now and closes those no longer listed.
func (f *following) sync() {
	ips, err := f.addrs()
	f.mu.Lock()
	defer f.mu.Unlock()
	select {
	case <-f.done:
		return
	default:
	}
	if err != nil {
		f.warn("list addresses", err)
		return
	}
	want := map[netip.Addr]bool{}
	for _, ip := range ips {
		if a, ok := netip.AddrFromSlice(ip); ok && !a.Unmap().IsLoopback() {
			want[a.Unmap()] = true
		}
	}
	for a, ln := range f.bound {
		if !want[a] {
			ln.Close()
			delete(f.bound, a)
			f.log.Info("no longer serving on an address that went away", "addr", a)
		}
	}
	for a := range want {
		if f.bound[a] != nil {
			continue
		}
		ln, err := net.Listen("tcp", netip.AddrPortFrom(a, uint16(f.port)).String())
		if err != nil {
			// The address may be going away as we look; try again later.
			f.warn("listen on "+a.String(), err)
			continue
		}
		f.bound[a] = ln
		f.serve(ln)
		f.log.Info("serving on", "addr", ln.Addr())
	}
}

func (f *following) warn(what string, err error) {
	if s := what + err.Error(); s != f.said {
		f.said = s
		f.log.Warn(what, "err", err)
	}
}

// serve hands ln's connections to Accept until ln is closed.
func (f *following) serve(ln net.Listener) {
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					continue
				}
				return
			}
			select {
			case f.conns <- c:
			case <-f.done:
				c.Close()
				return
			}
		}
	}()
}

func (f *following) Accept() (net.Conn, error) {
	select {
	case c := <-f.conns:
		return c, nil
	case <-f.done:
		return nil, net.ErrClosed
	}
}

func (f *following) Close() error {
	f.once.Do(func() {
		f.mu.Lock()
		close(f.done)
		f.lo.Close()
		for a, ln := range f.bound {
			ln.Close()
			delete(f.bound, a)
		}
		f.mu.Unlock()
		f.cancel()
	})
	return nil
}

func (f *following) Addr() net.Addr { return f.lo.Addr() }
