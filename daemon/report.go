package daemon

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode"
	"unicode/utf8"

	bolt "go.etcd.io/bbolt"

	"github.com/peerup/peerup/apply"
	"github.com/peerup/peerup/transfer"
)

// A status report is what a laptop tells the school server it updates from
// after each poll, fetch, apply, boot fallback or error (SPEC.md §18). It is
// unsigned and a hint for people: nothing anyone installs depends on it.

// ReportFormat is the version of the report's JSON.
const ReportFormat = 1

// Report bounds: a report's body, and its strings (in bytes).
const (
	MaxReportBytes = 4 << 10
	maxIDLen       = 64
	maxNameLen     = 64
	maxErrorLen    = 512
	maxBootTries   = 1000
)

// ReportPath is where a seed takes reports (POST).
const ReportPath = "/report"

// Report is one laptop's status, as sent.
type Report struct {
	Format int `json:"v"`
	// ID is random, made once per sysroot: laptops cloned from one image
	// share a host name and /etc/machine-id, but not their sysroot's state.
	ID       string `json:"id"`
	Name     string `json:"name"` // host name
	Image    string `json:"image"`
	Current  uint64 `json:"current"`
	Previous uint64 `json:"previous,omitempty"`
	Staged   uint64 `json:"staged,omitempty"`
	State    State  `json:"state"`
	Error    string `json:"error,omitempty"`
	// Bytes fetched since the sysroot's state was made: from the servers
	// the laptop reports to, and from every other peer (its neighbours).
	ServerBytes    uint64 `json:"server_bytes"`
	NeighbourBytes uint64 `json:"neighbour_bytes"`
	Held           uint64 `json:"held,omitempty"`
	Bad            uint64 `json:"bad,omitempty"` // the newest version marked bad
	FreeBytes      uint64 `json:"free_bytes"`
	// Trying is the version on probation and TriesLeft the boots it may
	// still start.
	Trying    uint64 `json:"trying,omitempty"`
	TriesLeft int    `json:"tries_left,omitempty"`
}

// FellBack reports whether a version newer than the one running failed its
// boot tries: the laptop fell back and stays behind until a newer one.
func (r Report) FellBack() bool { return r.Bad > r.Current }

// ErrReport is wrapped by every reason a report is refused.
var ErrReport = errors.New("bad status report")

// ParseReport reads and checks a report. Anything out of bounds is refused
// whole, so the fleet table only ever holds what its page can show.
func ParseReport(b []byte) (Report, error) {
	var r Report
	if len(b) > MaxReportBytes {
		return r, fmt.Errorf("%w: %d bytes, more than %d", ErrReport, len(b), MaxReportBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&r); err != nil {
		return Report{}, fmt.Errorf("%w: %w", ErrReport, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Report{}, fmt.Errorf("%w: data after the report", ErrReport)
	}
	if err := r.check(); err != nil {
		return Report{}, fmt.Errorf("%w: %w", ErrReport, err)
	}
	return r, nil
}

func (r Report) check() error {
	switch {
	case r.Format != ReportFormat:
		return fmt.Errorf("format %d, want %d", r.Format, ReportFormat)
	case len(r.ID) < 8 || len(r.ID) > maxIDLen || strings.Trim(r.ID, "0123456789abcdef") != "":
		return fmt.Errorf("id %.80q: want 8 to %d lowercase hex digits", r.ID, maxIDLen)
	case !printable(r.Name, maxNameLen):
		return fmt.Errorf("name %.80q: want at most %d printable bytes", r.Name, maxNameLen)
	case !printable(r.Image, maxNameLen):
		return fmt.Errorf("image %.80q: want at most %d printable bytes", r.Image, maxNameLen)
	case !printable(r.Error, maxErrorLen):
		return fmt.Errorf("error: want at most %d printable bytes", maxErrorLen)
	case !knownState(r.State):
		return fmt.Errorf("state %.40q: not a state", r.State)
	case r.TriesLeft < 0 || r.TriesLeft > maxBootTries:
		return fmt.Errorf("tries_left %d: want 0 to %d", r.TriesLeft, maxBootTries)
	}
	return nil
}

func knownState(s State) bool {
	switch s {
	case StateIdle, StatePolling, StateUpdateAvailable, StateFetching, StateUpdateReady, StateApplying, StateUpdateApplied, StateError:
		return true
	}
	return false
}

// printable: valid UTF-8, no control characters, at most max bytes.
func printable(s string, max int) bool {
	if len(s) > max || !utf8.ValidString(s) {
		return false
	}
	return strings.IndexFunc(s, unicode.IsControl) < 0
}

// clip makes s fit printable(s, max): what a laptop sends always parses.
func clip(s string, max int) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, strings.ToValidUTF8(s, "?"))
	for len(s) > max {
		_, n := utf8.DecodeLastRuneInString(s)
		s = s[:len(s)-n]
	}
	return s
}

// Report counters in the laptop's database.
const (
	counterServerBytes    = "server-bytes"
	counterNeighbourBytes = "neighbour-bytes"
	metaMachineID         = "machine-id"
)

// MachineID is the sysroot's random report id, made on first use.
func (d *DB) MachineID() (string, error) {
	var id string
	err := d.b.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketMeta)
		if v := bk.Get([]byte(metaMachineID)); len(v) > 0 {
			id = string(v)
			return nil
		}
		b := make([]byte, 16)
		rand.Read(b)
		id = hex.EncodeToString(b)
		return bk.Put([]byte(metaMachineID), []byte(id))
	})
	if err != nil {
		return "", fmt.Errorf("machine id: %w", err)
	}
	return id, nil
}

// reportInterval is how often a laptop with nothing to say reports anyway,
// so that the server does not take it for gone.
const reportInterval = time.Hour

// reporter sends a laptop's reports to its upstream servers. It observes
// the core: each time an operation settles (a poll, fetch or apply ends, or
// fails), it reports; reports are coalesced, so a slow server delays them
// but never the daemon.
type reporter struct {
	upstream []string // the configured peers' base URLs
	id, name string
	core     *Core
	db       *DB
	sys      *apply.Sysroot
	client   *http.Client
	kick     chan struct{}
	log      *slog.Logger
}

// newReporter reports to every configured HTTP peer (the school server),
// never to discovered ones, whose adverts anyone can forge. nil: no peer to
// report to.
func newReporter(cfg Config, db *DB, sys *apply.Sysroot, log *slog.Logger) (*reporter, error) {
	if cfg.NoReport {
		return nil, nil
	}
	var up []string
	for _, p := range cfg.Peers {
		if strings.HasPrefix(p, "http://") || strings.HasPrefix(p, "https://") {
			up = append(up, p)
		}
	}
	if len(up) == 0 {
		return nil, nil
	}
	id, err := db.MachineID()
	if err != nil {
		return nil, err
	}
	name, _ := os.Hostname()
	return &reporter{
		upstream: up, id: id, name: clip(name, maxNameLen), db: db, sys: sys, log: log,
		client: reportClient(),
		kick:   make(chan struct{}, 1),
	}, nil
}

// reportClient never takes a proxy, like every LAN source (SPEC.md §13),
// and gives up on a report after 10 s.
func reportClient() *http.Client {
	hc := transfer.DefaultHTTPClient()
	hc.Timeout = 10 * time.Second
	return hc
}

// PropsChanged reports when an operation settles.
func (r *reporter) PropsChanged(old, cur Props) {
	if settled(cur.State) && (!settled(old.State) || old.State != cur.State || old.CurrentVersion != cur.CurrentVersion ||
		old.HeldVersion != cur.HeldVersion || old.BadVersion != cur.BadVersion) {
		r.Kick()
	}
}

func (r *reporter) UpdateReady(uint64) {}

func settled(s State) bool {
	return s != StatePolling && s != StateFetching && s != StateApplying
}

// Kick asks for a report soon.
func (r *reporter) Kick() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// pulledHook is Options.Pulled for r (nil if r is).
func (r *reporter) pulledHook() func(*apply.PullResult) {
	if r == nil {
		return nil
	}
	return r.pulled
}

// start reports on core's behalf until ctx ends (nothing if r is nil).
func (r *reporter) start(ctx context.Context, core *Core, wg *sync.WaitGroup) {
	if r == nil {
		return
	}
	r.core = core
	core.Observe(r)
	wg.Add(1)
	go func() {
		defer wg.Done()
		r.run(ctx)
	}()
}

// pulled counts a staged pull's bytes by where they came from.
func (r *reporter) pulled(res *apply.PullResult) {
	var server, neighbours uint64
	for src, n := range res.Sources {
		switch {
		case r.isUpstream(src):
			server += uint64(n)
		case strings.HasPrefix(src, "http://") || strings.HasPrefix(src, "https://"):
			neighbours += uint64(n)
		}
	}
	if err := r.db.addCounters(map[string]uint64{counterServerBytes: server, counterNeighbourBytes: neighbours}); err != nil {
		r.log.Warn("count report bytes", "err", err)
	}
}

func (r *reporter) isUpstream(src string) bool {
	for _, u := range r.upstream {
		if strings.TrimSuffix(u, "/") == strings.TrimSuffix(src, "/") {
			return true
		}
	}
	return false
}

// addCounters adds to several counters in one transaction.
func (d *DB) addCounters(add map[string]uint64) error {
	return d.b.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketMeta)
		for name, n := range add {
			var cur uint64
			if v := bk.Get([]byte(name)); len(v) == 8 {
				cur = binary.BigEndian.Uint64(v)
			}
			if err := bk.Put([]byte(name), u64(cur+n)); err != nil {
				return err
			}
		}
		return nil
	})
}

// run reports at once (a fallback at boot shows when the daemon starts),
// then whenever kicked, and every reportInterval.
func (r *reporter) run(ctx context.Context) {
	t := time.NewTicker(reportInterval)
	defer t.Stop()
	r.Kick()
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.kick:
		case <-t.C:
		}
		rep := r.build()
		// A report is traffic like any other: on a metered connection it
		// goes to servers on the LAN alone.
		to, _ := r.core.lanOnly(r.upstream)
		for _, u := range to {
			if err := r.send(ctx, u, rep); err != nil {
				r.log.Debug("status report not taken", "server", u, "err", err)
			}
		}
	}
}

// build reads the laptop's status now.
func (r *reporter) build() Report {
	p := r.core.Props()
	st, _ := r.sys.Status()
	trying, left := r.sys.Probation()
	rep := Report{
		Format: ReportFormat, ID: r.id, Name: r.name, Image: clip(p.Image, maxNameLen),
		Current: p.CurrentVersion, Previous: p.PreviousVersion, Staged: st.Staged,
		State: p.State, Held: p.HeldVersion, Bad: p.BadVersion,
		ServerBytes: r.db.Counter(counterServerBytes), NeighbourBytes: r.db.Counter(counterNeighbourBytes),
		Trying: trying, TriesLeft: min(max(left, 0), maxBootTries),
	}
	if p.State == StateError {
		rep.Error = clip(p.ErrorMessage, maxErrorLen)
	}
	var fs syscall.Statfs_t
	if syscall.Statfs(r.sys.Dir(), &fs) == nil {
		rep.FreeBytes = fs.Bavail * uint64(fs.Bsize)
	}
	return rep
}

func (r *reporter) send(ctx context.Context, base string, rep Report) error {
	body, err := json.Marshal(rep)
	if err != nil {
		return err
	}
	u := strings.TrimSuffix(base, "/") + ReportPath
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := r.client.Do(req)
	if err != nil {
		return fmt.Errorf("report to %s: %w", u, err)
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("report to %s: %s", u, resp.Status)
	}
	return nil
}
