package discovery

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/miekg/dns"

	"peerup/manifest"
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
	iface   *net.Interface
	resp    *Responder
	lis     *Listener
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

// Start advertises the node and starts looking for newer peers.
func Start(ctx context.Context, cfg Config) (*Service, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	s := &Service{cfg: cfg}
	s.version.Store(cfg.Version)
	s.mgr = NewManager(cfg.Image, s.version.Load)
	finders := []Finder{Static(cfg.Static)}
	if cfg.Iface != "" {
		ifi, err := net.InterfaceByName(cfg.Iface)
		if err != nil {
			return nil, fmt.Errorf("discovery: interface %q: %w", cfg.Iface, err)
		}
		s.iface = ifi
	}
	ctx, s.cancel = context.WithCancel(ctx)
	if !cfg.NoMDNS {
		host, _ := os.Hostname()
		host = strings.Split(host, ".")[0]
		inst := cfg.Instance
		if inst == "" {
			inst = "peerup on " + host
		}
		ips, err := s.addrs()
		if err != nil {
			s.cancel()
			return nil, err
		}
		s.resp, err = NewResponder(ctx, ResponderConfig{
			Iface: s.iface, Instance: inst, Host: host, Port: cfg.Port, IPs: ips,
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
		if cfg.Image != "" && cfg.Version > 0 {
			if err := s.resp.Announce(ctx, Advert{Image: cfg.Image, Version: cfg.Version}); err != nil {
				cfg.Log.Warn("mdns announce", "err", err)
			}
		}
		finders = append(finders, browser{s.iface, cfg.Log})
	}
	if !cfg.NoMulticast && cfg.Image != "" {
		var err error
		if s.lis, err = Listen(ctx, s.iface, cfg.Image, cfg.Version, cfg.Log); err != nil {
			s.cancel()
			return nil, err
		}
		finders = append(finders, s.lis)
	}
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

// addrs lists the IPv4 addresses to advertise.
func (s *Service) addrs() ([]net.IP, error) {
	var ifs []net.Interface
	if s.iface != nil {
		ifs = []net.Interface{*s.iface}
	} else {
		all, err := net.Interfaces()
		if err != nil {
			return nil, err
		}
		for _, i := range all {
			if i.Flags&net.FlagUp != 0 && i.Flags&net.FlagLoopback == 0 {
				ifs = append(ifs, i)
			}
		}
	}
	var out []net.IP
	for _, i := range ifs {
		addrs, _ := i.Addrs()
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil {
				out = append(out, n.IP.To4())
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("discovery: no IPv4 address to advertise")
	}
	return out, nil
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
		if err := Announce(ctx, s.iface, from, a, log); err != nil {
			log.Warn("multicast announce", "err", err)
		}
	}
}

// Close says goodbye and stops every finder.
func (s *Service) Close() error {
	if s.resp != nil {
		s.resp.Close()
	}
	s.cancel()
	s.wg.Wait()
	return nil
}
