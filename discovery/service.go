package discovery

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"

	"github.com/peerup/peerup/manifest"
)

// Config says what the node advertises and where it listens.
type Config struct {
	Iface   string // interface name; "" means every multicast interface
	Image   string
	Version uint64
	Port    int // the node's HTTP port; 0 advertises nothing (browse only)
	// Instance names the node in DNS-SD (default: the host name).
	Instance string
	// ManifestOf returns the hash of a version's manifest, for announcements.
	ManifestOf func(v uint64) manifest.Digest
	// Static peers given by the administrator.
	Static []string
	// Finders are further sources of peers, run beside the built-in ones
	// (mDNS, announcements, Static) against the same table.
	Finders []Finder
	// NoMDNS and NoMulticast turn a source off (tests, or networks where
	// one of them misbehaves).
	NoMDNS, NoMulticast bool
	Log                 *slog.Logger
}

// Service runs every finder and the advert for one node.
type Service struct {
	cfg     Config
	mgr     *Manager
	version atomic.Uint64
	resp    *Responder
	lis     *Listener
	cancel  context.CancelFunc
	wg      sync.WaitGroup

	mu    sync.Mutex
	links []link // as last scanned
	said  bool   // "no interface" warned
}

// rescanEvery is how often the interfaces are looked at again: a laptop
// that reconnects its Wi-Fi is heard, and hears, within this.
const rescanEvery = 2 * time.Second

// Start advertises the node and starts looking for newer peers, on every
// link (or cfg.Iface's alone), following links as they come and go.
func Start(ctx context.Context, cfg Config) (*Service, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	s := &Service{cfg: cfg}
	s.version.Store(cfg.Version)
	s.mgr = NewManager(cfg.Image, s.version.Load)
	finders := []Finder{Static(cfg.Static)}
	if cfg.Iface != "" {
		if _, err := net.InterfaceByName(cfg.Iface); err != nil {
			return nil, fmt.Errorf("discovery: interface %q: %w", cfg.Iface, err)
		}
	}
	ctx, s.cancel = context.WithCancel(ctx)
	if !cfg.NoMDNS {
		name, _ := os.Hostname()
		id := nodeID()
		inst := cfg.Instance
		if inst == "" {
			inst = fmt.Sprintf("peerup on %s (%s)", hostLabel(name), id)
		}
		var err error
		s.resp, err = NewResponder(ctx, ResponderConfig{
			Instance: inst, Host: hostLabel(name) + "-" + id, Port: cfg.Port,
			Advert: Advert{Image: cfg.Image, Version: cfg.Version}, Log: cfg.Log,
			Heard: func(m *dns.Msg, from net.IP) {
				for _, p := range peersFromMsg(m, from) {
					s.mgr.Found(p)
				}
			},
		})
		if err != nil {
			s.cancel()
			return nil, err
		}
	}
	if !cfg.NoMulticast && cfg.Image != "" {
		var err error
		if s.lis, err = Listen(ctx, cfg.Image, cfg.Version, cfg.Log); err != nil {
			s.close()
			return nil, err
		}
		finders = append(finders, s.lis)
	}
	s.rescan(ctx)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.follow(ctx)
	}()
	finders = append(finders, cfg.Finders...)
	for _, f := range finders {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			f.Find(ctx, s.mgr.Found)
		}()
	}
	return s, nil
}

// rescan looks at the links again and joins, announces and asks on those
// new or changed.
func (s *Service) rescan(ctx context.Context) {
	links, err := scanLinks(s.cfg.Iface)
	if err != nil {
		s.cfg.Log.Warn("discovery", "err", err)
		return
	}
	s.mu.Lock()
	s.links = links
	warn := len(links) == 0 && !s.said
	s.said = len(links) == 0
	s.mu.Unlock()
	if warn {
		where := "no interface is up, multicast-capable and has an IPv4 address"
		if s.cfg.Iface != "" {
			where = "interface " + s.cfg.Iface + " is down or has no IPv4 address"
		}
		s.cfg.Log.Warn("discovery: cannot listen for peers yet; will look again", "why", where)
	}
	if s.lis != nil {
		s.lis.Sync(links)
	}
	if s.resp == nil {
		return
	}
	for _, l := range s.resp.Sync(links) {
		s.cfg.Log.Debug("discovery: listening", "iface", l.ifi.Name, "addrs", l.addrs)
		if s.cfg.Image != "" && s.version.Load() > 0 {
			if err := s.resp.AnnounceOn(ctx, l.ifi.Index); err != nil {
				s.cfg.Log.Warn("mdns announce", "iface", l.ifi.Name, "err", err)
			}
		}
		s.resp.Query(l.ifi.Index)
	}
}

// follow rescans the links until ctx ends, and asks the links for peers at
// a widening interval (answers and announcements are heard in between).
func (s *Service) follow(ctx context.Context) {
	tick := time.NewTicker(rescanEvery)
	defer tick.Stop()
	ask := 5 * time.Second
	next := time.Now().Add(time.Second)
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		s.rescan(ctx)
		if s.resp != nil && time.Now().After(next) {
			s.resp.Query(0)
			next = time.Now().Add(ask)
			ask = min(ask*2, 10*time.Minute)
		}
	}
}

// Listening is how many links the node hears mDNS on.
func (s *Service) Listening() int {
	if s.resp == nil {
		return 0
	}
	return s.resp.Links()
}

func (s *Service) currentLinks() []link {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.links
}

// Peers lists the URLs of known peers, newest version first.
func (s *Service) Peers() []string {
	var out []string
	for _, p := range s.mgr.List() {
		out = append(out, p.URL)
	}
	return out
}

// List returns the peer table.
func (s *Service) List() []Peer { return s.mgr.List() }

// Found fires when a peer appears or changes version.
func (s *Service) Found() <-chan struct{} { return s.mgr.Changed() }

// Newer fires when a peer with a newer version appears.
func (s *Service) Newer() <-chan struct{} { return s.mgr.Newer() }

// VersionChanged re-advertises the node at its new version, announces it to
// the nodes still at the old one, and moves to the new version's group.
func (s *Service) VersionChanged(ctx context.Context, image string, from, to uint64) {
	s.version.Store(to)
	log := s.cfg.Log
	if s.resp != nil {
		if err := s.resp.Announce(ctx, Advert{Image: image, Version: to}); err != nil {
			log.Warn("mdns announce", "err", err)
		}
	}
	if s.lis != nil {
		if err := s.lis.Rejoin(to); err != nil {
			log.Warn("multicast rejoin", "err", err)
		}
	}
	if !s.cfg.NoMulticast && from > 0 && to > from {
		var d manifest.Digest
		if s.cfg.ManifestOf != nil {
			d = s.cfg.ManifestOf(to)
		}
		a := Announcement{Image: image, Version: to, Manifest: d, Port: s.cfg.Port}
		if err := Announce(ctx, s.currentLinks(), from, a, log); err != nil {
			log.Warn("multicast announce", "err", err)
		}
	}
}

// Close says goodbye and stops every finder.
func (s *Service) Close() error {
	s.close()
	s.wg.Wait()
	return nil
}

func (s *Service) close() {
	if s.resp != nil {
		s.resp.Close()
	}
	s.cancel()
}
