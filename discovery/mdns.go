package discovery

import (
	"context"
	"fmt"
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
// link to the browser, so a peer's announcement is seen at once, and asks
// for peers itself (Query).
//
// One socket on port 5353 joins the mDNS group on each link (Sync) and
// sends on each by index: no route is needed, and each link is told the
// addresses the node has there, so a seed on two LANs is reachable from
// both.
type Responder struct {
	raw  net.PacketConn
	conn *ipv4.PacketConn
	base string // the instance name before any conflict suffix
	host string // the host label, unique per node
	port int
	log  *slog.Logger
	// heard, if set, gets every mDNS response heard on a link.
	heard func(*dns.Msg, net.IP)

	mu       sync.Mutex
	instance string
	renames  int
	txt      []string // nil: nothing advertised yet
	links    map[int]link
	failed   map[string]string // interface name: the join error last warned about
	// probing counts probes under way: links probe concurrently, and a
	// rename heard meanwhile is announced by the probe that finishes, not
	// at once.
	probing int
}

// ResponderConfig describes the advert.
type ResponderConfig struct {
	Instance string // DNS-SD instance name; made unique on conflict
	Host     string // host label, without .local; unique per node
	Port     int    // 0: advertise nothing (peerup discover)
	Advert   Advert
	Log      *slog.Logger
	// Heard, if set, gets every mDNS response heard on the link.
	Heard func(m *dns.Msg, from net.IP)
}

// NewResponder binds port 5353 (shared with other responders). Sync then
// joins the links; Announce announces, Close says goodbye.
func NewResponder(ctx context.Context, c ResponderConfig) (*Responder, error) {
	lc := net.ListenConfig{Control: reuseAddr}
	raw, err := lc.ListenPacket(ctx, "udp4", ":5353")
	if err != nil {
		return nil, fmt.Errorf("mdns: %w", err)
	}
	log := c.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Responder{raw: raw, conn: ipv4.NewPacketConn(raw), base: c.Instance, instance: c.Instance,
		host: c.Host, port: c.Port, log: log, heard: c.Heard, links: map[int]link{}, failed: map[string]string{}}
	if err := r.conn.SetControlMessage(ipv4.FlagInterface, true); err != nil {
		raw.Close()
		return nil, fmt.Errorf("mdns: %w", err)
	}
	r.conn.SetMulticastTTL(255) // RFC 6762 §11
	r.conn.SetMulticastLoopback(true)
	if c.Port != 0 {
		r.txt = c.Advert.TXT()
	}
	go r.serve()
	return r, nil
}

// Sync joins the mDNS group on links the responder is not on yet, or whose
// addresses changed, and leaves those gone. It returns the links joined
// now, where the caller announces and asks again; a link it cannot join is
// a warning, said once until it changes.
func (r *Responder) Sync(links []link) []link {
	r.mu.Lock()
	defer r.mu.Unlock()
	return syncGroups(r.conn, []net.IP{mdnsGroup.IP}, r.links, r.failed, links, "mdns", r.log)
}

// syncGroups is Sync for any socket and its groups.
func syncGroups(conn *ipv4.PacketConn, groups []net.IP, joined map[int]link, failed map[string]string, links []link, what string, log *slog.Logger) []link {
	now := map[int]bool{}
	var fresh []link
	for _, l := range links {
		now[l.ifi.Index] = true
		old, ok := joined[l.ifi.Index]
		if ok && old.state() == l.state() {
			continue
		}
		ifi := l.ifi
		var err error
		for _, g := range groups {
			// After the interface went down and up the kernel may hold the
			// old membership or none: leave, then join afresh.
			conn.LeaveGroup(&ifi, &net.UDPAddr{IP: g})
			if e := conn.JoinGroup(&ifi, &net.UDPAddr{IP: g}); e != nil && err == nil {
				err = fmt.Errorf("join %s: %w", g, e)
			}
		}
		if err != nil {
			if failed[ifi.Name] != err.Error() {
				log.Warn(what+": cannot listen on this interface; no peers will be heard there until it can", "iface", ifi.Name, "err", err)
				failed[ifi.Name] = err.Error()
			}
			delete(joined, ifi.Index)
			continue
		}
		if failed[ifi.Name] != "" {
			log.Info(what+": listening again", "iface", ifi.Name)
			delete(failed, ifi.Name)
		}
		joined[ifi.Index] = l
		fresh = append(fresh, l)
	}
	for idx, l := range joined {
		if !now[idx] {
			ifi := l.ifi
			for _, g := range groups {
				conn.LeaveGroup(&ifi, &net.UDPAddr{IP: g})
			}
			delete(joined, idx)
		}
	}
	return fresh
}

// Links is how many links the responder listens on.
func (r *Responder) Links() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.links)
}

// zone is the advert as it is on the link with index ifindex: the
// addresses the node has there. Nil when nothing is advertised.
func (r *Responder) zone(ifindex int) *mdns.MDNSService {
	r.mu.Lock()
	l, ok := r.links[ifindex]
	txt, inst := r.txt, r.instance
	r.mu.Unlock()
	if !ok || txt == nil {
		return nil
	}
	zone, err := mdns.NewMDNSService(inst, ServiceType, "local.", r.host+".local.", r.port, l.addrs, txt)
	if err != nil {
		r.log.Debug("mdns zone", "err", err)
		return nil
	}
	return zone
}

// records returns the zone's answer to q on a link, with the cache-flush
// bit on the records only this node owns (RFC 6762 §10.2).
func (r *Responder) records(ifindex int, q dns.Question, ttl uint32, flush bool) []dns.RR {
	zone := r.zone(ifindex)
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

func serviceQuestion() dns.Question {
	return dns.Question{Name: ServiceType + ".local.", Qtype: dns.TypePTR, Qclass: dns.ClassINET}
}

// indexes lists the links joined, or only ifindex when it is not 0.
func (r *Responder) indexes(ifindex int) []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []int
	for idx := range r.links {
		if ifindex == 0 || idx == ifindex {
			out = append(out, idx)
		}
	}
	return out
}

// Announce multicasts the full advert, unasked, a few times (RFC 6762
// §8.3) on every link, so that browsers and caches such as Avahi's learn of
// it, or of its new version, at once.
func (r *Responder) Announce(ctx context.Context, a Advert) error {
	if r.port == 0 {
		return nil
	}
	r.mu.Lock()
	r.txt = a.TXT()
	r.mu.Unlock()
	return r.AnnounceOn(ctx, 0)
}

// AnnounceOn announces on the link with index ifindex (0: every link),
// first probing for the instance name (RFC 6762 §8.1): a node that hears
// its name claimed by another takes the next one, "name (2)".
func (r *Responder) AnnounceOn(ctx context.Context, ifindex int) error {
	if r.port == 0 {
		return nil
	}
	send := func() error {
		var err error
		for _, idx := range r.indexes(ifindex) {
			m := &dns.Msg{MsgHdr: dns.MsgHdr{Response: true, Authoritative: true}}
			m.Answer = r.records(idx, serviceQuestion(), 120, true)
			if e := r.send(m, mdnsGroup, idx); e != nil && err == nil {
				err = e
			}
		}
		return err
	}
	go func() {
		if !r.probe(ctx, ifindex) {
			return
		}
		if err := send(); err != nil {
			r.log.Debug("mdns announce", "err", err)
		}
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

// probe asks three times, 250 ms apart, whether another node answers for
// the instance name; a conflict heard meanwhile (serve) renames this node.
// It reports false when ctx ended.
func (r *Responder) probe(ctx context.Context, ifindex int) bool {
	r.mu.Lock()
	r.probing++
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		r.probing--
		r.mu.Unlock()
	}()
	for range 3 {
		r.mu.Lock()
		name := r.instance + "." + ServiceType + ".local."
		r.mu.Unlock()
		q := &dns.Msg{}
		q.Question = []dns.Question{{Name: name, Qtype: dns.TypeANY, Qclass: dns.ClassINET}}
		for _, idx := range r.indexes(ifindex) {
			r.send(q, mdnsGroup, idx)
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(250 * time.Millisecond):
		}
	}
	return true
}

// Query asks for every peerup service on the link with index ifindex (0:
// every link). Answers come by multicast, to serve.
func (r *Responder) Query(ifindex int) {
	q := &dns.Msg{}
	q.Question = []dns.Question{serviceQuestion()}
	for _, idx := range r.indexes(ifindex) {
		if err := r.send(q, mdnsGroup, idx); err != nil {
			r.log.Debug("mdns query", "err", err)
		}
	}
}

func (r *Responder) send(m *dns.Msg, to *net.UDPAddr, ifindex int) error {
	b, err := m.Pack()
	if err != nil {
		return fmt.Errorf("mdns: pack: %w", err)
	}
	if _, err := r.conn.WriteTo(b, &ipv4.ControlMessage{IfIndex: ifindex}, to); err != nil {
		return fmt.Errorf("mdns: send to %s: %w", to, err)
	}
	return nil
}

// Close sends a goodbye (TTL 0) on every link and stops answering.
func (r *Responder) Close() error {
	if r.port != 0 {
		for _, idx := range r.indexes(0) {
			m := &dns.Msg{MsgHdr: dns.MsgHdr{Response: true, Authoritative: true}}
			m.Answer = r.records(idx, serviceQuestion(), 0, false)
			for _, rr := range m.Answer {
				rr.Header().Ttl = 0
			}
			r.send(m, mdnsGroup, idx)
		}
	}
	return r.raw.Close()
}

func (r *Responder) serve() {
	buf := make([]byte, 9000)
	for {
		n, cm, src, err := r.conn.ReadFrom(buf)
		if err != nil {
			return
		}
		udp, ok := src.(*net.UDPAddr)
		if !ok || cm == nil {
			continue
		}
		var m dns.Msg
		if err := m.Unpack(buf[:n]); err != nil {
			continue
		}
		if m.Response {
			r.checkConflict(&m, cm.IfIndex)
			if r.heard != nil {
				r.heard(&m, udp.IP)
			}
			continue
		}
		r.answer(&m, udp, cm.IfIndex)
	}
}

// checkConflict renames the node when another one answers for its
// instance name with other data (RFC 6762 §9): "name (2)", "name (3)", …,
// then announces the new name.
func (r *Responder) checkConflict(m *dns.Msg, ifindex int) {
	if r.port == 0 {
		return
	}
	r.mu.Lock()
	name := strings.ToLower(r.instance + "." + ServiceType + ".local.")
	conflict := false
	for _, rr := range append(append([]dns.RR{}, m.Answer...), m.Extra...) {
		srv, ok := rr.(*dns.SRV)
		if !ok || strings.ToLower(srv.Hdr.Name) != name || srv.Hdr.Ttl == 0 {
			continue
		}
		// Of two nodes claiming one name, the one whose host and port sort
		// later yields (as RFC 6762 §8.2 breaks ties), so that they do not
		// both rename forever.
		ours := fmt.Sprintf("%s:%05d", strings.ToLower(r.host+".local."), r.port)
		theirs := fmt.Sprintf("%s:%05d", strings.ToLower(srv.Target), srv.Port)
		if theirs < ours {
			conflict = true
		}
	}
	if !conflict {
		r.mu.Unlock()
		return
	}
	r.renames++
	old := r.instance
	r.instance = fmt.Sprintf("%s (%d)", r.base, r.renames+1)
	now, probing := r.instance, r.probing > 0
	r.mu.Unlock()
	r.log.Warn("mdns: another node answers for this node's name; renamed", "was", old, "now", now)
	if !probing {
		r.AnnounceOn(context.Background(), 0)
	}
}

// answer replies to a query on the link it came from: by multicast from
// port 5353 to a querier on port 5353 (other responders' caches learn too),
// and by unicast with the query's id and question to a one-shot querier on
// another port, such as hashicorp/mdns's own client (RFC 6762 §6.7).
func (r *Responder) answer(q *dns.Msg, from *net.UDPAddr, ifindex int) {
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
		resp.Answer = append(resp.Answer, r.records(ifindex, question, ttl, !legacy)...)
	}
	if len(resp.Answer) == 0 {
		return
	}
	to := mdnsGroup
	if legacy {
		to = from
	}
	if err := r.send(resp, to, ifindex); err != nil {
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
