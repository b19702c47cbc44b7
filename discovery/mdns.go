package discovery

import (
	"context"
	"fmt"
	"io"
	stdlog "log"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/mdns"
	"github.com/miekg/dns"
	"golang.org/x/net/ipv4"
)

var mdnsGroup = &net.UDPAddr{IP: net.IPv4(224, 0, 0, 251), Port: 5353}

// Responder answers mDNS queries for the node's service by multicast, sends
// unsolicited announcements when it starts or its version changes, and a
// goodbye when it stops. It also hands every mDNS response it hears on the
// link to the browser, so a peer's announcement is seen at once.
type Responder struct {
	iface    *net.Interface
	raw      net.PacketConn
	conn     *ipv4.PacketConn
	instance string
	host     string
	port     int
	ips      []net.IP
	log      *slog.Logger
	heard    func(*dns.Msg, net.IP)

	mu   sync.Mutex
	zone *mdns.MDNSService
}

// ResponderConfig describes the advert.
type ResponderConfig struct {
	Iface    *net.Interface // nil: every multicast interface
	Instance string         // unique per node, e.g. the host name
	Host     string         // host name, without .local
	Port     int
	IPs      []net.IP // addresses to advertise (IPv4)
	Advert   Advert
	Log      *slog.Logger
	// Heard, if set, gets every mDNS response heard on the link.
	Heard func(m *dns.Msg, from net.IP)
}

// NewResponder binds port 5353 (shared with other responders) and starts
// answering. Call Announce to announce, Close to say goodbye.
func NewResponder(ctx context.Context, c ResponderConfig) (*Responder, error) {
	lc := net.ListenConfig{Control: reuseAddr}
	raw, err := lc.ListenPacket(ctx, "udp4", ":5353")
	if err != nil {
		return nil, fmt.Errorf("mdns: %w", err)
	}
	r := &Responder{iface: c.Iface, raw: raw, conn: ipv4.NewPacketConn(raw), instance: c.Instance,
		host: c.Host, port: c.Port, ips: c.IPs, log: c.Log, heard: c.Heard}
	if err := r.conn.JoinGroup(c.Iface, mdnsGroup); err != nil {
		raw.Close()
		return nil, fmt.Errorf("mdns: join %s: %w", mdnsGroup.IP, err)
	}
	if c.Iface != nil {
		if err := r.conn.SetMulticastInterface(c.Iface); err != nil {
			raw.Close()
			return nil, fmt.Errorf("mdns: %w", err)
		}
	}
	r.conn.SetMulticastTTL(255) // RFC 6762 §11
	if c.Port != 0 {            // port 0: listen only (peerup discover)
		if err := r.setAdvert(c.Advert); err != nil {
			raw.Close()
			return nil, err
		}
	}
	go r.serve()
	return r, nil
}

func (r *Responder) setAdvert(a Advert) error {
	zone, err := mdns.NewMDNSService(r.instance, ServiceType, "local.", r.host+".local.", r.port, r.ips, a.TXT())
	if err != nil {
		return fmt.Errorf("mdns: %w", err)
	}
	r.mu.Lock()
	r.zone = zone
	r.mu.Unlock()
	return nil
}

// records returns the zone's answer to q, with the cache-flush bit on the
// records only this node owns (RFC 6762 §10.2).
func (r *Responder) records(q dns.Question, ttl uint32, flush bool) []dns.RR {
	r.mu.Lock()
	zone := r.zone
	r.mu.Unlock()
	if zone == nil {
		return nil
	}
	rrs := zone.Records(q)
	out := make([]dns.RR, 0, len(rrs))
	for _, rr := range rrs {
		rr = dns.Copy(rr)
		h := rr.Header()
		h.Ttl = min(h.Ttl, ttl)
		if flush && h.Rrtype != dns.TypePTR {
			h.Class |= 1 << 15
		}
		out = append(out, rr)
	}
	return out
}

func (r *Responder) serviceQuestion() dns.Question {
	return dns.Question{Name: ServiceType + ".local.", Qtype: dns.TypePTR, Qclass: dns.ClassINET}
}

// Announce multicasts the full advert, unasked, a few times (RFC 6762
// §8.3), so that browsers and caches such as Avahi's learn of it, or of its
// new version, at once.
func (r *Responder) Announce(ctx context.Context, a Advert) error {
	if r.port == 0 {
		return nil
	}
	if err := r.setAdvert(a); err != nil {
		return err
	}
	send := func() error {
		m := &dns.Msg{MsgHdr: dns.MsgHdr{Response: true, Authoritative: true}}
		m.Answer = r.records(r.serviceQuestion(), 120, true)
		return r.send(m, mdnsGroup)
	}
	if err := send(); err != nil {
		return err
	}
	go func() {
		for _, d := range []time.Duration{time.Second, 2 * time.Second} {
			select {
			case <-ctx.Done():
				return
			case <-time.After(d):
			}
			if err := send(); err != nil {
				r.log.Debug("mdns announce", "err", err)
			}
		}
	}()
	return nil
}

func (r *Responder) send(m *dns.Msg, to *net.UDPAddr) error {
	b, err := m.Pack()
	if err != nil {
		return fmt.Errorf("mdns: pack: %w", err)
	}
	if _, err := r.conn.WriteTo(b, nil, to); err != nil {
		return fmt.Errorf("mdns: send to %s: %w", to, err)
	}
	return nil
}

// Close sends a goodbye (TTL 0) and stops answering.
func (r *Responder) Close() error {
	if r.port == 0 {
		return r.raw.Close()
	}
	m := &dns.Msg{MsgHdr: dns.MsgHdr{Response: true, Authoritative: true}}
	m.Answer = r.records(r.serviceQuestion(), 0, false)
	for _, rr := range m.Answer {
		rr.Header().Ttl = 0
	}
	r.send(m, mdnsGroup)
	return r.raw.Close()
}

func (r *Responder) serve() {
	buf := make([]byte, 9000)
	for {
		n, _, src, err := r.conn.ReadFrom(buf)
		if err != nil {
			return
		}
		udp, ok := src.(*net.UDPAddr)
		if !ok {
			continue
		}
		var m dns.Msg
		if err := m.Unpack(buf[:n]); err != nil {
			continue
		}
		if m.Response {
			if r.heard != nil {
				r.heard(&m, udp.IP)
			}
			continue
		}
		r.answer(&m, udp)
	}
}

// answer replies to a query: by multicast from port 5353 to a querier on
// port 5353 (other responders' caches learn too), and by unicast with the
// query's id and question to a one-shot querier on another port, such as
// hashicorp/mdns's own client (RFC 6762 §6.7).
func (r *Responder) answer(q *dns.Msg, from *net.UDPAddr) {
	legacy := from.Port != 5353
	resp := &dns.Msg{MsgHdr: dns.MsgHdr{Response: true, Authoritative: true}}
	ttl := uint32(120)
	if legacy {
		resp.Id = q.Id
		resp.Question = q.Question
		ttl = 10
	}
	for _, question := range q.Question {
		question.Qclass &^= 1 << 15 // the unicast-response bit
		resp.Answer = append(resp.Answer, r.records(question, ttl, !legacy)...)
	}
	if len(resp.Answer) == 0 {
		return
	}
	to := mdnsGroup
	if legacy {
		to = from
	}
	if err := r.send(resp, to); err != nil {
		r.log.Debug("mdns answer", "err", err)
	}
}

// peersFromMsg extracts peerup adverts from an mDNS response.
func peersFromMsg(m *dns.Msg, from net.IP) []Peer {
	rrs := append(append([]dns.RR{}, m.Answer...), m.Extra...)
	srv := map[string]*dns.SRV{}
	txt := map[string][]string{}
	addr := map[string]net.IP{}
	var instances []string
	suffix := "." + ServiceType + ".local."
	for _, rr := range rrs {
		if rr.Header().Ttl == 0 {
			continue // goodbyes
		}
		switch v := rr.(type) {
		case *dns.PTR:
			if strings.EqualFold(v.Hdr.Name, ServiceType+".local.") {
				instances = append(instances, v.Ptr)
			}
		case *dns.SRV:
			srv[strings.ToLower(v.Hdr.Name)] = v
		case *dns.TXT:
			txt[strings.ToLower(v.Hdr.Name)] = v.Txt
		case *dns.A:
			addr[strings.ToLower(v.Hdr.Name)] = v.A
		}
	}
	for name := range srv {
		if strings.HasSuffix(name, strings.ToLower(suffix)) {
			instances = append(instances, name)
		}
	}
	var out []Peer
	seen := map[string]bool{}
	for _, inst := range instances {
		inst = strings.ToLower(inst)
		s, t := srv[inst], txt[inst]
		if seen[inst] || s == nil || t == nil {
			continue
		}
		seen[inst] = true
		a, err := ParseTXT(t)
		if err != nil {
			continue
		}
		ip := addr[strings.ToLower(s.Target)]
		if ip == nil {
			ip = from
		}
		out = append(out, Peer{URL: PeerURL(ip, int(s.Port)), Image: a.Image, Version: a.Version, Source: SourceMDNS})
	}
	return out
}

// CanBrowse reports why this node cannot listen for mDNS answers on iface
// (nil: every multicast interface), as hashicorp/mdns's client would fail
// to, or nil. A LAN with no route for 224.0.0.0/4 (an offline school) is
// the usual cause.
func CanBrowse(iface *net.Interface) error {
	c, err := net.ListenMulticastUDP("udp4", iface, mdnsGroup)
	if err != nil {
		return fmt.Errorf("cannot listen for mDNS (%s) on %s: %w", mdnsGroup, ifaceName(iface), err)
	}
	c.Close()
	return nil
}

func ifaceName(iface *net.Interface) string {
	if iface == nil {
		return "the default multicast interface"
	}
	return iface.Name
}

// Browse asks the link for peerup services with hashicorp/mdns, at start
// and then at a widening interval, reporting each to found. A failure to
// listen is a warning, said again only when it changes.
func Browse(ctx context.Context, iface *net.Interface, found func(Peer), log *slog.Logger) {
	interval := 5 * time.Second
	var said string
	for {
		entries := make(chan *mdns.ServiceEntry, 64) // the library drops results when the channel is full
		done := make(chan struct{})
		go func() {
			defer close(done)
			for e := range entries {
				a, err := ParseTXT(e.InfoFields)
				if err != nil || e.AddrV4 == nil {
					continue
				}
				found(Peer{URL: PeerURL(e.AddrV4, e.Port), Image: a.Image, Version: a.Version, Source: SourceMDNS})
			}
		}()
		err := mdns.QueryContext(ctx, &mdns.QueryParam{
			Service: ServiceType, Domain: "local", Timeout: 2 * time.Second,
			Interface: iface, Entries: entries, DisableIPv6: true,
			Logger: stdlog.New(io.Discard, "", 0), // its chatter is not ours to print
		})
		close(entries)
		<-done
		if err != nil && ctx.Err() == nil {
			if err.Error() != said {
				log.Warn("mdns browse: no peers will be found this way until it can listen", "iface", ifaceName(iface), "err", err)
				said = err.Error()
			}
		} else if said != "" {
			log.Info("mdns browse listening again", "iface", ifaceName(iface))
			said = ""
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval):
		}
		interval = min(interval*2, 10*time.Minute)
	}
}
