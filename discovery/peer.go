package discovery

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"sort"
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Source names where a peer was learnt of.
type Source string

// Sources of peers.
const (
	SourceMDNS      Source = "mdns"
	SourceMulticast Source = "multicast"
	SourceStatic    Source = "static"
)

// Peer is a node that serves a repo.
type Peer struct {
	URL      string // http://ip:port/
	Image    string
	Version  uint64
	Source   Source
	LastSeen time.Time
}

// PeerURL spells a peer's repo URL from its address.
func PeerURL(ip net.IP, port int) string {
	return (&url.URL{Scheme: "http", Host: net.JoinHostPort(ip.String(), strconv.Itoa(port)), Path: "/"}).String()
}

// Limits of the peer table: a flood of fake adverts costs at most this much.
const (
	maxPeers  = 512
	peerTTL   = 15 * time.Minute
	intakeRPS = 50
	intakeMax = 200
)

// A Finder is one source of peers: mDNS browsing, the per-version
// announcements, the administrator's list. Find runs until ctx ends (or its
// source does), reporting every peer it hears of to found; a Service runs
// each finder it has against its one peer table, the Manager, which alone
// decides what to keep.
type Finder interface {
	Find(ctx context.Context, found func(Peer))
}

// Static is the administrator's list of peers as a Finder.
type Static []string

// Find reports each peer once.
func (s Static) Find(_ context.Context, found func(Peer)) {
	for _, u := range s {
		found(Peer{URL: u, Source: SourceStatic})
	}
}

// Manager merges what the finders report into one bounded table.
type Manager struct {
	image   string
	version func() uint64
	limiter *rate.Limiter
	newer   chan struct{}
	changed chan struct{}

	mu    sync.Mutex
	peers map[string]Peer
	now   func() time.Time
}

// NewManager makes a table for image; version reports the node's own
// version, so that only newer peers wake it.
func NewManager(image string, version func() uint64) *Manager {
	return &Manager{
		image: image, version: version,
		limiter: rate.NewLimiter(intakeRPS, intakeMax),
		newer:   make(chan struct{}, 1),
		changed: make(chan struct{}, 1),
		peers:   map[string]Peer{},
		now:     time.Now,
	}
}

// Found records a peer. It drops reports beyond the intake rate, peers of
// other images, and the stalest entry when the table is full.
func (m *Manager) Found(p Peer) {
	if m.image != "" && p.Image != m.image && p.Source != SourceStatic {
		return
	}
	now := m.now()
	if !m.limiter.AllowN(now, 1) {
		return
	}
	p.LastSeen = now
	m.mu.Lock()
	if _, ok := m.peers[p.URL]; !ok && len(m.peers) >= maxPeers {
		m.expireLocked()
		if len(m.peers) >= maxPeers {
			oldest := ""
			for u, q := range m.peers {
				if oldest == "" || q.LastSeen.Before(m.peers[oldest].LastSeen) {
					oldest = u
				}
			}
			delete(m.peers, oldest)
		}
	}
	old, had := m.peers[p.URL]
	m.peers[p.URL] = p
	m.mu.Unlock()
	if !had || old.Version != p.Version {
		select {
		case m.changed <- struct{}{}:
		default:
		}
	}
	if p.Version > m.version() {
		select {
		case m.newer <- struct{}{}:
		default:
		}
	}
}

func (m *Manager) expireLocked() {
	cut := m.now().Add(-peerTTL)
	for u, p := range m.peers {
		if p.LastSeen.Before(cut) && p.Source != SourceStatic {
			delete(m.peers, u)
		}
	}
}

// List returns the live peers, newest version first.
func (m *Manager) List() []Peer {
	m.mu.Lock()
	m.expireLocked()
	out := make([]Peer, 0, len(m.peers))
	for _, p := range m.peers {
		out = append(out, p)
	}
	m.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].Version != out[j].Version {
			return out[i].Version > out[j].Version
		}
		return out[i].URL < out[j].URL
	})
	return out
}

// Newer fires when a peer with a version above the node's appears.
func (m *Manager) Newer() <-chan struct{} { return m.newer }

// Changed fires when a peer appears or changes version.
func (m *Manager) Changed() <-chan struct{} { return m.changed }

// Len is the number of peers in the table.
func (m *Manager) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.peers)
}

func (p Peer) String() string {
	return fmt.Sprintf("%s (%s v%d via %s)", p.URL, p.Image, p.Version, p.Source)
}
