package daemon

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/peerup/peerup/apply"
	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/internal/hostile"
	"github.com/peerup/peerup/internal/testbus"
	"github.com/peerup/peerup/manifest"
	"github.com/peerup/peerup/transfer"
)

// privateBus starts a real dbus-daemon for the test and returns its address.
func privateBus(t *testing.T) string { return testbus.Private(t) }

type testFleet struct {
	dir, pub, url string
	repo          *blobstore.Repo
	signer        *manifest.Signer
	tree          string
}

func newTestFleet(t *testing.T) *testFleet {
	t.Helper()
	dir := t.TempDir()
	e, _ := manifest.GenerateKey("fleet")
	_, pub, err := manifest.WriteKeyPair(e, dir, "fleet")
	if err != nil {
		t.Fatal(err)
	}
	repo, err := blobstore.OpenRepo(dir + "/repo")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(transfer.NewHandler(repo.Dir(), nil))
	t.Cleanup(srv.Close)
	f := &testFleet{dir: dir, pub: pub, url: srv.URL + "/", repo: repo, signer: manifest.NewSigner(e), tree: dir + "/tree"}
	os.MkdirAll(f.tree+"/etc", 0o755)
	return f
}

func (f *testFleet) publish(t *testing.T, v uint64) {
	t.Helper()
	os.WriteFile(f.tree+"/etc/os-release", []byte(fmt.Sprintf("VERSION=%d\n", v)), 0o644)
	os.WriteFile(f.tree+fmt.Sprintf("/etc/file-%d", v), []byte(strings.Repeat("x", int(v)*1000)), 0o644)
	if _, err := f.repo.Publish(context.Background(), f.tree, blobstore.PublishOptions{Image: "school-laptop", Version: v, Signer: f.signer}); err != nil {
		t.Fatal(err)
	}
}

// sysrootAt makes a sysroot already running version v of the fleet's image.
func (f *testFleet) sysrootAt(t *testing.T, v uint64) string {
	t.Helper()
	dir := t.TempDir() + "/sysroot"
	s, err := apply.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	f.install(t, s, v)
	return dir
}

// install pulls version v into s from the fleet's server and switches to it.
func (f *testFleet) install(t *testing.T, s *apply.Sysroot, v uint64) {
	t.Helper()
	kr, _ := manifest.LoadKeyring(f.pub)
	cl, _ := transfer.NewClient(f.url, nil)
	if _, err := s.Pull(context.Background(), cl, apply.PullOptions{Version: v, Trust: kr}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Apply(v); err != nil {
		t.Fatal(err)
	}
}

// watcher collects the updater's signals from a second bus connection.
type watcher struct {
	ch chan *dbus.Signal
}

func watch(t *testing.T, addr string) *watcher {
	t.Helper()
	conn, err := dbus.Connect(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if err := conn.AddMatchSignal(dbus.WithMatchObjectPath(ObjectPath)); err != nil {
		t.Fatal(err)
	}
	w := &watcher{ch: make(chan *dbus.Signal, 1024)}
	conn.Signal(w.ch)
	return w
}

// until reads signals until want returns true, failing after a deadline.
func (w *watcher) until(t *testing.T, what string, want func(*dbus.Signal) bool) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case s := <-w.ch:
			if want(s) {
				return
			}
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func stateIs(state State) func(*dbus.Signal) bool {
	return func(s *dbus.Signal) bool {
		return s.Name == Interface+".StateChanged" && len(s.Body) == 1 && s.Body[0] == string(state)
	}
}

// daemonOnV1 starts a daemon with policy on a private bus, on a sysroot
// running v1 of a fleet that has published v2, with the fleet's server as
// its peer, and a watcher of its signals started before it.
func daemonOnV1(t *testing.T, policy string) (f *testFleet, sysroot, addr string, w *watcher) {
	t.Helper()
	addr = privateBus(t)
	f = newTestFleet(t)
	f.publish(t, 1)
	sysroot = f.sysrootAt(t, 1)
	f.publish(t, 2)
	w = watch(t, addr)
	ctx, cancel := context.WithCancel(context.Background())
	d, err := Start(ctx, Config{Sysroot: sysroot, Trust: []string{f.pub}, Listen: "127.0.0.1:0", Bus: addr, Policy: policy, Peers: []string{f.url}}, nil, nil)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); d.Wait(ctx) })
	return f, sysroot, addr, w
}

func TestDBusAPIDuringARealUpdate(t *testing.T) {
	f, sysroot, addr, w := daemonOnV1(t, "download")

	// The daemon polls its static peer on start, finds v2 and, by the
	// download policy, fetches and stages it.
	var sawProps, sawReady bool
	var states []string
	w.until(t, "UpdateReady(2)", func(s *dbus.Signal) bool {
		switch s.Name {
		case "org.freedesktop.DBus.Properties.PropertiesChanged":
			sawProps = true
		case Interface + ".StateChanged":
			states = append(states, s.Body[0].(string))
		case Interface + ".UpdateReady":
			sawReady = s.Body[0] == uint64(2)
		}
		return sawReady
	})
	if !sawProps {
		t.Error("no PropertiesChanged signal during the fetch")
	}
	if got := strings.Join(states, " "); !strings.Contains(got, "polling update-available fetching update-ready") {
		t.Errorf("states = %q", got)
	}

	cl := dialT(t, addr)
	p, err := cl.Props()
	if err != nil {
		t.Fatal(err)
	}
	// The offer's own properties come from its signed manifest.
	v2, err := os.ReadFile(filepath.Join(f.repo.Dir(), blobstore.Layout{}.Manifest("school-laptop", 2)))
	if err != nil {
		t.Fatal(err)
	}
	want := Props{State: StateUpdateReady, Image: "school-laptop", CurrentVersion: 1, AvailableVersion: 2, PeerCount: 1,
		DownloadSize: p.DownloadSize, DownloadedBytes: p.DownloadSize,
		UpdateID: fmt.Sprintf("%x", sha256.Sum256(v2)), Version: "2",
		UnpackedSize: p.UnpackedSize, FullDownloadSize: p.FullDownloadSize, FullUnpackedSize: p.FullUnpackedSize,
		RolloutPercent: 100}
	if p != want || p.DownloadSize == 0 || p.UnpackedSize == 0 || p.FullUnpackedSize < p.UnpackedSize || p.FullDownloadSize < p.DownloadSize {
		t.Errorf("properties = %+v\nwant %+v", p, want)
	}

	// A method in the wrong state fails with the named error.
	for _, m := range []Method{MethodFetch, MethodCancel} {
		err := cl.obj.Call(Interface+"."+string(m), 0).Err
		var de dbus.Error
		if !errors.As(err, &de) || de.Name != ErrorWrongState {
			t.Errorf("%s in update-ready: err = %v, want %s", m, err, ErrorWrongState)
		}
	}

	if err := cl.Call(MethodApply); err != nil {
		t.Fatal(err)
	}
	w.until(t, "update-applied", stateIs(StateUpdateApplied))
	if p, _ := cl.Props(); p.CurrentVersion != 2 || p.PreviousVersion != 1 {
		t.Errorf("after Apply: %+v", p)
	}
	if target, _ := os.Readlink(sysroot + "/current"); target != "trees/2" {
		t.Errorf("current -> %s", target)
	}

	if err := cl.Call(MethodRollback); err != nil {
		t.Fatal(err)
	}
	if p, _ := cl.Props(); p.CurrentVersion != 1 || p.PreviousVersion != 2 || p.State != StateIdle || p.HeldVersion != 2 {
		t.Errorf("after Rollback: %+v", p)
	}

	// The version rolled back from is held: a poll offers nothing, until
	// a newer version is published.
	if err := cl.Call(MethodPoll); err != nil {
		t.Fatal(err)
	}
	w.until(t, "the poll", stateIs(StatePolling))
	w.until(t, "idle after a Poll that finds only the held version", stateIs(StateIdle))
	// Back to idle, nothing is left of the last offer and its fetch.
	if p, _ := cl.Props(); p.AvailableVersion != 0 || p.DownloadSize != 0 || p.DownloadedBytes != 0 {
		t.Errorf("idle after a Poll still shows an offer or a fetch: %+v", p)
	}
	f.publish(t, 3)
	if err := cl.Call(MethodPoll); err != nil {
		t.Fatal(err)
	}
	w.until(t, "update-available after Poll", stateIs(StateUpdateAvailable))
	// What the download will cost is known before it is asked for.
	if p, _ := cl.Props(); p.AvailableVersion != 3 || p.Version != "3" || len(p.UpdateID) != 64 || p.DownloadSize == 0 || p.DownloadedBytes > p.DownloadSize || p.UnpackedSize == 0 {
		t.Errorf("after v3 was published: %+v", p)
	}
}

// TestRollbackSticksUnderTheAutoPolicy: a daemon that installs updates by
// itself applies v2; a rollback over D-Bus brings back v1, and the daemon
// keeps it, on disk and over D-Bus, however often it polls, until v3 is
// published, which it then installs.
func TestRollbackSticksUnderTheAutoPolicy(t *testing.T) {
	f, sysroot, addr, w := daemonOnV1(t, "auto")
	w.until(t, "v2 applied by the auto policy", stateIs(StateUpdateApplied))
	cl := dialT(t, addr)
	if err := cl.Call(MethodRollback); err != nil {
		t.Fatal(err)
	}
	current := func() string { target, _ := os.Readlink(sysroot + "/current"); return target }
	for i := range 3 {
		if err := cl.Call(MethodPoll); err != nil {
			t.Fatal(err)
		}
		w.until(t, "the poll", stateIs(StatePolling))
		w.until(t, "idle after the poll", stateIs(StateIdle))
		p, _ := cl.Props()
		if p.CurrentVersion != 1 || p.HeldVersion != 2 || current() != "trees/1" {
			t.Fatalf("poll %d after the rollback: %+v, current -> %s; want v1 kept, v2 held", i+1, p, current())
		}
	}
	f.publish(t, 3)
	if err := cl.Call(MethodPoll); err != nil {
		t.Fatal(err)
	}
	w.until(t, "v3 applied", stateIs(StateUpdateApplied))
	if p, _ := cl.Props(); p.CurrentVersion != 3 || current() != "trees/3" {
		t.Errorf("after v3 was published: %+v, current -> %s", p, current())
	}
}

func TestIntrospection(t *testing.T) {
	addr := privateBus(t)
	busctl, err := exec.LookPath("busctl")
	if err != nil {
		t.Skip("busctl not installed (apt-get install systemd); skipping introspection")
	}
	f := newTestFleet(t)
	f.publish(t, 1)
	ctx, cancel := context.WithCancel(context.Background())
	d, err := Start(ctx, Config{Sysroot: t.TempDir(), Trust: []string{f.pub}, Listen: "127.0.0.1:0", Bus: addr}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); d.Wait(ctx) }()
	out, err := exec.Command(busctl, "--address="+addr, "introspect", BusName, string(ObjectPath)).CombinedOutput()
	if err != nil {
		t.Fatalf("busctl introspect: %v\n%s", err, out)
	}
	for _, want := range []string{".Poll", ".Fetch", ".Apply", ".Rollback", ".Cancel", ".MarkGood", ".Hold", ".Unhold", ".UnmarkBad", ".HeldVersion", ".State", ".AvailableVersion", ".DownloadedBytes", ".PeerCount", ".StateChanged", ".UpdateReady",
		// eos-updater's properties of an offer
		".UpdateID", ".UpdateLabel", ".UpdateMessage", ".Version", ".DownloadSize", ".UnpackedSize", ".FullDownloadSize", ".FullUnpackedSize"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("introspection lacks %s:\n%s", want, out)
		}
	}
}

func TestSecondDaemonOnSameSysrootFailsAtOnce(t *testing.T) {
	f := newTestFleet(t)
	f.publish(t, 1)
	sysroot := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	d, err := Start(ctx, Config{Sysroot: sysroot, Trust: []string{f.pub}, Listen: "127.0.0.1:0", Bus: "none"}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); d.Wait(ctx) }()
	_, err = Start(ctx, Config{Sysroot: sysroot, Trust: []string{f.pub}, Listen: "127.0.0.1:0", Bus: "none"}, nil, nil)
	if !errors.Is(err, ErrRunning) {
		t.Fatalf("second daemon: err = %v, want ErrRunning", err)
	}
	if !strings.Contains(err.Error(), "another peerup daemon is running") {
		t.Errorf("message not clear: %v", err)
	}
}

func TestStateTable(t *testing.T) {
	tests := []struct {
		m     Method
		s     State
		allow bool
	}{
		{MethodPoll, StateIdle, true},
		{MethodPoll, StateFetching, false},
		{MethodFetch, StateUpdateAvailable, true},
		{MethodFetch, StateIdle, false},
		{MethodApply, StateUpdateReady, true},
		{MethodApply, StateUpdateAvailable, false},
		{MethodCancel, StateFetching, true},
		{MethodCancel, StateApplying, false},
		{MethodRollback, StateApplying, false},
		{MethodRollback, StateUpdateApplied, true},
	}
	for _, tc := range tests {
		err := check(tc.m, tc.s)
		if (err == nil) != tc.allow {
			t.Errorf("%s in %s: err = %v, want allowed=%v", tc.m, tc.s, err, tc.allow)
		}
	}
}

// TestCLIReachesTheDaemon: peerup status, check, apply and rollback without
// --sysroot go through D-Bus to a running daemon.
func TestCLIReachesTheDaemon(t *testing.T) {
	addr := privateBus(t)
	bin := buildBinary(t)
	f := newTestFleet(t)
	f.publish(t, 1)
	sysroot := f.sysrootAt(t, 1)
	f.publish(t, 2)
	ctx, cancel := context.WithCancel(context.Background())
	d, err := Start(ctx, Config{Sysroot: sysroot, Trust: []string{f.pub}, Listen: "127.0.0.1:0", Bus: addr, Policy: "notify", Peers: []string{f.url}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); d.Wait(ctx) }()
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(bin, append(args, "--bus", addr)...).CombinedOutput()
		if err != nil {
			t.Fatalf("peerup %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	if out := run("check"); !strings.Contains(out, "state:    update-available") || !strings.Contains(out, "available: 2") {
		t.Fatalf("check:\n%s", out)
	}
	if out := run("fetch"); !strings.Contains(out, "update-ready") {
		t.Fatalf("fetch:\n%s", out)
	}
	if out := run("apply"); !strings.Contains(out, "update-applied") || !strings.Contains(out, "current:  2") {
		t.Fatalf("apply:\n%s", out)
	}
	if out := run("status", "--json"); !strings.Contains(out, `"current": 2`) || !strings.Contains(out, `"state": "update-applied"`) {
		t.Fatalf("status --json:\n%s", out)
	}
	if out := run("rollback"); !strings.Contains(out, "current:  1") {
		t.Fatalf("rollback:\n%s", out)
	}
}

// TestDBusHoldsAndMarks: the boot-state edits an admin's CLI has are on
// D-Bus too, for the desktop: a hold takes the version it covers off offer
// at once, and the rest leave the state as it was.
func TestDBusHoldsAndMarks(t *testing.T) {
	_, _, addr, w := daemonOnV1(t, "notify")
	w.until(t, "update-available", stateIs(StateUpdateAvailable))
	cl := dialT(t, addr)
	steps := []struct {
		call      func() error
		wantErr   string // the D-Bus error name, "" for none
		wantState State
		held      uint64
		available uint64
	}{
		{func() error { return cl.obj.Call(Interface+".Hold", 0, uint64(2)).Err }, "", StateIdle, 2, 0},
		{func() error { return cl.obj.Call(Interface+".Unhold", 0).Err }, "", StateIdle, 0, 0},
		{func() error { return cl.obj.Call(Interface+".UnmarkBad", 0, uint64(7)).Err }, ErrorPrefix + "Failed", StateIdle, 0, 0},
		{func() error { return cl.obj.Call(Interface+".MarkGood", 0).Err }, "", StateIdle, 0, 0},
	}
	for i, s := range steps {
		err := s.call()
		var de dbus.Error
		switch {
		case s.wantErr == "" && err != nil:
			t.Fatalf("step %d: %v", i, err)
		case s.wantErr != "" && (!errors.As(err, &de) || de.Name != s.wantErr):
			t.Fatalf("step %d: err = %v, want %s", i, err, s.wantErr)
		}
		p, err := cl.Props()
		if err != nil {
			t.Fatal(err)
		}
		if p.State != s.wantState || p.HeldVersion != s.held || p.AvailableVersion != s.available {
			t.Errorf("step %d: state %s, held %d, available %d; want %s, %d, %d", i, p.State, p.HeldVersion, p.AvailableVersion, s.wantState, s.held, s.available)
		}
	}
}

// dialT is Dial for a test, closed when it ends.
func dialT(t *testing.T, addr string) *Client {
	t.Helper()
	cl, err := Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

// TestCancelDuringAFetch: a fetch stuck on a peer that sends nothing is
// cancelled over D-Bus and ends, as eos-updater's does, in error with the
// Cancelled error name; a Poll then starts again.
func TestCancelDuringAFetch(t *testing.T) {
	addr := privateBus(t)
	f := newTestFleet(t)
	f.publish(t, 1)
	sysroot := f.sysrootAt(t, 1)
	f.publish(t, 2)
	stuck := hostile.New(t, transfer.NewHandler(f.repo.Dir(), nil))
	stuck.On("/objects/", "", hostile.Silent())
	w := watch(t, addr)
	ctx, cancel := context.WithCancel(context.Background())
	d, err := Start(ctx, Config{Sysroot: sysroot, Trust: []string{f.pub}, Listen: "127.0.0.1:0", Bus: addr, Policy: "download", Peers: []string{stuck.URL()}}, nil, nil)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); d.Wait(ctx) })
	w.until(t, "fetching", stateIs(StateFetching))
	cl := dialT(t, addr)
	if err := cl.Call(MethodCancel); err != nil {
		t.Fatal(err)
	}
	w.until(t, "error after Cancel", stateIs(StateError))
	p, err := cl.Props()
	if err != nil {
		t.Fatal(err)
	}
	if p.ErrorName != ErrorCancelled || p.CurrentVersion != 1 {
		t.Errorf("after Cancel: %+v, want ErrorName %s on version 1", p, ErrorCancelled)
	}
	if err := cl.Call(MethodPoll); err != nil {
		t.Errorf("Poll after a cancelled fetch: %v", err)
	}
}

// TestDownloadedBytesRiseDuringALargeObject: a desktop's progress bar
// moves while one large object arrives, not only between objects, and no
// faster than ProgressInterval.
func TestDownloadedBytesRiseDuringALargeObject(t *testing.T) {
	addr := privateBus(t)
	f := newTestFleet(t)
	f.publish(t, 1)
	sysroot := f.sysrootAt(t, 1)
	// 3 MiB that compress to nothing less: fetched whole, as one object.
	big := make([]byte, 3<<20)
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < len(big); i += 8 {
		binary.LittleEndian.PutUint64(big[i:], r.Uint64())
	}
	if err := os.WriteFile(f.tree+"/etc/big.bin", big, 0o644); err != nil {
		t.Fatal(err)
	}
	f.publish(t, 2)
	w := watch(t, addr)
	ctx, cancel := context.WithCancel(context.Background())
	// At 1 MiB/s the object takes about 3 s.
	d, err := Start(ctx, Config{Sysroot: sysroot, Trust: []string{f.pub}, Listen: "127.0.0.1:0", Bus: addr, Policy: "download", Peers: []string{f.url}, MaxDownloadRate: 1 << 20}, nil, nil)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); d.Wait(ctx) })

	var seen []uint64
	var fetching bool
	w.until(t, "UpdateReady(2)", func(s *dbus.Signal) bool {
		switch s.Name {
		case Interface + ".StateChanged":
			fetching = s.Body[0] == string(StateFetching)
		case "org.freedesktop.DBus.Properties.PropertiesChanged":
			changed, _ := s.Body[1].(map[string]dbus.Variant)
			if v, ok := changed["DownloadedBytes"]; ok && fetching {
				if n, _ := v.Value().(uint64); n > 0 && (len(seen) == 0 || n > seen[len(seen)-1]) {
					seen = append(seen, n)
				}
			}
		case Interface + ".UpdateReady":
			return true
		}
		return false
	})
	// Steps within the big object alone: those below its size.
	var within int
	for _, n := range seen {
		if n < uint64(len(big)) {
			within++
		}
	}
	t.Logf("DownloadedBytes took %d rising values while fetching, %d of them within the 3 MiB object: %v", len(seen), within, seen)
	if within < 5 {
		t.Errorf("DownloadedBytes rose %d times during the 3 MiB object's fetch, want at least 5", within)
	}
}

// TestDaemonPassesOverAWithdrawnVersion: the fleet publishes v3 and then
// withdraws it; a daemon at v1 offers v2, over D-Bus.
func TestDaemonPassesOverAWithdrawnVersion(t *testing.T) {
	addr := privateBus(t)
	f := newTestFleet(t)
	f.publish(t, 1)
	sysroot := f.sysrootAt(t, 1)
	f.publish(t, 2)
	f.publish(t, 3)
	if _, err := f.repo.Withdraw("school-laptop", 3, f.signer); err != nil {
		t.Fatal(err)
	}
	w := watch(t, addr)
	ctx, cancel := context.WithCancel(context.Background())
	d, err := Start(ctx, Config{Sysroot: sysroot, Trust: []string{f.pub}, Listen: "127.0.0.1:0", Bus: addr, Policy: "notify", Peers: []string{f.url}}, nil, nil)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); d.Wait(ctx) })
	w.until(t, "update-available", func(s *dbus.Signal) bool {
		if s.Name == Interface+".StateChanged" {
			if s.Body[0] == string(StateError) {
				p, _ := dialT(t, addr).Props()
				t.Fatalf("error: %+v", p)
			}
		}
		return stateIs(StateUpdateAvailable)(s)
	})
	if p, _ := dialT(t, addr).Props(); p.AvailableVersion != 2 || p.Version != "2" {
		t.Errorf("with v3 withdrawn, the offer is %+v, want v2", p)
	}
}

// TestStoppedDaemonLeavesNoPreviewBehind: a daemon that previewed an offer
// keeps its manifest and delta index in staging for the fetch; stopped
// before the fetch, it removes them, so that restarts do not pile them up.
func TestStoppedDaemonLeavesNoPreviewBehind(t *testing.T) {
	addr := privateBus(t)
	f := newTestFleet(t)
	f.publish(t, 1)
	sysroot := f.sysrootAt(t, 1)
	f.publish(t, 2)
	w := watch(t, addr)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d, err := Start(ctx, Config{Sysroot: sysroot, Trust: []string{f.pub}, Listen: "127.0.0.1:0", Bus: addr, Policy: "notify", Peers: []string{f.url}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	w.until(t, "update-available", stateIs(StateUpdateAvailable))
	staging := d.Sysroot.Repo().Layout().Staging()
	held := func() []string {
		ents, _ := os.ReadDir(staging)
		var names []string
		for _, e := range ents {
			if !e.IsDir() {
				names = append(names, e.Name())
			}
		}
		return names
	}
	if len(held()) == 0 {
		t.Fatal("the preview kept nothing in staging for the fetch")
	}
	cancel()
	d.Wait(ctx)
	if left := held(); len(left) != 0 {
		t.Errorf("the stopped daemon left %v in staging", left)
	}
}
