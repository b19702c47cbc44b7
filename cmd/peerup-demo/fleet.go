package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/peerup/peerup/daemon"
	"github.com/peerup/peerup/internal/testlan"
)

// laptops is the size of the demo's class.
const laptops = 5

// node is one daemon of the demo fleet.
type node struct {
	name    string
	url     string
	sysroot string // "" for the school server
	cmd     *exec.Cmd
}

// event is one line of a daemon's JSON log.
type event struct {
	node  *node
	msg   string
	attrs map[string]any
}

// fleet is the running demo fleet: a school server and the laptops, on a
// LAN of network namespaces (as root) or on loopback ports.
type fleet struct {
	d      *demo
	nodes  []*node // [0] is the school server
	names  map[string]string
	events chan event
	start  time.Time
}

// startFleet starts the school server seeding repo and a daemon on each
// laptop sysroot. lan is nil for loopback mode.
func (d *demo) startFleet(ctx context.Context, lan *testlan.LAN, repo, pub string, sysroots []string) (*fleet, error) {
	f := &fleet{d: d, names: map[string]string{}, events: make(chan event, 256)}
	ports := make([]int, len(sysroots)+1)
	for i := range ports {
		if lan != nil {
			ports[i] = 7380
			continue
		}
		p, err := freePort()
		if err != nil {
			return nil, err
		}
		ports[i] = p
	}
	for i := range ports {
		n := &node{name: "school-server"}
		if i > 0 {
			n.name, n.sysroot = fmt.Sprintf("laptop-%d", i), sysroots[i-1]
		}
		host := "127.0.0.1"
		if lan != nil {
			host = lan.Nodes[i].IP
		}
		n.url = fmt.Sprintf("http://%s:%d/", host, ports[i])
		f.names[strings.TrimSuffix(n.url, "/")] = n.name
		f.nodes = append(f.nodes, n)
	}
	for i, n := range f.nodes {
		args := []string{"daemon", "--log-json", "-v", "--trust", pub}
		if n.sysroot == "" {
			args = append(args, "--repo", repo)
		} else {
			args = append(args, "--sysroot", n.sysroot, "--bus", "none", "--policy", "auto")
		}
		if lan != nil {
			// A real LAN: the laptops find the server and each other by
			// mDNS and multicast announcements alone. The server is
			// named only so that they report to it, for its fleet page.
			args = append(args, "--iface", lan.Nodes[i].Iface)
			if n.sysroot != "" {
				args = append(args, "--peer", f.nodes[0].url)
			}
		} else {
			// Loopback: no multicast, so every laptop is told the others'
			// addresses and asks them every second.
			// All of them come from 127.0.0.1, so the per-address
			// connection cap is raised to fit the class.
			args = append(args, "--listen", fmt.Sprintf("127.0.0.1:%d", ports[i]), "--no-mdns", "--no-multicast",
				"--max-conns-per-peer", "256")
			if n.sysroot != "" {
				args = append(args, "--poll-interval", "1s")
				for _, o := range f.nodes {
					if o != n {
						args = append(args, "--peer", o.url)
					}
				}
			}
		}
		if lan != nil {
			n.cmd = lan.Command(i+1, d.bin, args...)
		} else {
			n.cmd = exec.Command(d.bin, args...)
		}
		logs, err := n.cmd.StderrPipe()
		if err != nil {
			return nil, err
		}
		if err := n.cmd.Start(); err != nil {
			f.stop()
			return nil, fmt.Errorf("start %s: %w", n.name, err)
		}
		go f.read(n, logs)
	}
	for i, n := range f.nodes {
		if err := testlan.WaitListening(ctx, n.cmd.Process.Pid, ports[i]); err != nil {
			f.stop()
			return nil, fmt.Errorf("%s: %w", n.name, err)
		}
	}
	return f, nil
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// read turns a daemon's JSON log into events.
func (f *fleet) read(n *node, r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var attrs map[string]any
		if json.Unmarshal(sc.Bytes(), &attrs) != nil {
			continue
		}
		msg, _ := attrs["msg"].(string)
		f.events <- event{node: n, msg: msg, attrs: attrs}
	}
}

// stop ends every daemon and waits for it.
func (f *fleet) stop() {
	for _, n := range f.nodes {
		if n.cmd != nil && n.cmd.Process != nil {
			n.cmd.Process.Signal(syscall.SIGTERM)
			n.cmd.Wait()
		}
	}
}

// follow prints what the fleet does until every laptop runs version v, an
// image of imageBytes, and returns the most one laptop received.
func (f *fleet) follow(ctx context.Context, v, imageBytes int) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	shown := map[string]int{} // progress quarter shown, per laptop
	done := map[string]bool{}
	var fromServer, fetched int
	var each []int // what each laptop received, metadata included
	for len(done) < laptops {
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("only %d of %d laptops reached version %d", len(done), laptops, v)
		case e := <-f.events:
			if f.at(e) < 0 {
				continue // from before this version was published
			}
			if e.attrs["level"] == "WARN" || e.attrs["level"] == "ERROR" {
				f.say(e, "%s: %s %v", strings.ToLower(e.attrs["level"].(string)), e.msg, e.attrs["err"])
				continue
			}
			switch e.msg {
			case "advertising newly published version":
				f.say(e, "has v%d and announces it on the LAN", num(e.attrs["version"]))
			case "update available":
				f.say(e, "heard of v%d, offered by %d peer(s)", num(e.attrs["version"]), num(e.attrs["peers"]))
			case "fetch progress":
				total := num(e.attrs["total"])
				if total == 0 {
					continue
				}
				q := num(e.attrs["done"]) * 4 / total
				if q > 0 && q < 4 && q > shown[e.node.name] {
					shown[e.node.name] = q
					f.say(e, "fetching v%d: %d%% of %s", num(e.attrs["version"]), q*25, size(total))
				}
			case "update staged":
				fetched += num(e.attrs["fetched"])
				each = append(each, num(e.attrs["fetched"]))
				if m, ok := e.attrs["sources"].(map[string]any); ok {
					for u, b := range m {
						if f.names[strings.TrimSuffix(u, "/")] == "school-server" {
							fromServer += num(b)
						}
					}
				}
				f.say(e, "fetched %s: %s", size(num(e.attrs["fetched"])), f.sources(e.attrs["sources"]))
			case "update applied":
				f.say(e, "switched to v%d (v%d kept for rollback)", num(e.attrs["to"]), num(e.attrs["from"]))
				if num(e.attrs["to"]) == v {
					done[e.node.name] = true
				}
			}
		}
	}
	if len(each) == 0 {
		return 0, fmt.Errorf("no laptop said what it fetched for version %d", v)
	}
	slices.Sort(each)
	lo, most := size(each[0]), each[len(each)-1]
	got := lo
	if hi := size(most); hi != lo {
		got += " to " + hi
	}
	fmt.Printf("   The image is %s. Each laptop received %s of it, signed metadata included\n", size(imageBytes), got)
	fmt.Printf("   (%.2f%% of the image at most); %s in all, %s of it from the school server, the rest from laptops.\n",
		100*float64(most)/float64(imageBytes), size(fetched), size(fromServer))
	return most, nil
}

// fleetPage reads the school server's fleet table as `peerup fleet` does
// from a laptop (in a LAN, from laptop-1's namespace: the server answers
// the LAN only), until it lists every laptop at version v, and returns it
// and the page's address.
func (f *fleet) fleetPage(ctx context.Context, lan *testlan.LAN, v int) (string, daemon.FleetView, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	seed := f.nodes[0].url
	var view daemon.FleetView
	for {
		args := []string{"fleet", "--from", seed, "--json"}
		cmd := exec.CommandContext(ctx, f.d.bin, args...)
		if lan != nil {
			cmd = lan.Command(2, f.d.bin, args...)
		}
		out, err := cmd.Output()
		if err == nil && json.Unmarshal(out, &view) == nil {
			at := 0
			for _, m := range view.Machines {
				if m.Current == uint64(v) {
					at++
				}
			}
			if at >= laptops {
				return seed + "fleet", view, nil
			}
		}
		select {
		case <-ctx.Done():
			return "", view, fmt.Errorf("the fleet page at %sfleet does not list the %d laptops at v%d: %v (%d listed)", seed, laptops, v, err, len(view.Machines))
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// mark starts the clock the events are timed by.
func (f *fleet) mark() { f.start = time.Now() }

// at is when e happened, from the mark.
func (f *fleet) at(e event) time.Duration {
	if s, ok := e.attrs["time"].(string); ok {
		if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
			return t.Sub(f.start)
		}
	}
	return time.Since(f.start)
}

func (f *fleet) say(e event, format string, args ...any) {
	fmt.Printf("   %5.1fs  %-13s  %s\n", f.at(e).Seconds(), e.node.name, fmt.Sprintf(format, args...))
}

// sources spells who sent a laptop what: the server first, then the
// neighbours, by name.
func (f *fleet) sources(v any) string {
	m, _ := v.(map[string]any)
	type from struct {
		name  string
		bytes int
	}
	var all []from
	for u, b := range m {
		name := f.names[strings.TrimSuffix(u, "/")]
		if name == "" {
			name = u
		}
		all = append(all, from{name, num(b)})
	}
	sort.Slice(all, func(i, j int) bool {
		if (all[i].name == "school-server") != (all[j].name == "school-server") {
			return all[i].name == "school-server"
		}
		return all[i].name < all[j].name
	})
	var parts []string
	for _, s := range all {
		parts = append(parts, fmt.Sprintf("%s from %s", size(s.bytes), s.name))
	}
	if len(parts) == 0 {
		return "nothing new (all reused)"
	}
	return strings.Join(parts, ", ")
}

func num(v any) int {
	switch x := v.(type) {
	case float64:
		return int(x)
	case string:
		n, _ := strconv.Atoi(x)
		return n
	}
	return 0
}

// size spells a byte count in one family of units throughout the demo.
func size(n int) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// schoolFiles writes the course material: v3, a new term, replaces a
// third of it, so that there is something large to share.
func schoolFiles(root string, v int) error {
	dir := filepath.Join(root, "usr/share/school")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for i := range 24 {
		gen := 1
		if v >= 3 && i%3 == 0 {
			gen = 3
		}
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("lesson-%02d.bin", i)), noise(i, gen, 128<<10), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// noise is incompressible bytes, the same for the same file and version.
func noise(file, version, n int) []byte {
	b := make([]byte, n)
	x := uint64(file)*1_000_003 + uint64(version)*7_919 + 1
	for i := range b {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		b[i] = byte(x)
	}
	return b
}
