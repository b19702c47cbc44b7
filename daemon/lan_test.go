package daemon

import (
	"bufio"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"github.com/godbus/dbus/v5"

	"github.com/peerup/peerup/internal/testlan"
)

// startIn runs the peerup binary inside a LAN node and stops it with the
// test.
func startIn(t *testing.T, lan *testlan.LAN, node int, bin string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := lan.Command(node, bin, args...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() })
	return cmd
}

// ownerWatch reports when a bus name gets an owner.
func ownerWatch(t *testing.T, addr string) chan *dbus.Signal {
	t.Helper()
	conn, err := dbus.Connect(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.AddMatchSignal(dbus.WithMatchInterface("org.freedesktop.DBus"), dbus.WithMatchMember("NameOwnerChanged"), dbus.WithMatchArg(0, BusName))
	ch := make(chan *dbus.Signal, 16)
	conn.Signal(ch)
	return ch
}

// TestTwoNodesOnALAN: a school server and a laptop, each running the
// daemon in its own network namespace on a bridge. The server gets v2; the
// laptop finds it (by mDNS and multicast together, and by each alone),
// fetches it from the server and applies it by policy.
func TestTwoNodesOnALAN(t *testing.T) {
	tests := []struct {
		name  string
		flags []string
	}{
		{"mdns and multicast", nil},
		{"mdns alone", []string{"--no-multicast"}},
		{"multicast alone", []string{"--no-mdns"}},
	}
	if why := testlan.Available(); why != "" {
		t.Skip("testlan: " + why)
	}
	bin := buildBinary(t)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			lan := testlan.New(t, 2)
			f := newTestFleet(t)
			f.publish(t, 1)
			server, laptop := f.sysrootAt(t, 1), f.sysrootAt(t, 1)
			bus1, bus2 := privateBus(t), privateBus(t)

			// The school server's repo, served inside the server's node.
			serve := lan.Command(1, bin, "serve", "--repo", f.repo.Dir(), "--listen", "127.0.0.1:7390")
			out, _ := serve.StdoutPipe()
			if err := serve.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { serve.Process.Signal(syscall.SIGTERM); serve.Wait() })
			if _, err := bufio.NewReader(out).ReadString('\n'); err != nil {
				t.Fatalf("peerup serve did not start: %v", err)
			}

			common := append([]string{"--trust", f.pub, "--policy", "auto"}, tc.flags...)
			up1, up2 := ownerWatch(t, bus1), ownerWatch(t, bus2)
			w1, w2 := watch(t, bus1), watch(t, bus2)
			startIn(t, lan, 1, bin, append([]string{"daemon", "--sysroot", server, "--bus", bus1, "--iface", "e1", "--peer", "http://127.0.0.1:7390/"}, common...)...)
			startIn(t, lan, 2, bin, append([]string{"daemon", "--sysroot", laptop, "--bus", bus2, "--iface", "e2"}, common...)...)
			for _, up := range []chan *dbus.Signal{up1, up2} {
				w := &watcher{ch: up}
				w.until(t, "a daemon on its bus", func(*dbus.Signal) bool { return true })
			}
			// The server's first poll of its repo finds nothing new.
			w1.until(t, "the server's first poll", stateIs(StateIdle))

			f.publish(t, 2)
			c, err := Dial(bus1)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if err := c.Call(MethodPoll); err != nil {
				t.Fatal(err)
			}
			w1.until(t, "the server applying v2", stateIs(StateUpdateApplied))
			w2.until(t, "the laptop applying v2", stateIs(StateUpdateApplied))
			if target, _ := os.Readlink(laptop + "/current"); target != "trees/2" {
				t.Fatalf("laptop current -> %s", target)
			}
			got, _ := os.ReadFile(laptop + "/current/etc/os-release")
			if string(got) != "VERSION=2\n" {
				t.Fatalf("laptop os-release = %q", got)
			}
			if tc.name == "multicast alone" {
				return
			}
			// The laptop now advertises v2: browse from the server's node.
			d := lan.Command(1, bin, "discover", "--iface", "e1", "--image", "school-laptop", "--count", "2", "--timeout", "30s")
			var stderr strings.Builder
			d.Stderr = &stderr
			list, err := d.Output()
			if err != nil {
				t.Fatalf("discover: %v\n%s%s", err, list, stderr.String())
			}
			want := "http://" + lan.Nodes[1].IP + ":7380/ school-laptop 2"
			if !strings.Contains(string(list), want) {
				t.Fatalf("the laptop's advert: want %q in\n%s", want, list)
			}
		})
	}
}

// TestSeedAnnouncesPublishedVersion: a school server seeds its repo; a
// version published into it reaches a laptop on the LAN without anyone
// polling: the seed sees the new index and announces it.
func TestSeedAnnouncesPublishedVersion(t *testing.T) {
	if why := testlan.Available(); why != "" {
		t.Skip("testlan: " + why)
	}
	bin := buildBinary(t)
	lan := testlan.New(t, 2)
	f := newTestFleet(t)
	f.publish(t, 1)
	laptop := f.sysrootAt(t, 1)
	bus := privateBus(t)

	seed := lan.Command(1, bin, "-v", "daemon", "--repo", f.repo.Dir(), "--trust", f.pub, "--iface", "e1")
	logs, _ := seed.StderrPipe()
	if err := seed.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { seed.Process.Signal(syscall.SIGTERM); seed.Wait() })
	sc := bufio.NewScanner(logs)
	for sc.Scan() && !strings.Contains(sc.Text(), "seeding") {
	}
	go func() {
		for sc.Scan() {
		}
	}()

	up := ownerWatch(t, bus)
	w := watch(t, bus)
	startIn(t, lan, 2, bin, "daemon", "--sysroot", laptop, "--trust", f.pub, "--bus", bus, "--iface", "e2", "--policy", "auto")
	(&watcher{ch: up}).until(t, "the laptop's daemon", func(*dbus.Signal) bool { return true })

	f.publish(t, 2) // as `peerup publish` on the school server would
	w.until(t, "the laptop applying v2", stateIs(StateUpdateApplied))
	got, _ := os.ReadFile(laptop + "/current/etc/os-release")
	if string(got) != "VERSION=2\n" {
		t.Fatalf("laptop os-release = %q", got)
	}
}
