package daemon

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/peerup/peerup/apply"
	"github.com/peerup/peerup/internal/testlan"
)

// startSeed runs `peerup daemon --repo` in node 1 of lan and waits until it
// serves; it returns the process (to read its memory) and its log.
func startSeed(t *testing.T, lan *testlan.LAN, bin string, f *testFleet) (*os.Process, *syncBuffer) {
	t.Helper()
	cmd := lan.Command(1, bin, "daemon", "--repo", f.repo.Dir(), "--trust", f.pub, "--iface", lan.Nodes[0].Iface)
	log := lanServe(t, lan, 1, cmd)
	return cmd.Process, log
}

// fleetJSON reads the seed's table with `peerup fleet --json`, from node i.
func fleetJSON(t *testing.T, lan *testlan.LAN, i int, bin, seed string) FleetView {
	t.Helper()
	out, err := lan.Command(i, bin, "fleet", "--from", seed, "--json").Output()
	if err != nil {
		t.Fatalf("peerup fleet --json: %v\n%s", err, out)
	}
	var v FleetView
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatalf("peerup fleet --json: %v\n%s", err, out)
	}
	return v
}

// waitFleet polls the seed's table until ok says so.
func waitFleet(t *testing.T, lan *testlan.LAN, i int, bin, seed, what string, within time.Duration, ok func(FleetView) bool) FleetView {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		v := fleetJSON(t, lan, i, bin, seed)
		if ok(v) {
			return v
		}
		if time.Now().After(deadline) {
			b, _ := json.MarshalIndent(v, "", "  ")
			t.Fatalf("the fleet table never showed %s:\n%s", what, b)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

func byName(v FleetView) map[string]FleetMachine {
	m := map[string]FleetMachine{}
	for _, x := range v.Machines {
		m[x.Name] = x
	}
	return m
}

// fellBackSysroot makes a sysroot that ran v1 well, applied v2, and fell
// back to v1 after v2 failed its boot tries, as the initramfs step does.
func (f *testFleet) fellBackSysroot(t *testing.T) string {
	t.Helper()
	dir := f.sysrootAt(t, 1)
	s, err := apply.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.MarkGood(0); err != nil {
		t.Fatal(err)
	}
	f.install(t, s, 2)
	for range apply.DefaultBootTries + 1 {
		if _, err := s.Boot("quiet"); err != nil {
			t.Fatal(err)
		}
	}
	if st, _ := s.Status(); st.Current != 1 || !s.IsBad(2) {
		t.Fatalf("no fallback: %+v", st)
	}
	return dir
}

// chromium runs headless Chromium in node i of lan on url with args
// (--dump-dom, --screenshot=FILE) and returns its output.
func chromium(t *testing.T, lan *testlan.LAN, i int, url string, args ...string) string {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", lan.Nodes[i-1].NS, "chromium", "--headless", "--no-sandbox",
		"--disable-gpu", "--user-data-dir=" + dir, "--window-size=1200,860", "--hide-scrollbars"}, append(args, url)...)...)
	cmd.Env = append(os.Environ(), "HOME="+dir)
	var errb bytes.Buffer
	cmd.Stderr = &errb
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium %v: %v\n%s", args, err, errb.String())
	}
	return string(out)
}

var (
	pageVersions = regexp.MustCompile(`id="versions">([^<]*)<`)
	pageRow      = regexp.MustCompile(`<tr[^>]*data-id="[0-9a-f]+"[^>]*><td>([^<]*)</td><td>[^<]*</td><td>v(\d+)</td><td class="state">([^<]*)</td>`)
)

// renderedPage is what Chromium shows of the fleet page: the versions line
// and each laptop's version.
func renderedPage(t *testing.T, dom string) (string, map[string]uint64) {
	t.Helper()
	m := pageVersions.FindStringSubmatch(dom)
	if m == nil {
		t.Fatalf("the page has no versions line:\n%s", dom)
	}
	rows := map[string]uint64{}
	for _, r := range pageRow.FindAllStringSubmatch(dom, -1) {
		rows[r[1]], _ = strconv.ParseUint(r[2], 10, 64)
	}
	return m[1], rows
}

// TestFleetPage: a school server and six laptops in their own namespaces,
// the laptops reporting to the server they are configured with. The
// server's table lists every laptop with its version and what it got from
// its neighbours, shows the one that fell back at boot, and Chromium, in
// the LAN, sees the page's versions change as a new version spreads.
func TestFleetPage(t *testing.T) {
	const laptops = 6
	needTools(t, "unshare")
	if _, err := exec.LookPath("chromium"); err != nil {
		t.Skip("chromium not installed (apt-get install chromium; .ci/deps installs it as root)")
	}
	bin := buildBinary(t)
	lan := testlan.NewShaped(t, laptops+2, "8mbit")
	observer := laptops + 2
	f := newTestFleet(t)
	f.publish(t, 1)
	f.publish(t, 2)
	startSeed(t, lan, bin, f)
	seed := "http://" + lan.Nodes[0].IP + ":7380/"

	// xo-1 … xo-5 run v2; xo-6 fell back from v2 to v1.
	logs := make([]*syncBuffer, laptops)
	for i := range laptops {
		var s string
		if i == laptops-1 {
			s = f.fellBackSysroot(t)
		} else {
			s = f.sysrootAt(t, 2)
		}
		node := i + 2
		logs[i] = lanDaemon(t, lan, node, bin, fmt.Sprintf("xo-%d", i+1), "--sysroot", s, "--trust", f.pub, "--bus", "none",
			"--policy", "auto", "--iface", lan.Nodes[node-1].Iface, "--peer", seed,
			// xo-6, on v1, hears no announcement of v3 (it is made to
			// the laptops on v2): it polls.
			"--poll-interval", "5s")
	}
	v := waitFleet(t, lan, observer, bin, seed, "six laptops", time.Minute, func(v FleetView) bool { return len(v.Machines) == laptops })
	m := byName(v)
	for i := 1; i < laptops; i++ {
		if x := m[fmt.Sprintf("xo-%d", i)]; x.Current != 2 || x.FellBack || x.Image != "school-laptop" || x.FreeBytes == 0 {
			t.Errorf("xo-%d: %+v, want v2 of school-laptop, not fallen back, with its free space", i, x)
		}
	}
	if x := m["xo-6"]; x.Current != 1 || !x.FellBack || x.Bad != 2 {
		t.Errorf("xo-6: %+v, want v1, fallen back from v2", x)
	}
	if v.FellBack != 1 {
		t.Errorf("the table counts %d fallen back, want 1", v.FellBack)
	}
	page := "http://" + lan.Nodes[0].IP + ":7380/fleet"
	dom := chromium(t, lan, observer, page, "--dump-dom")
	if line, rows := renderedPage(t, dom); line != "v2: 5 · v1: 1" || len(rows) != laptops || rows["xo-6"] != 1 {
		t.Fatalf("before v3 the page shows %q and %v", line, rows)
	}
	if !strings.Contains(dom, "xo-6 (") || !strings.Contains(dom, "fell back from v2") {
		t.Errorf("the page does not list xo-6 as fallen back:\n%s", dom)
	}
	// Left open, the page refreshes itself from /fleet.json, which its
	// Content-Security-Policy allows.
	dom = chromium(t, lan, observer, page, "--dump-dom", "--virtual-time-budget=7000")
	if !regexp.MustCompile(`<body data-refreshes="[1-9]`).MatchString(dom) || strings.Contains(dom, `id="live" class="stale"`) {
		t.Errorf("the page did not refresh itself:\n%s", dom)
	}

	// v3: 2 MB of new files, which the laptops share.
	for i := range 16 {
		b := make([]byte, 128<<10)
		rand.Read(b)
		os.MkdirAll(filepath.Join(f.tree, "usr/lib"), 0o755)
		os.WriteFile(filepath.Join(f.tree, fmt.Sprintf("usr/lib/update-3-%02d", i)), b, 0o644)
	}
	f.publish(t, 3)
	seen := map[string]bool{}
	shot, shotScore := "", -1
	deadline := time.Now().Add(3 * time.Minute)
	for n := 0; ; n++ {
		png := filepath.Join(t.TempDir(), "fleet.png")
		dom := chromium(t, lan, observer, page, "--dump-dom", "--screenshot="+png)
		line, rows := renderedPage(t, dom)
		seen[line] = true
		at3, versions := 0, map[uint64]bool{}
		for _, v := range rows {
			versions[v] = true
			if v == 3 {
				at3++
			}
		}
		// The picture for the README: the page that caught the fleet most
		// mixed mid-update, else the first after the publication.
		score := -1
		switch {
		case at3 > 0 && at3 < laptops:
			score = len(versions)
		case n == 0:
			score = 0
		}
		if score > shotScore {
			shot, shotScore = png, score
		}
		if at3 == laptops && line == "v3: 6" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the page never showed the fleet on v3; last %q, %v", line, rows)
		}
	}
	t.Logf("the page's versions line, as the fleet converged: %q", keys(seen))
	if b, err := os.ReadFile(shot); err != nil || !bytes.HasPrefix(b, []byte("\x89PNG")) {
		t.Fatalf("no screenshot: %v", err)
	} else if os.Getenv("PEERUP_UPDATE_DOCS") == "1" {
		if err := os.WriteFile("../docs/fleet.png", b, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// Every laptop's report says what its own log says it got from its
	// neighbours and from the server.
	v = waitFleet(t, lan, observer, bin, seed, "every laptop settled on v3", time.Minute, func(v FleetView) bool {
		for _, x := range v.Machines {
			if x.Current != 3 || !settled(x.State) {
				return false
			}
		}
		return len(v.Machines) == laptops
	})
	m = byName(v)
	var shared uint64
	for i := range laptops {
		x := m[fmt.Sprintf("xo-%d", i+1)]
		want := uint64(neighbourBytes(logs[i].String(), 3, lan.Nodes[0].IP))
		if x.NeighbourBytes != want || x.ServerBytes+x.NeighbourBytes == 0 {
			t.Errorf("xo-%d reports %d bytes from neighbours and %d from the server; its log says %d from neighbours", i+1, x.NeighbourBytes, x.ServerBytes, want)
		}
		if x.FellBack {
			t.Errorf("xo-%d on v3 still shows as fallen back", i+1)
		}
		shared += x.NeighbourBytes
	}
	if shared == 0 || v.NeighbourBytes != shared {
		t.Errorf("the fleet got %d bytes from neighbours (table total %d); want some", shared, v.NeighbourBytes)
	}
	t.Logf("v3 (2 MiB) reached 6 laptops: %d bytes from the server, %d from neighbours", v.ServerBytes, v.NeighbourBytes)
	out, err := lan.Command(observer, bin, "fleet", "--from", seed).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "xo-6") || !strings.Contains(string(out), "v3: 6") {
		t.Errorf("peerup fleet: %v\n%s", err, out)
	}
	t.Logf("peerup fleet:\n%s", out)
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// floodEnv tells TestFleetFloodChild where to send its reports.
const floodEnv = "PEERUP_TEST_FLOOD"

// TestFleetFlood: 100,000 reports of made-up machines from one address on
// the LAN leave the seed's memory where it was, its table at the cap for
// that address, and the real laptops listed.
func TestFleetFlood(t *testing.T) {
	const fakes = 100_000
	needTools(t, "unshare")
	bin := buildBinary(t)
	lan := testlan.New(t, 4)
	f := newTestFleet(t)
	f.publish(t, 1)
	proc, _ := startSeed(t, lan, bin, f)
	seed := "http://" + lan.Nodes[0].IP + ":7380/"
	for i := range 2 {
		lanDaemon(t, lan, i+2, bin, fmt.Sprintf("xo-%d", i+1), "--sysroot", f.sysrootAt(t, 1), "--trust", f.pub, "--bus", "none",
			"--iface", lan.Nodes[i+1].Iface, "--peer", seed)
	}
	waitFleet(t, lan, 4, bin, seed, "both laptops", time.Minute, func(v FleetView) bool { return len(v.Machines) == 2 })
	rssBefore := procStatusKiB(t, proc.Pid, "VmRSS")

	cmd := lan.Command(4, os.Args[0], "-test.run=^TestFleetFloodChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %d", floodEnv, seed, fakes))
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), fmt.Sprintf("taken %d", fakes)) {
		t.Fatalf("the flood: %v\n%s", err, out)
	}
	peak, rss := procStatusKiB(t, proc.Pid, "VmHWM"), procStatusKiB(t, proc.Pid, "VmRSS")
	t.Logf("the seed's RSS: %.1f MiB before %d fake reports, %.1f MiB after, peak %.1f MiB",
		float64(rssBefore)/1024, fakes, float64(rss)/1024, float64(peak)/1024)
	if peak > rssBefore+24*1024 {
		t.Errorf("the seed's peak RSS grew by %.1f MiB in the flood", float64(peak-rssBefore)/1024)
	}
	v := fleetJSON(t, lan, 4, bin, seed)
	m := byName(v)
	if _, ok := m["xo-1"]; !ok {
		t.Errorf("xo-1 is gone after the flood")
	}
	if _, ok := m["xo-2"]; !ok {
		t.Errorf("xo-2 is gone after the flood")
	}
	if len(v.Machines) != 2+DefaultFleetLimits().PerAddr {
		t.Errorf("%d machines listed, want 2 and %d from the flooding address", len(v.Machines), DefaultFleetLimits().PerAddr)
	}
}

// TestFleetFloodChild is TestFleetFlood's flooder, run in a node of its
// LAN; alone, it skips.
func TestFleetFloodChild(t *testing.T) {
	env := os.Getenv(floodEnv)
	if env == "" {
		t.Skip("run by TestFleetFlood")
	}
	var seed string
	var n int
	if _, err := fmt.Sscan(env, &seed, &n); err != nil {
		t.Fatal(err)
	}
	url := strings.TrimSuffix(seed, "/") + ReportPath
	const workers = 8
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: workers}}
	var taken atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += workers {
				resp, err := client.Post(url, "application/json", bytes.NewReader(reportJSON(t, fakeReport(i))))
				if err != nil {
					t.Error(err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == http.StatusNoContent {
					taken.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	fmt.Printf("taken %d\n", taken.Load())
}

// procStatusKiB reads a figure of /proc/PID/status (VmRSS, VmHWM), in KiB.
func procStatusKiB(t *testing.T, pid int, key string) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, key+":"); ok {
			n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no %s in /proc/%d/status", key, pid)
	return 0
}
