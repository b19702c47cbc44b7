package discovery

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/ipv4"

	"github.com/peerup/peerup/manifest"
)

// AnnouncePort is the UDP port of per-version announcements (SPEC.md §9).
const AnnouncePort = 7381

const (
	announceMagic = "peerup-announce 1"
	maxAnnounce   = 512
)

// ErrAnnounce is wrapped by errors about malformed announcements.
var ErrAnnounce = errors.New("malformed announcement")

// Group is the admin-scoped multicast group on which nodes at version v of
// image listen: 239.255.X.Y from a hash of both, so each version has its own
// and only the nodes it concerns wake.
func Group(image string, v uint64) net.IP {
	h := sha256.Sum256([]byte("peerup-group-v1\x00" + image + "\x00" + strconv.FormatUint(v, 10)))
	x, y := h[0], h[1]
	if x == 0 && y == 0 || x == 255 && y == 255 {
		y ^= 1 // keep clear of the range's first and last addresses
	}
	return net.IPv4(239, 255, x, y).To4()
}

// Announcement says: a node serving on Port has Image at Version.
type Announcement struct {
	Image    string
	Version  uint64
	Manifest manifest.Digest
	Port     int
}

// Marshal encodes an announcement.
func (a Announcement) Marshal() []byte {
	return fmt.Appendf(nil, "%s\nimage %s\nversion %d\nmanifest %s\nport %d\n", announceMagic, a.Image, a.Version, a.Manifest, a.Port)
}

// ParseAnnouncement reads an announcement strictly.
func ParseAnnouncement(b []byte) (Announcement, error) {
	var a Announcement
	if len(b) > maxAnnounce {
		return a, fmt.Errorf("%w: %d bytes", ErrAnnounce, len(b))
	}
	s := string(b)
	if !strings.HasSuffix(s, "\n") {
		return a, fmt.Errorf("%w: no final newline", ErrAnnounce)
	}
	lines := strings.Split(s[:len(s)-1], "\n")
	keys := []string{"image", "version", "manifest", "port"}
	if len(lines) != 1+len(keys) || lines[0] != announceMagic {
		return a, fmt.Errorf("%w: not %q with %d fields", ErrAnnounce, announceMagic, len(keys))
	}
	for i, k := range keys {
		name, v, ok := strings.Cut(lines[i+1], " ")
		if !ok || name != k {
			return a, fmt.Errorf("%w: want %q", ErrAnnounce, k)
		}
		var err error
		switch k {
		case "image":
			if err = manifest.ValidImage(v); err == nil {
				a.Image = v
			}
		case "version":
			a.Version, err = strconv.ParseUint(v, 10, 64)
			if err == nil && (a.Version == 0 || strconv.FormatUint(a.Version, 10) != v) {
				err = errors.New("not canonical")
			}
		case "manifest":
			a.Manifest, err = manifest.ParseDigest(v)
		case "port":
			var p uint64
			p, err = strconv.ParseUint(v, 10, 16)
			if err == nil && (p == 0 || strconv.FormatUint(p, 10) != v) {
				err = errors.New("not canonical")
			}
			a.Port = int(p)
		}
		if err != nil {
			return a, fmt.Errorf("%w: %s: %v", ErrAnnounce, k, err)
		}
	}
	return a, nil
}

// announceSchedule is when an announcement is repeated: a few times soon,
// for nodes that missed the first datagram, then never again (the mDNS
// advert carries the version from then on).
func announceSchedule() []time.Duration {
	return []time.Duration{0, time.Second, 3 * time.Second, 10 * time.Second}
}

// Announce sends a on the group of (image, from) on every link, on the
// schedule, until done or ctx ends. It returns once the first datagrams are
// sent; the repeats go on in the background.
func Announce(ctx context.Context, links []link, from uint64, a Announcement, log *slog.Logger) error {
	if len(links) == 0 {
		return errors.New("announce: no interface to announce on")
	}
	c, err := net.ListenPacket("udp4", ":0")
	if err != nil {
		return fmt.Errorf("announce: %w", err)
	}
	p := ipv4.NewPacketConn(c)
	p.SetMulticastTTL(1) // link-local reach: a school LAN, not the district
	dst := &net.UDPAddr{IP: Group(a.Image, from), Port: AnnouncePort}
	msg := a.Marshal()
	send := func() error {
		var sent int
		var err error
		for _, l := range links {
			if _, e := p.WriteTo(msg, &ipv4.ControlMessage{IfIndex: l.ifi.Index}, dst); e != nil {
				err = fmt.Errorf("announce to %s on %s: %w", dst, l.ifi.Name, e)
				continue
			}
			sent++
		}
		if sent > 0 {
			return nil
		}
		return err
	}
	if err := send(); err != nil {
		c.Close()
		return err
	}
	go func() {
		defer c.Close()
		prev := time.Duration(0)
		for _, at := range announceSchedule()[1:] {
			select {
			case <-ctx.Done():
				return
			case <-time.After(at - prev):
			}
			prev = at
			if err := send(); err != nil {
				log.Debug("announce repeat", "err", err)
			}
		}
	}()
	return nil
}

// Listener receives announcements on the group of the node's own version,
// on every link.
type Listener struct {
	conn *ipv4.PacketConn
	raw  net.PacketConn
	log  *slog.Logger

	mu     sync.Mutex
	image  string
	group  net.IP
	links  map[int]link
	failed map[string]string
}

// Listen binds the announcement port for the group of (image, v); Sync
// joins it on the links. Its Find reports the announcements heard; the
// socket closes when ctx ends.
func Listen(ctx context.Context, image string, v uint64, log *slog.Logger) (*Listener, error) {
	lc := net.ListenConfig{Control: reuseAddr}
	c, err := lc.ListenPacket(ctx, "udp4", ":"+strconv.Itoa(AnnouncePort))
	if err != nil {
		return nil, fmt.Errorf("listen for announcements: %w", err)
	}
	l := &Listener{raw: c, conn: ipv4.NewPacketConn(c), log: log, image: image, group: Group(image, v),
		links: map[int]link{}, failed: map[string]string{}}
	if err := l.conn.SetControlMessage(ipv4.FlagDst, true); err != nil {
		log.Debug("no destination control messages", "err", err)
	}
	go func() {
		<-ctx.Done()
		c.Close()
	}()
	return l, nil
}

// Sync joins the group on new or changed links and leaves those gone.
func (l *Listener) Sync(links []link) []link {
	l.mu.Lock()
	defer l.mu.Unlock()
	return syncGroups(l.conn, []net.IP{l.group}, l.links, l.failed, links, "multicast announcements", l.log)
}

// Rejoin moves the listener to the group of the node's new version on
// every link.
func (l *Listener) Rejoin(v uint64) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	g := Group(l.image, v)
	var err error
	for _, k := range l.links {
		ifi := k.ifi
		l.conn.LeaveGroup(&ifi, &net.UDPAddr{IP: l.group})
		if e := l.conn.JoinGroup(&ifi, &net.UDPAddr{IP: g}); e != nil && err == nil {
			err = fmt.Errorf("join %s on %s: %w", g, ifi.Name, e)
		}
	}
	l.group = g
	return err
}

// Find reports announcements of image on the node's group until the socket
// closes.
func (l *Listener) Find(_ context.Context, found func(Peer)) {
	buf := make([]byte, maxAnnounce+1)
	for {
		n, cm, src, err := l.conn.ReadFrom(buf)
		if err != nil {
			return
		}
		l.mu.Lock()
		group := l.group
		l.mu.Unlock()
		if cm != nil && cm.Dst != nil && !cm.Dst.Equal(group) {
			continue // another version's group, joined by another socket
		}
		a, err := ParseAnnouncement(buf[:n])
		if err != nil {
			l.log.Debug("announcement ignored", "from", src, "err", err)
			continue
		}
		udp, ok := src.(*net.UDPAddr)
		if !ok || a.Image != l.image {
			continue
		}
		found(Peer{URL: PeerURL(udp.IP, a.Port), Image: a.Image, Version: a.Version, Source: SourceMulticast})
	}
}
