package daemon

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/peerup/peerup/apply"
	"github.com/peerup/peerup/internal/testbus"
	"github.com/peerup/peerup/internal/testlan"
	"github.com/peerup/peerup/transfer"
)

// fakeHost answers as UPower and NetworkManager would, for the rules'
// table tests; the daemon's tests use python-dbusmock's real services.
type fakeHost struct {
	power   Power
	metered bool
	err     error
}

func (h fakeHost) Power(context.Context) (Power, error)  { return h.power, h.err }
func (h fakeHost) Metered(context.Context) (bool, error) { return h.metered, h.err }

func TestApplyHold(t *testing.T) {
	monday10 := at(time.Monday, "10:00", time.Local)
	school, _ := ParseWindows([]string{"Mon-Fri 16:00-08:00", "Sat-Sun"})
	tests := []struct {
		name string
		cd   Conditions
		want string
	}{
		{"no rules", Conditions{}, ""},
		{"on AC, low", Conditions{BatteryFloor: 30, Host: fakeHost{power: Power{Percentage: 10, Present: true}}}, ""},
		{"on battery, above", Conditions{BatteryFloor: 30, Host: fakeHost{power: Power{OnBattery: true, Percentage: 30, Present: true}}}, ""},
		{"on battery, below", Conditions{BatteryFloor: 30, Host: fakeHost{power: Power{OnBattery: true, Percentage: 18.7, Present: true}}}, "on battery (18% < 30%)"},
		{"on battery, no floor", Conditions{Host: fakeHost{power: Power{OnBattery: true, Percentage: 5, Present: true}}}, ""},
		{"on battery, charge unknown", Conditions{BatteryFloor: 30, Host: fakeHost{power: Power{OnBattery: true}}}, ""},
		{"no UPower", Conditions{BatteryFloor: 30, Host: fakeHost{err: errors.New("org.freedesktop.DBus.Error.ServiceUnknown")}}, ""},
		{"outside the window", Conditions{Windows: school}, "outside the update window (opens Mon 16:00)"},
		{"at shutdown", Conditions{ApplyOn: ApplyOnShutdown}, "applies at shutdown"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := &Core{ctx: context.Background(), o: Options{Conditions: tc.cd, Now: func() time.Time { return monday10 }, Log: slog.New(slog.DiscardHandler)}}
			if got := c.applyHold(context.Background()); got != tc.want {
				t.Errorf("applyHold = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestMeteredValues(t *testing.T) {
	// NMMetered: UNKNOWN, YES, NO, GUESS_YES, GUESS_NO.
	for v, want := range []bool{false, true, false, true, false} {
		if got := meteredValue(uint32(v)); got != want {
			t.Errorf("NMMetered %d: metered %v, want %v", v, got, want)
		}
	}
}

// fakeResolver resolves names from a table.
type fakeResolver map[string][]string

func (r fakeResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, a := range r[host] {
		out = append(out, netip.MustParseAddr(a))
	}
	if len(out) == 0 {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	return out, nil
}

func TestIsLAN(t *testing.T) {
	r := fakeResolver{"school-server": {"10.1.2.3"}, "cdn.example.org": {"203.0.113.7"}, "mixed": {"192.168.1.2", "198.51.100.1"}}
	for _, tc := range []struct {
		loc  string
		want bool
	}{
		{"/media/stick", true},
		{"http://10.0.0.5:7380/", true},
		{"http://172.20.1.1:7380/", true},
		{"http://192.168.1.9/", true},
		{"http://127.0.0.1:7380/", true},
		{"http://169.254.10.1:7380/", true},
		{"http://[fe80::1]:7380/", true},
		{"http://[fd00::5]:7380/", true},
		{"http://[::ffff:10.0.0.1]:7380/", true},
		{"http://192.0.2.10:7380/", false}, // TEST-NET: not private
		{"http://100.64.0.1/", false},      // a carrier's shared space
		{"https://updates.example.org/", false},
		{"http://school-server:7380/", true},
		{"http://cdn.example.org/", false},
		{"http://mixed/", false},
		{"ftp://10.0.0.1/", false},
	} {
		if got := isLAN(context.Background(), tc.loc, r); got != tc.want {
			t.Errorf("isLAN(%s) = %v, want %v", tc.loc, got, tc.want)
		}
	}
}

// TestLANOnly: on a metered connection a peer beyond the LAN is left out,
// unless discovery found it on the LAN; unmetered, nothing is.
func TestLANOnly(t *testing.T) {
	peers := []string{"/media/stick", "http://10.0.0.5:7380/", "http://192.0.2.10:7380/", "http://198.51.100.4:7380/"}
	for _, tc := range []struct {
		name    string
		metered bool
		want    []string
	}{
		{"metered", true, []string{"/media/stick", "http://10.0.0.5:7380/", "http://198.51.100.4:7380/"}},
		{"unmetered", false, peers},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &Core{ctx: context.Background(), o: Options{
				Conditions: Conditions{Host: fakeHost{metered: tc.metered}},
				Discovered: func() []string { return []string{"http://198.51.100.4:7380/"} },
				Log:        slog.New(slog.DiscardHandler)}}
			got, left := c.lanOnly(peers)
			if fmt.Sprint(got) != fmt.Sprint(tc.want) || left != tc.metered {
				t.Errorf("lanOnly = %v (left out some: %v), want %v", got, left, tc.want)
			}
		})
	}
}

// setProp sets a property of a python-dbusmock service, as the service
// itself would change it: PropertiesChanged follows.
func setProp(t *testing.T, addr, name string, path dbus.ObjectPath, iface, prop string, v any) {
	t.Helper()
	conn, err := dbus.Connect(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.Object(name, path).SetProperty(iface+"."+prop, dbus.MakeVariant(v)); err != nil {
		t.Fatalf("set %s.%s: %v", iface, prop, err)
	}
}

// policyDaemon starts an in-process daemon with cfg on a sysroot running
// v1 of a fleet that has published v2, the fleet's server its peer, and
// returns what it sees and how to stop it (before the test ends, too).
func policyDaemon(t *testing.T, cfg Config) (d *Daemon, l propsLog, sysroot string, stop func()) {
	t.Helper()
	f := newTestFleet(t)
	f.publish(t, 1)
	sysroot = f.sysrootAt(t, 1)
	f.publish(t, 2)
	cfg.Sysroot, cfg.Trust, cfg.Listen, cfg.Peers = sysroot, []string{f.pub}, "127.0.0.1:0", []string{f.url}
	if cfg.Bus == "" {
		cfg.Bus = "none"
	}
	ctx, cancel := context.WithCancel(context.Background())
	var err error
	d, err = Start(ctx, cfg, nil, slog.New(slog.NewTextHandler(testLog{t}, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	l = propsLog{ch: make(chan Props, 1024)}
	d.Core.Observe(l)
	stop = sync.OnceFunc(func() { cancel(); d.Wait(ctx) })
	t.Cleanup(stop)
	return d, l, sysroot, stop
}

func sysrootStatus(t *testing.T, s *apply.Sysroot) apply.Status {
	t.Helper()
	st, err := s.Status()
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestBatteryFloorHoldsTheSwitch: with UPower (python-dbusmock) saying the
// laptop is on battery at 18%, below the floor of 30%, the daemon fetches
// and stages v2 but does not switch, and says why; a charge still below
// the floor changes only the reason; plugging in AC switches.
func TestBatteryFloorHoldsTheSwitch(t *testing.T) {
	sys := privateBus(t)
	testbus.Mock(t, sys, "upower", upowerName)
	setProp(t, sys, upowerName, upowerDisplay, upowerDevice, "IsPresent", true)
	setProp(t, sys, upowerName, upowerDisplay, upowerDevice, "Percentage", 18.0)
	setProp(t, sys, upowerName, upowerPath, upowerName, "OnBattery", true)

	d, l, _, _ := policyDaemon(t, Config{Policy: "auto", SystemBus: sys})
	l.until(t, d.Core, "staged, waiting on the battery", func(p Props) bool {
		return p.State == StateUpdateReady && p.Waiting == "on battery (18% < 30%)"
	})
	if st := sysrootStatus(t, d.Sysroot); st.Current != 1 || st.Staged != 2 {
		t.Fatalf("on battery at 18%%: current %d, staged %d; want 1 and 2", st.Current, st.Staged)
	}
	setProp(t, sys, upowerName, upowerDisplay, upowerDevice, "Percentage", 29.5)
	l.until(t, d.Core, "the reason to follow the charge", func(p Props) bool { return p.Waiting == "on battery (29% < 30%)" })
	if st := sysrootStatus(t, d.Sysroot); st.Current != 1 {
		t.Fatalf("on battery at 29%%: switched to %d", st.Current)
	}
	setProp(t, sys, upowerName, upowerPath, upowerName, "OnBattery", false)
	l.until(t, d.Core, "applied on AC", func(p Props) bool { return p.State == StateUpdateApplied && p.CurrentVersion == 2 && p.Waiting == "" })
}

// TestNoUPowerNoRestriction: a system bus without UPower holds nothing
// back.
func TestNoUPowerNoRestriction(t *testing.T) {
	d, l, _, _ := policyDaemon(t, Config{Policy: "auto", SystemBus: privateBus(t)})
	l.until(t, d.Core, "applied", func(p Props) bool { return p.State == StateUpdateApplied && p.CurrentVersion == 2 })
}

// TestUpdateWindowHoldsTheSwitch: outside the update window (Monday
// 10:00, in class) the daemon stages v2 but does not switch; once the
// clock reaches the window, its next look switches.
func TestUpdateWindowHoldsTheSwitch(t *testing.T) {
	var now atomic.Pointer[time.Time]
	set := func(t time.Time) { now.Store(&t) }
	set(at(time.Monday, "10:00", time.Local))
	d, l, _, _ := policyDaemon(t, Config{Policy: "auto", SystemBus: "none", Now: func() time.Time { return *now.Load() },
		ApplyWindows: []string{"Mon-Fri 16:00-08:00", "Sat-Sun"}})
	l.until(t, d.Core, "staged, waiting for the window", func(p Props) bool {
		return p.State == StateUpdateReady && p.Waiting == "outside the update window (opens Mon 16:00)"
	})
	d.Core.Reconsider() // as the minute's timer does, still in class
	if p := d.Core.Props(); p.State != StateUpdateReady || p.CurrentVersion != 1 {
		t.Fatalf("in class: %+v", p)
	}
	set(at(time.Monday, "16:01", time.Local))
	d.Core.Reconsider()
	l.until(t, d.Core, "applied in the window", func(p Props) bool { return p.State == StateUpdateApplied && p.CurrentVersion == 2 })
}

// execStop is the shutdown unit's ExecStop command line, split into words.
func execStop(t *testing.T) []string {
	t.Helper()
	unit, err := os.ReadFile("dist/peerup-apply-on-shutdown.service")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(unit), "\n") {
		if cmd, ok := strings.CutPrefix(line, "ExecStop="); ok {
			return strings.Fields(cmd)
		}
	}
	t.Fatal("the shutdown unit has no ExecStop")
	return nil
}

// TestApplyOnShutdown: with apply-on "shutdown" the daemon stages v2 and
// waits, saying so; the switch happens when the shutdown unit's ExecStop
// runs (as written, with the test's binary and config), and a second run
// finds nothing to do.
func TestApplyOnShutdown(t *testing.T) {
	d, l, sysroot, stop := policyDaemon(t, Config{Policy: "auto", ApplyOn: "shutdown", SystemBus: "none"})
	l.until(t, d.Core, "staged for shutdown", func(p Props) bool { return p.State == StateUpdateReady && p.Waiting == "applies at shutdown" })
	d.Core.Reconsider()
	if st := sysrootStatus(t, d.Sysroot); st.Current != 1 || st.Staged != 2 {
		t.Fatalf("before shutdown: current %d, staged %d; want 1 and 2", st.Current, st.Staged)
	}
	// The unit is ordered before peerup.service: the daemon stops first.
	stop()

	conf := filepath.Join(t.TempDir(), "peerup.toml")
	os.WriteFile(conf, []byte(fmt.Sprintf("sysroot = %q\npolicy = \"auto\"\napply-on = \"shutdown\"\n", sysroot)), 0o644)
	bin := buildBinary(t)
	run := func() string {
		t.Helper()
		args := execStop(t)
		for i, a := range args {
			switch a {
			case "/usr/bin/peerup":
				args[i] = bin
			case "/etc/peerup/peerup.toml":
				args[i] = conf
			}
		}
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	out := run()
	s, err := apply.OpenExisting(sysroot)
	if err != nil {
		t.Fatal(err)
	}
	if st := sysrootStatus(t, s); st.Current != 2 || st.Previous != 1 || st.Staged != 0 {
		t.Fatalf("after ExecStop (%q): current %d, previous %d, staged %d; want 2, 1, 0", out, st.Current, st.Previous, st.Staged)
	}
	if out := run(); !strings.Contains(out, "nothing staged") {
		t.Errorf("a second shutdown: %q, want nothing staged", out)
	}
}

// counting counts the requests a handler gets.
type counting struct {
	h http.Handler
	n atomic.Int64
}

func (c *counting) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c.n.Add(1)
	c.h.ServeHTTP(w, r)
}

// serveIn serves h inside network namespace ns on addr, until the test
// ends, and returns its URL.
func serveIn(t *testing.T, ns, addr string, h http.Handler) string {
	t.Helper()
	var ln net.Listener
	inNamespace(t, ns, func() {
		var err error
		if ln, err = net.Listen("tcp", addr); err != nil {
			t.Fatal(err)
		}
	})
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String() + "/"
}

// beyondTheLAN makes a namespace joined to node ns by a veth pair of its
// own, with public addresses (192.0.2.1 at the node, 192.0.2.2 in it,
// TEST-NET-1), and returns its name: an upstream the node reaches off the
// LAN's bridge. A pair between two namespaces never passes the host's
// firewall, which bridged traffic does.
func beyondTheLAN(t *testing.T, ns string) string {
	t.Helper()
	var r [3]byte
	rand.Read(r[:])
	id := hex.EncodeToString(r[:])
	up := "puup" + id
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	ip("netns", "add", up)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", up).Run() })
	ip("link", "add", "ua"+id, "type", "veth", "peer", "name", "ub"+id)
	ip("link", "set", "ua"+id, "netns", ns)
	ip("link", "set", "ub"+id, "netns", up)
	ip("-n", ns, "addr", "add", "192.0.2.1/24", "dev", "ua"+id)
	ip("-n", up, "addr", "add", "192.0.2.2/24", "dev", "ub"+id)
	ip("-n", ns, "link", "set", "ua"+id, "up")
	ip("-n", up, "link", "set", "ub"+id, "up")
	ip("-n", up, "link", "set", "lo", "up")
	return up
}

// TestMeteredFetchesFromTheLANOnly: on a LAN of network namespaces, a
// laptop whose NetworkManager (python-dbusmock) says the connection is
// metered has two peers: a LAN peer (a private address) holding v2, and
// an upstream on a public address (192.0.2.2, TEST-NET) holding v3. It
// fetches and applies v2 from the LAN peer, and the upstream gets no
// request; asked to poll again, it waits and says why, and peerup status
// shows it. When the connection is no longer metered it polls again,
// upstream included, and applies v3.
func TestMeteredFetchesFromTheLANOnly(t *testing.T) {
	if why := testlan.Available(); why != "" {
		t.Skip("testlan: " + why)
	}
	sys, api := privateBus(t), privateBus(t)
	testbus.Mock(t, sys, "networkmanager", nmName)
	conn, err := dbus.Connect(sys)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// The template has no Metered; NetworkManager 1.0 and later do.
	if err := conn.Object(nmName, nmPath).Call("org.freedesktop.DBus.Mock.AddProperty", 0, nmName, "Metered", dbus.MakeVariant(uint32(nmMeteredYes))).Err; err != nil {
		t.Fatal(err)
	}

	bin := buildBinary(t)
	lan := testlan.New(t, 2)
	upNS := beyondTheLAN(t, lan.Nodes[0].NS)
	f := newTestFleet(t)
	f.publish(t, 1)
	sysroot := f.sysrootAt(t, 1)
	f.publish(t, 2)
	// The LAN peer is a copy of the repo at v2; upstream goes on to v3.
	lanRepo := filepath.Join(t.TempDir(), "repo")
	if out, err := exec.Command("cp", "-a", f.repo.Dir(), lanRepo).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v\n%s", err, out)
	}
	f.publish(t, 3)
	lanURL := serveIn(t, lan.Nodes[1].NS, lan.Nodes[1].IP+":0", transfer.NewHandler(lanRepo, nil))
	upstream := &counting{h: transfer.NewHandler(f.repo.Dir(), nil)}
	upURL := serveIn(t, upNS, "192.0.2.2:0", upstream)

	log := &syncBuffer{}
	cmd := lan.Command(1, bin, "daemon", "--sysroot", sysroot, "--trust", f.pub, "--listen", "127.0.0.1:7380", "--bus", api, "--system-bus", sys,
		"--policy", "auto", "--no-mdns", "--no-multicast", "--peer", upURL, "--peer", lanURL, "-v")
	cmd.Stdout, cmd.Stderr = log, log
	lan.Serve(cmd, 7380, log)
	waitVersion(t, []string{sysroot}, 2, time.Minute, log)
	if n := upstream.n.Load(); n != 0 {
		t.Fatalf("metered: the upstream got %d requests, want none\n%s", n, log.String())
	}

	cl := dialT(t, api)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := cl.CallAndWait(ctx, MethodPoll, nil)
	if err != nil {
		t.Fatal(err)
	}
	if p.State != StateIdle || p.Waiting != "metered connection, no LAN peer offers an update" {
		t.Fatalf("a poll on the metered connection: state %s, waiting %q\n%s", p.State, p.Waiting, log.String())
	}
	out, err := exec.Command(bin, "status", "--bus", api).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "waiting:  metered connection, no LAN peer offers an update") {
		t.Errorf("peerup status: %v\n%s", err, out)
	}
	if n := upstream.n.Load(); n != 0 {
		t.Fatalf("metered: the upstream got %d requests, want none", n)
	}

	setProp(t, sys, nmName, nmPath, nmName, "Metered", uint32(2)) // NM_METERED_NO
	waitVersion(t, []string{sysroot}, 3, time.Minute, log)
	if upstream.n.Load() == 0 {
		t.Error("v3 applied, but the upstream got no request")
	}
}
