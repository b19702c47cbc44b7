package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/peerup/peerup/apply"
)

func goodReport() Report {
	return Report{Format: ReportFormat, ID: "0123456789abcdef0123456789abcdef", Name: "xo-1", Image: "school-laptop",
		Current: 3, Previous: 2, State: StateIdle, ServerBytes: 100, NeighbourBytes: 900, FreeBytes: 1 << 30}
}

func reportJSON(t testing.TB, r Report) []byte {
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseReport(t *testing.T) {
	good := reportJSON(t, goodReport())
	with := func(f func(*Report)) []byte {
		r := goodReport()
		f(&r)
		return reportJSON(t, r)
	}
	for _, tc := range []struct {
		name string
		in   []byte
		want string // "" for ok, else part of the error
	}{
		{"a laptop's report", good, ""},
		{"fell back", with(func(r *Report) { r.Current, r.Bad = 1, 2 }), ""},
		{"unknown fields are a newer laptop's, ignored", []byte(strings.Replace(string(good), `{`, `{"later":1,`, 1)), ""},
		{"too big", append(good, bytes.Repeat([]byte(" "), MaxReportBytes)...), "more than"},
		{"not JSON", []byte("hello"), "invalid"},
		{"two reports", append(append([]byte{}, good...), good...), "data after"},
		{"wrong format", with(func(r *Report) { r.Format = 2 }), "format 2"},
		{"short id", with(func(r *Report) { r.ID = "abc" }), "id"},
		{"id not hex", with(func(r *Report) { r.ID = "ZZZZZZZZZZZZZZZZ" }), "id"},
		{"id with a path in it", with(func(r *Report) { r.ID = "0123456789abcdef/../x" }), "id"},
		{"long name", with(func(r *Report) { r.Name = strings.Repeat("x", maxNameLen+1) }), "name"},
		{"name with a newline", with(func(r *Report) { r.Name = "xo\n1" }), "name"},
		{"image with an escape", with(func(r *Report) { r.Image = "a\x1b[2J" }), "image"},
		{"long error", with(func(r *Report) { r.State, r.Error = StateError, strings.Repeat("e", maxErrorLen+1) }), "error"},
		{"made-up state", with(func(r *Report) { r.State = "hacked" }), "state"},
		{"negative tries", with(func(r *Report) { r.TriesLeft = -1 }), "tries_left"},
		// encoding/json makes invalid UTF-8 valid (U+FFFD) before the check.
		{"invalid UTF-8", []byte(strings.Replace(string(good), "xo-1", "xo-\xff", 1)), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := ParseReport(tc.in)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && err == nil:
				t.Fatalf("taken: %+v", r)
			case tc.want != "" && (!errors.Is(err, ErrReport) || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("error %q, want ErrReport saying %q", err, tc.want)
			case tc.want != "" && r != (Report{}):
				t.Fatalf("a refused report gave %+v", r)
			}
		})
	}
}

// TestClipMakesReportsParse: whatever a laptop's host name or error says,
// the report it sends is one the server takes.
func TestClipMakesReportsParse(t *testing.T) {
	r := goodReport()
	r.Name = clip("xo\t\x00"+strings.Repeat("é", 100), maxNameLen)
	r.State, r.Error = StateError, clip(strings.Repeat("bad\n\xff", 300), maxErrorLen)
	if _, err := ParseReport(reportJSON(t, r)); err != nil {
		t.Fatal(err)
	}
}

// FuzzReport: any body is refused with ErrReport or parses to a report that
// passes its own checks and survives a round trip.
func FuzzReport(f *testing.F) {
	f.Add(reportJSON(f, goodReport()))
	r := goodReport()
	r.State, r.Error, r.Bad, r.Trying, r.TriesLeft = StateError, "fetch: no peer", 4, 4, 2
	f.Add(reportJSON(f, r))
	f.Add([]byte(`{"v":1,"id":"00000000","state":"idle"}`))
	f.Add([]byte(`{"v":1,"id":"00000000","state":"idle"} {}`))
	f.Add([]byte(`{"v":1,"id":"0000000\u0030","name":"\u0000"}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseReport(b)
		if err != nil {
			if !errors.Is(err, ErrReport) {
				t.Fatalf("error %v does not wrap ErrReport", err)
			}
			return
		}
		if err := r.check(); err != nil {
			t.Fatalf("parsed report fails its checks: %v", err)
		}
		again, err := ParseReport(reportJSON(t, r))
		if err != nil || again != r {
			t.Fatalf("round trip: %+v, %v; want %+v", again, err, r)
		}
	})
}

func fakeReport(i int) Report {
	r := goodReport()
	r.ID = fmt.Sprintf("f%015x", i)
	r.Name = fmt.Sprintf("fake-%d", i)
	return r
}

func openTestFleet(t *testing.T, path string, lim FleetLimits) *Fleet {
	t.Helper()
	f, err := OpenFleet(path, lim, nil)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// TestFleetTableBounds: floods from one address and from many, replayed
// reports, a machine that moves, expiry; the table keeps within its caps
// and the honest machines.
func TestFleetTableBounds(t *testing.T) {
	lim := FleetLimits{Max: 50, PerAddr: 5, TTL: time.Hour}
	t0 := time.Unix(1_700_000_000, 0)
	for _, tc := range []struct {
		name   string
		run    func(f *Fleet)
		want   int      // machines in the table
		keep   []string // ids that must be there
		absent []string
	}{
		{"one address floods: only its own oldest go", func(f *Fleet) {
			for i := range 1000 {
				f.Record("10.0.0.66", fakeReport(1000+i), t0.Add(time.Duration(i)*time.Millisecond))
			}
		}, 3 + 5, []string{"00000000000000a1", "00000000000000a2", "00000000000000a3", fakeReport(1999).ID}, []string{fakeReport(1000).ID}},
		{"many addresses flood: the oldest of all go", func(f *Fleet) {
			for i := range 1000 {
				f.Record(fmt.Sprintf("10.1.%d.%d", i/250, i%250), fakeReport(1000+i), t0.Add(time.Hour/2+time.Duration(i)*time.Millisecond))
			}
		}, 50, []string{fakeReport(1999).ID}, []string{"00000000000000a1"}},
		{"a report again replaces, never adds", func(f *Fleet) {
			for range 100 {
				f.Record("10.0.0.1", named("00000000000000a1", "xo-1"), t0.Add(time.Minute))
			}
		}, 3, []string{"00000000000000a1"}, nil},
		{"a machine that moves is counted at its new address", func(f *Fleet) {
			f.Record("10.0.0.9", named("00000000000000a1", "xo-1"), t0.Add(time.Minute))
			for i := range 5 {
				f.Record("10.0.0.1", fakeReport(i), t0.Add(2*time.Minute))
			}
		}, 3 + 5, []string{"00000000000000a1", "00000000000000a2"}, nil},
		{"a machine that moves to a full table is not lost half moved", func(f *Fleet) {
			for i := range 47 {
				f.Record(fmt.Sprintf("10.2.0.%d", i), fakeReport(i), t0.Add(time.Second))
			}
			f.Record("10.0.0.9", named("00000000000000a1", "xo-1"), t0.Add(time.Minute))
			f.Record("10.0.0.9", named("00000000000000a1", "xo-1"), t0.Add(2*time.Minute))
			f.Record("10.0.0.1", fakeReport(99), t0.Add(3*time.Minute))
		}, 50, []string{"00000000000000a1", fakeReport(99).ID}, nil},
		{"silent machines expire", func(f *Fleet) {
			f.Record("10.0.0.2", named("00000000000000a2", "xo-2"), t0.Add(2*time.Hour))
			f.Expire(t0.Add(2*time.Hour + time.Minute))
		}, 1, []string{"00000000000000a2"}, []string{"00000000000000a1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := openTestFleet(t, filepath.Join(t.TempDir(), "fleet.db"), lim)
			defer f.Close()
			for i, a := range []string{"10.0.0.1", "10.0.0.2", "10.0.0.3"} {
				f.Record(a, named(fmt.Sprintf("00000000000000a%d", i+1), fmt.Sprintf("xo-%d", i+1)), t0)
			}
			tc.run(f)
			v := f.View(t0)
			if len(v.Machines) != tc.want {
				t.Errorf("%d machines, want %d", len(v.Machines), tc.want)
			}
			ids := map[string]bool{}
			for _, m := range v.Machines {
				ids[m.ID] = true
			}
			for _, id := range tc.keep {
				if !ids[id] {
					t.Errorf("%s is gone", id)
				}
			}
			for _, id := range tc.absent {
				if ids[id] {
					t.Errorf("%s is still there", id)
				}
			}
			if err := f.Flush(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func named(id, name string) Report {
	r := goodReport()
	r.ID, r.Name = id, name
	return r
}

// TestFleetFloodHeap: 100,000 made-up machines from one address through
// the HTTP handler leave the table at its cap, the live heap about where
// it was, and the real laptops listed.
func TestFleetFloodHeap(t *testing.T) {
	f := openTestFleet(t, filepath.Join(t.TempDir(), "fleet.db"), DefaultFleetLimits())
	defer f.Close()
	h := f.Handler(http.NotFoundHandler())
	post := func(addr string, r Report) int {
		req := httptest.NewRequest(http.MethodPost, ReportPath, bytes.NewReader(reportJSON(t, r)))
		req.RemoteAddr = addr + ":40000"
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		return w.Code
	}
	for i := range 6 {
		if c := post(fmt.Sprintf("10.99.0.%d", i+2), named(fmt.Sprintf("00000000000000b%d", i), fmt.Sprintf("xo-%d", i))); c != http.StatusNoContent {
			t.Fatalf("real report: %d", c)
		}
	}
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	before := heap()
	for i := range 100_000 {
		if c := post("10.99.0.200", fakeReport(i)); c != http.StatusNoContent {
			t.Fatalf("fake report %d: %d", i, c)
		}
		if i%20_000 == 0 {
			f.Flush()
		}
	}
	f.Flush()
	after := heap()
	t.Logf("live heap %.1f MiB before 100,000 fake reports, %.1f MiB after", float64(before)/(1<<20), float64(after)/(1<<20))
	if after > before+4<<20 {
		t.Errorf("the live heap grew by %.1f MiB", float64(after-before)/(1<<20))
	}
	v := f.View(time.Now())
	if len(v.Machines) != 6+DefaultFleetLimits().PerAddr {
		t.Errorf("%d machines listed, want the 6 real ones and %d fakes", len(v.Machines), DefaultFleetLimits().PerAddr)
	}
	for i := range 6 {
		if !strings.Contains(fmt.Sprint(v.Machines), fmt.Sprintf("xo-%d", i)) {
			t.Errorf("xo-%d is no longer listed", i)
		}
	}
}

// TestFleetPersists: the table survives a restart, within its caps, and
// garbage in its file is dropped rather than shown.
func TestFleetPersists(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fleet.db")
	f := openTestFleet(t, path, DefaultFleetLimits())
	t0 := time.Now()
	for i := range 10 {
		r := fakeReport(i)
		r.Current = uint64(i%3 + 1)
		f.Record(fmt.Sprintf("10.0.0.%d", i), r, t0.Add(time.Duration(i)*time.Second))
	}
	want := f.View(t0)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	f = openTestFleet(t, path, FleetLimits{Max: 4, PerAddr: 4, TTL: time.Hour})
	got := f.View(t0)
	f.Close()
	if len(got.Machines) != 4 || got.Machines[0].Name != "fake-6" {
		t.Fatalf("reopened with a cap of 4: %+v", got.Machines)
	}
	f = openTestFleet(t, path, DefaultFleetLimits())
	defer f.Close()
	if got := f.View(t0); len(got.Machines) != 4 || len(want.Machines) != 10 {
		t.Fatalf("evicted machines came back: %d", len(got.Machines))
	}
}

// TestFleetHTTP: reports only from the LAN, bounded, checked; the page
// and the JSON only to the LAN.
func TestFleetHTTP(t *testing.T) {
	f := openTestFleet(t, filepath.Join(t.TempDir(), "fleet.db"), DefaultFleetLimits())
	defer f.Close()
	h := f.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "repo") }))
	good := reportJSON(t, goodReport())
	for _, tc := range []struct {
		name, method, path, from string
		body                     []byte
		code                     int
		has                      string
	}{
		{"a report from the LAN", "POST", ReportPath, "10.1.2.3:5000", good, http.StatusNoContent, ""},
		{"from link-local IPv6", "POST", ReportPath, "[fe80::1]:5000", good, http.StatusNoContent, ""},
		{"from loopback", "POST", ReportPath, "127.0.0.1:5000", good, http.StatusNoContent, ""},
		{"from a public address", "POST", ReportPath, "8.8.8.8:5000", good, http.StatusForbidden, ""},
		{"too big", "POST", ReportPath, "10.1.2.3:5000", bytes.Repeat([]byte("x"), 1<<20), http.StatusBadRequest, "more than"},
		{"garbage", "POST", ReportPath, "10.1.2.3:5000", []byte("{"), http.StatusBadRequest, "bad status report"},
		{"GET the report path", "GET", ReportPath, "10.1.2.3:5000", nil, http.StatusMethodNotAllowed, ""},
		{"the JSON", "GET", FleetJSONPath, "192.168.1.9:5000", nil, http.StatusOK, `"name":"xo-1"`},
		{"the page", "GET", FleetPagePath, "192.168.1.9:5000", nil, http.StatusOK, `"name":"xo-1"`},
		{"the page from a public address", "GET", FleetPagePath, "8.8.8.8:5000", nil, http.StatusForbidden, ""},
		{"POST to the page", "POST", FleetPagePath, "10.1.2.3:5000", nil, http.StatusMethodNotAllowed, ""},
		{"the repo is still served", "GET", "/index", "8.8.8.8:5000", nil, http.StatusOK, "repo"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest(tc.method, tc.path, bytes.NewReader(tc.body))
			req.RemoteAddr = tc.from
			w := httptest.NewRecorder()
			h.ServeHTTP(w, req)
			if w.Code != tc.code || !strings.Contains(w.Body.String(), tc.has) {
				t.Fatalf("%d %q, want %d with %q", w.Code, w.Body.String(), tc.code, tc.has)
			}
		})
	}
	// A name that is markup stays text in the page's inline data.
	r := goodReport()
	r.ID, r.Name = "00000000000000ff", "</script><script>alert(1)</script>"
	f.Record("10.1.2.4", r, time.Now())
	req := httptest.NewRequest("GET", FleetPagePath, nil)
	req.RemoteAddr = "10.1.2.3:5000"
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	if strings.Contains(w.Body.String(), "<script>alert") {
		t.Fatalf("the page carries a laptop's markup:\n%s", w.Body.String())
	}
}

// TestReportsReachTheSeed: a laptop daemon configured with a seed as its
// peer reports when it starts and again once it applied an update, with
// the bytes it fetched from the seed; the seed's table survives its
// restart.
func TestReportsReachTheSeed(t *testing.T) {
	f := newTestFleet(t)
	f.publish(t, 1)
	ctx, cancel := context.WithCancel(context.Background())
	seedCtx, stopSeed := context.WithCancel(ctx)
	defer cancel()
	seed, err := StartSeed(seedCtx, Config{Repo: f.repo.Dir(), Trust: []string{f.pub}, Listen: "127.0.0.1:0"}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	seedURL := "http://" + seed.Addr.String() + "/"
	sysroot := f.sysrootAt(t, 1)
	d, err := Start(ctx, Config{Sysroot: sysroot, Trust: []string{f.pub}, Listen: "127.0.0.1:0", Bus: "none", Peers: []string{seedURL}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); d.Wait(ctx) }()
	wait := func(what string, ok func(FleetMachine) bool) FleetMachine {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			if v, err := FetchFleet(ctx, seedURL); err == nil && len(v.Machines) == 1 && ok(v.Machines[0]) {
				return v.Machines[0]
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Fatalf("the seed's table never showed %s", what)
		return FleetMachine{}
	}
	host, _ := os.Hostname()
	m := wait("the laptop on v1", func(m FleetMachine) bool { return m.Current == 1 })
	if m.Name != clip(host, maxNameLen) || m.Image != "school-laptop" || m.Addr != "127.0.0.1" || len(m.ID) != 32 {
		t.Errorf("first report: %+v", m)
	}
	f.publish(t, 2)
	d.Core.Hint()
	m = wait("the laptop on v2", func(m FleetMachine) bool { return m.Current == 2 && settled(m.State) })
	if m.ServerBytes == 0 || m.NeighbourBytes != 0 || m.Previous != 1 || m.Trying != 2 || m.TriesLeft != apply.DefaultBootTries {
		t.Errorf("report after the update: %+v", m)
	}

	stopSeed()
	seed.Wait(seedCtx)
	fl := openTestFleet(t, f.repo.Layout().FleetDB(), DefaultFleetLimits())
	defer fl.Close()
	if v := fl.View(time.Now()); len(v.Machines) != 1 || v.Machines[0].Current != 2 || v.Machines[0].ID != m.ID {
		t.Errorf("after the seed stopped, its table holds %+v", v.Machines)
	}
}
