package daemon

import (
	"cmp"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// The fleet table is a seed's latest report from each laptop (SPEC.md §18).
// It is bounded whatever the LAN sends: a flood of made-up machines from
// one address replaces that address's oldest entries, never anyone
// else's, and the whole table has a cap too.

// FleetLimits bound the fleet table.
type FleetLimits struct {
	Max     int           // machines in all
	PerAddr int           // machines reporting from one address
	TTL     time.Duration // a machine silent this long is dropped
}

// DefaultFleetLimits are a school's fleet, with room for a few laptops behind
// one address (a NAT, several nodes on one machine), and the holidays.
func DefaultFleetLimits() FleetLimits {
	return FleetLimits{Max: 4096, PerAddr: 32, TTL: 30 * 24 * time.Hour}
}

// fleetFlushInterval batches the table's writes: a report is one map
// update, and the disk sees at most one commit (two fsyncs) per interval.
const fleetFlushInterval = 5 * time.Second

var bucketFleet = []byte("fleet")

// FleetMachine is one laptop in the table: its report, and what the seed
// saw of it.
type FleetMachine struct {
	Report
	Addr     string    `json:"addr"`
	LastSeen time.Time `json:"last_seen"`
	// FellBack repeats Report.FellBack for the page and scripts.
	FellBack bool `json:"fell_back"`
}

// Fleet is a seed's fleet table, in memory and in bbolt.
type Fleet struct {
	lim FleetLimits
	db  *bolt.DB
	log *slog.Logger

	mu     sync.Mutex
	m      map[string]*fleetEntry
	byAddr map[string]map[string]struct{}
	dirty  map[string]struct{} // to write at the next flush
	gone   map[string]struct{} // written before, to delete at the next flush
}

type fleetEntry struct {
	FleetMachine
	stored bool // in bbolt
}

// OpenFleet opens (or makes) the table at path and loads it within lim.
func OpenFleet(path string, lim FleetLimits, log *slog.Logger) (*Fleet, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 100 * time.Millisecond})
	if err != nil {
		return nil, fmt.Errorf("open fleet table %s: %w", path, err)
	}
	f := &Fleet{lim: lim, db: db, log: log, m: map[string]*fleetEntry{}, byAddr: map[string]map[string]struct{}{},
		dirty: map[string]struct{}{}, gone: map[string]struct{}{}}
	var loaded []FleetMachine
	err = db.Update(func(tx *bolt.Tx) error {
		bk, err := tx.CreateBucketIfNotExists(bucketFleet)
		if err != nil {
			return err
		}
		return bk.ForEach(func(k, v []byte) error {
			var m FleetMachine
			// What does not parse now (a garbled or older entry) is dropped
			// at the next flush, like an evicted machine.
			if json.Unmarshal(v, &m) != nil || m.check() != nil || string(k) != m.ID {
				f.gone[string(k)] = struct{}{}
				return nil
			}
			loaded = append(loaded, m)
			return nil
		})
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("read fleet table %s: %w", path, err)
	}
	// Oldest first, so that the caps keep the newest.
	slices.SortFunc(loaded, func(a, b FleetMachine) int { return a.LastSeen.Compare(b.LastSeen) })
	for _, m := range loaded {
		f.put(m)
		f.m[m.ID].stored = true
		delete(f.dirty, m.ID)
	}
	return f, nil
}

// Record keeps r as the latest report of its machine, seen from addr.
func (f *Fleet) Record(addr string, r Report, now time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.put(FleetMachine{Report: r, Addr: addr, LastSeen: now, FellBack: r.FellBack()})
}

// put adds or replaces m, evicting to stay within the limits. f.mu held.
func (f *Fleet) put(m FleetMachine) {
	stored := false
	if e := f.m[m.ID]; e != nil {
		if e.Addr == m.Addr {
			e.FleetMachine = m
			f.dirty[m.ID] = struct{}{}
			return
		}
		// A machine that moved is taken out before room is made at its
		// new address, so that the eviction cannot pick it half moved.
		stored = e.stored
		f.unindex(e)
		delete(f.m, m.ID)
	}
	f.makeRoom(m.Addr)
	f.m[m.ID] = &fleetEntry{FleetMachine: m, stored: stored}
	f.index(m.ID, m.Addr)
	f.dirty[m.ID] = struct{}{}
	delete(f.gone, m.ID)
}

// makeRoom evicts the oldest machine of addr while it is full, and the
// oldest of all while the table is. f.mu held.
func (f *Fleet) makeRoom(addr string) {
	for len(f.byAddr[addr]) >= f.lim.PerAddr {
		f.remove(f.oldest(f.byAddr[addr]))
	}
	for len(f.m) >= f.lim.Max {
		var oldest *fleetEntry
		for _, e := range f.m {
			if oldest == nil || e.LastSeen.Before(oldest.LastSeen) {
				oldest = e
			}
		}
		f.remove(oldest)
	}
}

func (f *Fleet) oldest(ids map[string]struct{}) *fleetEntry {
	var oldest *fleetEntry
	for id := range ids {
		if e := f.m[id]; oldest == nil || e.LastSeen.Before(oldest.LastSeen) {
			oldest = e
		}
	}
	return oldest
}

func (f *Fleet) index(id, addr string) {
	s := f.byAddr[addr]
	if s == nil {
		s = map[string]struct{}{}
		f.byAddr[addr] = s
	}
	s[id] = struct{}{}
}

func (f *Fleet) unindex(e *fleetEntry) {
	delete(f.byAddr[e.Addr], e.ID)
	if len(f.byAddr[e.Addr]) == 0 {
		delete(f.byAddr, e.Addr)
	}
}

// remove drops e; only what was written needs deleting from disk, so the
// pending deletes are bounded by the table's size. f.mu held.
func (f *Fleet) remove(e *fleetEntry) {
	f.unindex(e)
	delete(f.m, e.ID)
	delete(f.dirty, e.ID)
	if e.stored {
		f.gone[e.ID] = struct{}{}
	}
}

// Expire drops the machines silent since before now-TTL.
func (f *Fleet) Expire(now time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, e := range f.m {
		if now.Sub(e.LastSeen) > f.lim.TTL {
			f.remove(e)
		}
	}
}

// Flush writes what changed since the last flush, in one transaction.
func (f *Fleet) Flush() error {
	f.mu.Lock()
	put := make(map[string][]byte, len(f.dirty))
	for id := range f.dirty {
		b, err := json.Marshal(f.m[id].FleetMachine)
		if err != nil {
			f.mu.Unlock()
			return err
		}
		put[id] = b
		f.m[id].stored = true
	}
	del := f.gone
	f.dirty, f.gone = map[string]struct{}{}, map[string]struct{}{}
	f.mu.Unlock()
	if len(put) == 0 && len(del) == 0 {
		return nil
	}
	err := f.db.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketFleet)
		for id := range del {
			if err := bk.Delete([]byte(id)); err != nil {
				return err
			}
		}
		for id, b := range put {
			if err := bk.Put([]byte(id), b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("write fleet table: %w", err)
	}
	return nil
}

// run flushes and expires every fleetFlushInterval until ctx ends, then
// flushes once more.
func (f *Fleet) run(ctx context.Context) {
	t := time.NewTicker(fleetFlushInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			if err := f.Flush(); err != nil {
				f.log.Warn("fleet table", "err", err)
			}
			return
		case now := <-t.C:
			f.Expire(now)
			if err := f.Flush(); err != nil {
				f.log.Warn("fleet table", "err", err)
			}
		}
	}
}

// Close flushes and closes the table.
func (f *Fleet) Close() error {
	err := f.Flush()
	return errors.Join(err, f.db.Close())
}

// FleetView is what the fleet page and /fleet.json show.
type FleetView struct {
	Generated time.Time      `json:"generated"`
	Machines  []FleetMachine `json:"machines"` // by name, then id
	// Versions counts the machines on each current version, newest first.
	Versions []VersionCount `json:"versions"`
	// Bytes the laptops fetched from the servers they report to, and from
	// their neighbours: the latter are what sharing saved the server.
	ServerBytes    uint64 `json:"server_bytes"`
	NeighbourBytes uint64 `json:"neighbour_bytes"`
	FellBack       int    `json:"fell_back"`
	Failed         int    `json:"failed"` // in state error
}

// VersionCount is how many machines run one version.
type VersionCount struct {
	Version  uint64 `json:"version"`
	Machines int    `json:"machines"`
}

// View is the table now.
func (f *Fleet) View(now time.Time) FleetView {
	f.mu.Lock()
	v := FleetView{Generated: now.UTC(), Machines: make([]FleetMachine, 0, len(f.m))}
	for _, e := range f.m {
		v.Machines = append(v.Machines, e.FleetMachine)
	}
	f.mu.Unlock()
	slices.SortFunc(v.Machines, func(a, b FleetMachine) int { return cmp.Or(cmp.Compare(a.Name, b.Name), cmp.Compare(a.ID, b.ID)) })
	counts := map[uint64]int{}
	for _, m := range v.Machines {
		counts[m.Current]++
		v.ServerBytes += m.ServerBytes
		v.NeighbourBytes += m.NeighbourBytes
		if m.FellBack {
			v.FellBack++
		}
		if m.State == StateError {
			v.Failed++
		}
	}
	for ver, n := range counts {
		v.Versions = append(v.Versions, VersionCount{ver, n})
	}
	slices.SortFunc(v.Versions, func(a, b VersionCount) int { return cmp.Compare(b.Version, a.Version) })
	return v
}

// Fleet HTTP paths on a seed.
const (
	FleetPagePath = "/fleet"
	FleetJSONPath = "/fleet.json"
)

//go:embed fleetpage.html
var fleetPageHTML string

var fleetPage = template.Must(template.New("fleet").Parse(fleetPageHTML))

// Handler serves reports, the fleet page and /fleet.json in front of next
// (the repo). All three answer only the LAN: a private, link-local or
// loopback address; the page names machines and versions.
func (f *Fleet) Handler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case ReportPath, FleetPagePath, FleetJSONPath:
		default:
			next.ServeHTTP(w, r)
			return
		}
		addr, ok := remoteLAN(r.RemoteAddr)
		if !ok {
			http.Error(w, "the fleet is shown only to the LAN", http.StatusForbidden)
			return
		}
		switch {
		case r.URL.Path == ReportPath && r.Method == http.MethodPost:
			f.serveReport(w, r, addr)
		case r.URL.Path == ReportPath:
			w.Header().Set("Allow", "POST")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		case r.Method != http.MethodGet && r.Method != http.MethodHead:
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		case r.URL.Path == FleetJSONPath:
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Cache-Control", "no-store")
			json.NewEncoder(w).Encode(f.View(time.Now()))
		default:
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			w.Header().Set("Cache-Control", "no-store")
			// The page loads nothing from anywhere, its own data included
			// inline: no other origin, and nothing to inject into.
			w.Header().Set("Content-Security-Policy", "default-src 'none'; connect-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:")
			if err := fleetPage.Execute(w, f.View(time.Now())); err != nil {
				f.log.Warn("fleet page", "err", err)
			}
		}
	})
}

func (f *Fleet) serveReport(w http.ResponseWriter, r *http.Request, addr netip.Addr) {
	// Bounded before reading: one more byte than a report may have, so
	// that a longer body is refused rather than cut.
	b, err := io.ReadAll(io.LimitReader(r.Body, MaxReportBytes+1))
	if err != nil {
		http.Error(w, "read report: "+err.Error(), http.StatusBadRequest)
		return
	}
	rep, err := ParseReport(b)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	f.Record(addr.String(), rep, time.Now())
	w.WriteHeader(http.StatusNoContent)
}

// remoteLAN is a request's remote address, and whether it is on the LAN
// (lanAddr).
func remoteLAN(remote string) (netip.Addr, bool) {
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		return netip.Addr{}, false
	}
	a := ap.Addr().Unmap()
	return a, lanAddr(a)
}

// maxFleetJSON bounds what FetchFleet reads: a full table, with room.
const maxFleetJSON = 16 << 20

// FetchFleet reads a seed's /fleet.json; base is the seed's URL.
func FetchFleet(ctx context.Context, base string) (FleetView, error) {
	var v FleetView
	u := base
	if !strings.HasSuffix(u, FleetJSONPath) {
		u = strings.TrimRight(u, "/") + FleetJSONPath
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return v, fmt.Errorf("fleet: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return v, fmt.Errorf("fleet: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return v, fmt.Errorf("fleet: %s: %s %s", u, resp.Status, msg)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxFleetJSON)).Decode(&v); err != nil {
		return v, fmt.Errorf("fleet: %s: %w", u, err)
	}
	return v, nil
}
