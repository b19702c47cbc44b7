package discovery

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/peerup/peerup/manifest"
)

func TestGroupIsAdminScopedAndPerVersion(t *testing.T) {
	seen := map[string]uint64{}
	for v := uint64(1); v <= 300; v++ {
		g := Group("school-laptop", v)
		if !g.IsMulticast() || g[0] != 239 || g[1] != 255 {
			t.Fatalf("v%d: group %s is not in 239.255.0.0/16", v, g)
		}
		if w, dup := seen[g.String()]; dup && v-w < 2 {
			t.Errorf("versions %d and %d share group %s", w, v, g)
		}
		seen[g.String()] = v
	}
	if Group("a", 1).Equal(Group("b", 1)) {
		t.Error("two images at the same version share a group")
	}
	if !Group("x", 7).Equal(Group("x", 7)) {
		t.Error("group derivation is not stable")
	}
}

func TestAnnouncementRoundTripAndRejects(t *testing.T) {
	a := Announcement{Image: "school-laptop", Version: 42, Manifest: manifest.Digest{1, 2}, Port: 7380}
	got, err := ParseAnnouncement(a.Marshal())
	if err != nil || got != a {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	good := string(a.Marshal())
	for name, bad := range map[string]string{
		"magic":        strings.Replace(good, "announce 1", "announce 2", 1),
		"version 0":    strings.Replace(good, "version 42", "version 0", 1),
		"leading zero": strings.Replace(good, "version 42", "version 042", 1),
		"port 0":       strings.Replace(good, "port 7380", "port 0", 1),
		"port big":     strings.Replace(good, "port 7380", "port 70000", 1),
		"bad image":    strings.Replace(good, "school-laptop", "School Laptop", 1),
		"extra line":   good + "evil 1\n",
		"truncated":    good[:len(good)-1],
		"oversized":    good + strings.Repeat("x", 600),
	} {
		if _, err := ParseAnnouncement([]byte(bad)); !errors.Is(err, ErrAnnounce) {
			t.Errorf("%s: err = %v", name, err)
		}
	}
}

func FuzzParseAnnouncement(f *testing.F) {
	f.Add(Announcement{Image: "x", Version: 1, Port: 1}.Marshal())
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := ParseAnnouncement(b)
		if err != nil {
			return
		}
		if !bytes.Equal(a.Marshal(), b) {
			t.Fatalf("accepted a non-canonical announcement %q", b)
		}
	})
}

func TestTXT(t *testing.T) {
	a := Advert{Image: "school-laptop", Version: 9}
	got, err := ParseTXT(append(a.TXT(), "future=key"))
	if err != nil || got != a {
		t.Fatalf("%+v, %v", got, err)
	}
	for name, bad := range map[string][]string{
		"no image":     {"txtvers=1", "version=3"},
		"bad version":  {"image=x", "version=-1"},
		"txtvers 2":    {"txtvers=2", "image=x"},
		"duplicate":    {"image=x", "image=y"},
		"too many":     make([]string, 40),
		"too long":     {"image=x", "pad=" + strings.Repeat("a", 2000)},
		"hostile name": {"image=../../etc"},
	} {
		if _, err := ParseTXT(bad); !errors.Is(err, ErrTXT) {
			t.Errorf("%s: err = %v", name, err)
		}
	}
}

func FuzzParseTXT(f *testing.F) {
	f.Add("txtvers=1\x00image=x\x00version=2")
	f.Fuzz(func(t *testing.T, s string) {
		ParseTXT(strings.Split(s, "\x00")) // must not panic
	})
}

// TestPeersFromResponses reads a response as another responder (or Avahi)
// would send it, and ignores goodbyes and foreign services.
func TestPeersFromResponses(t *testing.T) {
	r := &Responder{instance: "laptop-7", host: "laptop-7", port: 7380, txt: Advert{Image: "school-laptop", Version: 5}.TXT(),
		links: map[int]link{1: {ifi: net.Interface{Index: 1, Name: "e1"}, addrs: []net.IP{net.IPv4(10, 99, 1, 7)}}}}
	m := &dns.Msg{MsgHdr: dns.MsgHdr{Response: true}}
	m.Answer = r.records(1, serviceQuestion(), 120, true)
	b, _ := m.Pack()
	var back dns.Msg
	back.Unpack(b)
	peers := peersFromMsg(&back, net.IPv4(10, 99, 1, 99))
	if len(peers) != 1 || peers[0].URL != "http://10.99.1.7:7380/" || peers[0].Version != 5 || peers[0].Image != "school-laptop" {
		t.Fatalf("peers = %v", peers)
	}
	for _, rr := range back.Answer {
		rr.Header().Ttl = 0
	}
	if p := peersFromMsg(&back, nil); len(p) != 0 {
		t.Fatalf("a goodbye was taken as an advert: %v", p)
	}
}

// TestPeerTableFlood: 10,000 fake adverts leave the table bounded, and the
// intake is rate limited.
func TestPeerTableFlood(t *testing.T) {
	m := NewManager("school-laptop", func() uint64 { return 3 })
	for i := range 10000 {
		m.Found(Peer{URL: fmt.Sprintf("http://10.%d.%d.%d:7380/", i>>16&255, i>>8&255, i&255), Image: "school-laptop", Version: uint64(i), Source: SourceMDNS})
	}
	if n := m.Len(); n > maxPeers || n > intakeMax+intakeRPS*5 {
		t.Fatalf("%d peers after a flood, bound is %d", n, min(maxPeers, intakeMax))
	}
	select {
	case <-m.Newer():
	default:
		t.Error("no wake-up for newer peers")
	}
}

func TestPeerTableFiltersAndExpires(t *testing.T) {
	now := time.Now()
	m := NewManager("school-laptop", func() uint64 { return 3 })
	m.now = func() time.Time { return now }
	m.Found(Peer{URL: "http://a/", Image: "other-image", Version: 9})
	m.Found(Peer{URL: "http://b/", Image: "school-laptop", Version: 2})
	select {
	case <-m.Newer():
		t.Fatal("an older peer woke the node")
	default:
	}
	m.Found(Peer{URL: "http://c/", Image: "school-laptop", Version: 4})
	if l := m.List(); len(l) != 2 || l[0].URL != "http://c/" {
		t.Fatalf("list = %v", l)
	}
	now = now.Add(peerTTL + time.Minute)
	if l := m.List(); len(l) != 0 {
		t.Fatalf("stale peers kept: %v", l)
	}
}

// Two laptops imaged alike claim one instance name; the one whose host and
// port sort later takes the next name, and only a live claim to this very
// name counts.
func TestConflictRenamesTheLaterNode(t *testing.T) {
	srv := func(name, target string, port uint16, ttl uint32) *dns.Msg {
		return &dns.Msg{Answer: []dns.RR{&dns.SRV{
			Hdr:    dns.RR_Header{Name: name, Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: ttl},
			Target: target, Port: port,
		}}}
	}
	ours := "school-laptop." + ServiceType + ".local."
	for _, tc := range []struct {
		name   string
		claims []*dns.Msg
		want   string
	}{
		{"earlier host wins the name", []*dns.Msg{srv(ours, "laptop-a.local.", 7380, 120)}, "school-laptop (2)"},
		{"names compare without case", []*dns.Msg{srv(strings.ToUpper(ours), "LAPTOP-A.local.", 7380, 120)}, "school-laptop (2)"},
		{"same host, lower port wins", []*dns.Msg{srv(ours, "laptop-b.local.", 7379, 120)}, "school-laptop (2)"},
		{"later host yields to us", []*dns.Msg{srv(ours, "laptop-c.local.", 7380, 120)}, "school-laptop"},
		{"our own answer echoed", []*dns.Msg{srv(ours, "laptop-b.local.", 7380, 120)}, "school-laptop"},
		{"a goodbye is no claim", []*dns.Msg{srv(ours, "laptop-a.local.", 7380, 0)}, "school-laptop"},
		{"another name is no claim", []*dns.Msg{srv("other."+ServiceType+".local.", "laptop-a.local.", 7380, 120)}, "school-laptop"},
		{"claimed again after the rename", []*dns.Msg{
			srv(ours, "laptop-a.local.", 7380, 120),
			srv("school-laptop (2)."+ServiceType+".local.", "laptop-a.local.", 7380, 120),
		}, "school-laptop (3)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &Responder{base: "school-laptop", instance: "school-laptop", host: "laptop-b", port: 7380,
				log: slog.New(slog.DiscardHandler), links: map[int]link{}, failed: map[string]string{}}
			r.probing = 1 // no links here; the finished probe would announce
			for _, m := range tc.claims {
				r.checkConflict(m, 1)
			}
			if r.instance != tc.want {
				t.Errorf("instance %q, want %q", r.instance, tc.want)
			}
		})
	}
}
