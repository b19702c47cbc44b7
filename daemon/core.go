package daemon

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/peerup/peerup/apply"
	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/manifest"
	"github.com/peerup/peerup/transfer"
)

// Policy says what the daemon does on its own when it finds an update.
type Policy string

// Policies (see peerup daemon --help).
const (
	PolicyAuto     Policy = "auto"     // fetch, stage and switch at once
	PolicyDownload Policy = "download" // fetch and stage, then wait for Apply
	PolicyNotify   Policy = "notify"   // only say that an update exists
)

// ParsePolicy checks a policy name.
func ParsePolicy(s string) (Policy, error) {
	switch p := Policy(s); p {
	case PolicyAuto, PolicyDownload, PolicyNotify:
		return p, nil
	}
	return "", fmt.Errorf("policy %q: want auto, download or notify", s)
}

// Props is what the daemon publishes about itself.
type Props struct {
	State            State
	Image            string
	CurrentVersion   uint64
	PreviousVersion  uint64
	AvailableVersion uint64
	DownloadSize     uint64
	DownloadedBytes  uint64
	ErrorName        string
	ErrorMessage     string
	PeerCount        uint32
	// HeldVersion: no version up to it is installed (a rollback or
	// peerup hold; 0: none). BadVersion: the newest version that failed
	// its boot tries (0: none).
	HeldVersion uint64
	BadVersion  uint64
	// SwitchPending: a link switch was interrupted or failed between its
	// renames; CurrentVersion and PreviousVersion are what its journal
	// will make them once the next operation (or boot) finishes it.
	SwitchPending bool
	// Of the update on offer, from its signed metadata (apply.Preview),
	// as eos-updater names them: set with update-available, cleared with
	// AvailableVersion.
	UpdateID         string
	UpdateLabel      string
	UpdateMessage    string
	Version          string // AvailableVersion, as text
	UnpackedSize     uint64
	FullDownloadSize uint64
	FullUnpackedSize uint64
	// Of the offer's rollout (SPEC.md §3), with AvailableVersion: the
	// share of machines it goes to, and whether this machine waits for
	// it to be raised (it fetches and stages, but does not apply).
	RolloutPercent uint32
	RolloutWaiting bool
	// Waiting says why the daemon holds back what its policy would do on
	// its own ("" if it does not; SPEC.md §11, "Respecting the laptop").
	Waiting string
}

// clearOffer drops what described the last offer and its fetch.
func (p *Props) clearOffer() {
	p.AvailableVersion, p.DownloadSize, p.DownloadedBytes = 0, 0, 0
	p.RolloutPercent, p.RolloutWaiting = 0, false
	p.clearPreview()
}

// clearPreview drops what a preview said of the offer.
func (p *Props) clearPreview() {
	p.UpdateID, p.UpdateLabel, p.UpdateMessage, p.Version = "", "", "", ""
	p.UnpackedSize, p.FullDownloadSize, p.FullUnpackedSize = 0, 0, 0
}

// setPreview shows what a preview learnt of the offer.
func (p *Props) setPreview(pv *apply.Preview) {
	p.UpdateID, p.UpdateLabel, p.UpdateMessage = pv.UpdateID, pv.Label, pv.Message
	p.Version = strconv.FormatUint(pv.Version, 10)
	p.DownloadSize, p.DownloadedBytes = uint64(pv.DownloadSize), 0
	p.UnpackedSize, p.FullDownloadSize, p.FullUnpackedSize = uint64(pv.UnpackedSize), uint64(pv.FullDownloadSize), uint64(pv.FullUnpackedSize)
}

// Observer hears of changes: the D-Bus service, tests.
type Observer interface {
	PropsChanged(old, cur Props)
	UpdateReady(version uint64)
}

// Options configure the core.
type Options struct {
	Sysroot *apply.Sysroot
	DB      *DB
	Trust   *manifest.Keyring
	Policy  Policy
	// Peers returns the sources to ask first, in order: volumes holding a
	// repo (as folder paths) and the configured peers.
	Peers func() []string
	// Discovered returns the peers discovery found. What they claim is
	// forgeable, so their order is not trusted: peers that answered a poll
	// before are asked first, the others in random order (askOrder).
	Discovered func() []string
	// OnApplied runs after a switch, to advertise and announce the new
	// version.
	OnApplied func(from, to uint64)
	// BanFor is how long a peer that served bad data is ignored (30 min).
	BanFor time.Duration
	// EncodingBudget and Memory are passed to every pull
	// (apply.PullOptions).
	EncodingBudget int64
	Memory         apply.Memory
	// Open opens a peer's repo (a URL or a folder) to poll and fetch from
	// (default apply.OpenSource); the daemon's gives URLs its download
	// budget.
	Open func(loc string) (apply.Source, error)
	// Helpers, if set, lists neighbours whose own pulls may lend objects
	// (apply.PullOptions.Helpers).
	Helpers func() []apply.Haver
	// Pulled, if set, hears of each staged pull (the status report counts
	// its bytes by source).
	Pulled func(*apply.PullResult)
	// Entries refuses kinds of entry this node never installs.
	Entries apply.EntryPolicy
	// Metrics, if set, counts fetches and applies (SPEC.md §11).
	Metrics *Metrics
	// Conditions hold back applying, and fetching beyond the LAN, as the
	// laptop's power, connection and hours ask (policy.go).
	Conditions Conditions
	// Now is the clock the conditions read (default time.Now).
	Now func() time.Time
	Log *slog.Logger
}

// Core is the daemon's state machine.
type Core struct {
	o   Options
	ctx context.Context // the daemon's lifetime

	mu     sync.Mutex
	props  Props
	offers []offer // versions peers offer, newest first; AvailableVersion is the first
	cancel context.CancelCauseFunc
	obs    []Observer
	wg     sync.WaitGroup
	closed bool // no new operation may start
	hinted bool // a peer reported something while an operation ran
	pol    policyState
}

// offer is a version newer than current and the peers whose index lists it.
type offer struct {
	v    uint64
	urls []string
}

// errCancelled is the cause given to an operation's context by Cancel.
var errCancelled = errors.New("cancelled by request")

// NewCore makes a core in state idle, reading the sysroot's versions.
func NewCore(ctx context.Context, o Options) (*Core, error) {
	if o.BanFor == 0 {
		o.BanFor = 30 * time.Minute
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Peers == nil {
		o.Peers = func() []string { return nil }
	}
	if o.Discovered == nil {
		o.Discovered = func() []string { return nil }
	}
	if o.Open == nil {
		o.Open = apply.OpenSource
	}
	c := &Core{o: o, ctx: ctx}
	c.props.State = StateIdle
	if err := c.readSysroot(&c.props); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Core) readSysroot(p *Props) error {
	st, err := c.o.Sysroot.Status()
	if err != nil {
		return err
	}
	p.Image, p.CurrentVersion, p.PreviousVersion = st.Image, st.Current, st.Previous
	p.HeldVersion, p.BadVersion, p.SwitchPending = st.Held, 0, st.Pending != nil
	for _, v := range st.Bad {
		p.BadVersion = max(p.BadVersion, v)
	}
	return nil
}

// Observe adds an observer.
func (c *Core) Observe(o Observer) {
	c.mu.Lock()
	c.obs = append(c.obs, o)
	c.mu.Unlock()
}

// Props returns the current properties.
func (c *Core) Props() Props {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.props
}

// update changes the properties under the lock and tells the observers
// outside it, in order.
func (c *Core) update(f func(p *Props)) {
	c.mu.Lock()
	old := c.props
	f(&c.props)
	c.unlockAndNotify(old)
}

// unlockAndNotify releases the core's lock and tells the observers how the
// properties changed since old, outside the lock.
func (c *Core) unlockAndNotify(old Props) {
	cur := c.props
	obs := append([]Observer(nil), c.obs...)
	c.mu.Unlock()
	if old != cur {
		for _, o := range obs {
			o.PropsChanged(old, cur)
		}
	}
}

func (c *Core) setState(s State) { c.update(func(p *Props) { p.State = s }) }

// cancelled ends an operation a client cancelled as eos-updater does: in
// state error, named org.peerup.Updater1.Error.Cancelled, so the desktop
// can tell it from a failure; a Poll starts again.
func (c *Core) cancelled(m Method) {
	c.o.Log.Info("cancelled by request", "operation", m)
	c.update(func(p *Props) {
		p.State, p.ErrorName, p.ErrorMessage = StateError, ErrorCancelled, fmt.Sprintf("%s cancelled by request", m)
	})
}

func (c *Core) fail(name string, err error) {
	c.o.Log.Warn("update failed", "error", name, "err", err)
	c.update(func(p *Props) {
		p.State, p.ErrorName, p.ErrorMessage = StateError, name, err.Error()
		// What the failure left, as status reads it: a switch pending
		// is reported as the state its journal will produce.
		c.readSysroot(p)
	})
}

// begin checks the state and moves to a busy one, atomically, so two callers
// cannot both start an operation.
func (c *Core) begin(m Method, busy State) (context.Context, error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, errors.New("the updater is shutting down")
	}
	if err := check(m, c.props.State); err != nil {
		c.mu.Unlock()
		return nil, err
	}
	ctx, cancel := context.WithCancelCause(c.ctx)
	c.cancel = cancel
	old := c.props
	c.props.State = busy
	if busy != StateApplying {
		c.props.ErrorName, c.props.ErrorMessage = "", ""
	}
	c.props.Waiting = ""
	cur := c.props
	obs := append([]Observer(nil), c.obs...)
	c.wg.Add(1)
	c.mu.Unlock()
	for _, o := range obs {
		o.PropsChanged(old, cur)
	}
	return ctx, nil
}

func (c *Core) end() {
	c.mu.Lock()
	c.cancel = nil
	c.mu.Unlock()
	c.wg.Done()
}

// run runs an operation, ends it, then takes the step the policy asks for
// next, through the same state checks as a client's call.
func (c *Core) run(ctx context.Context, op func(context.Context) func() error) {
	next := op(ctx)
	c.end()
	if next != nil {
		err := next()
		if err == nil {
			return // that operation's run takes up any hint when it ends
		}
		c.o.Log.Debug("policy step not taken", "err", err)
	}
	// A peer reported something while this operation ran (say, the server
	// announcing a version while a poll waited on forged peers): ask again
	// now rather than wait for the next report.
	c.mu.Lock()
	hinted := c.hinted
	c.hinted = false
	c.mu.Unlock()
	if hinted {
		if err := c.Poll(); err != nil {
			c.o.Log.Debug("poll after a hint not taken", "err", err)
		}
	}
}

// Wait refuses new operations and blocks until the running one ends (for
// shutdown). Refusing first matters: a finishing operation may start the
// next one its policy asks for.
func (c *Core) Wait() {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.wg.Wait()
}

// Poll asks the peers for a newer version, in the background.
func (c *Core) Poll() error {
	return c.start(MethodPoll, StatePolling, c.poll)
}

// Fetch fetches and stages the available version, in the background.
func (c *Core) Fetch() error {
	return c.start(MethodFetch, StateFetching, c.fetch)
}

// Apply switches to the staged version, in the background, unless its
// publisher has not rolled it out to this machine yet.
func (c *Core) Apply() error {
	if err := c.checkRollout(); err != nil {
		return err
	}
	return c.start(MethodApply, StateApplying, c.apply)
}

// start begins a background operation. Asking for the operation that is
// already running joins it rather than failing: a "peerup check" typed
// while the daemon polls on its own wants that poll's answer, not an error.
func (c *Core) start(m Method, busy State, op func(context.Context) func() error) error {
	ctx, err := c.begin(m, busy)
	if err != nil {
		var ws *WrongStateError
		if errors.As(err, &ws) && ws.State == busy {
			return nil
		}
		return err
	}
	go c.run(ctx, op)
	return nil
}

// Rollback swaps current and previous. It is quick, so it runs at once.
func (c *Core) Rollback() error {
	_, err := c.begin(MethodRollback, StateApplying)
	if err != nil {
		return err
	}
	defer c.end()
	r, err := c.o.Sysroot.RollbackDetail()
	if err != nil {
		c.fail(ErrorRollback, err)
		return err
	}
	switch {
	case r.Already && r.Finished:
		c.o.Log.Info("finished an interrupted rollback", "from", r.From, "to", r.To)
	case r.Already:
		c.o.Log.Info("already rolled back: nothing switched", "current", r.To, "previous", r.From)
	default:
		c.o.Log.Info("rolled back", "from", r.From, "to", r.To)
	}
	c.update(func(p *Props) {
		c.readSysroot(p)
		p.State = StateIdle
		p.clearOffer()
	})
	if c.o.OnApplied != nil && (!r.Already || r.Finished) {
		c.o.OnApplied(r.From, r.To)
	}
	return nil
}

// MarkGood ends the probation of the version this boot started, as
// peerup mark-good does: a desktop that has seen the session come up well
// can say so.
func (c *Core) MarkGood() error {
	return c.editBoot(MethodMarkGood, func(s *apply.Sysroot) error {
		v, err := s.MarkGood(apply.BootedVersion(apply.BootedFile))
		if err == nil {
			c.o.Log.Info("marked good", "version", v)
		}
		return err
	})
}

// Hold keeps every version up to v from being fetched or applied.
func (c *Core) Hold(v uint64) error {
	return c.editBoot(MethodHold, func(s *apply.Sysroot) error { return s.Hold(v) })
}

// Unhold lifts the hold.
func (c *Core) Unhold() error {
	return c.editBoot(MethodUnhold, func(s *apply.Sysroot) error { return s.Unhold() })
}

// UnmarkBad lets version v, which failed its boot tries, be installed again.
func (c *Core) UnmarkBad(v uint64) error {
	return c.editBoot(MethodUnmarkBad, func(s *apply.Sysroot) error { return s.UnmarkBad(v) })
}

// editBoot runs a quick edit of the boot state in a state that allows m,
// leaving the state as it is and the properties read again. The core's
// lock is held throughout, so no operation starts meanwhile.
func (c *Core) editBoot(m Method, edit func(*apply.Sysroot) error) error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return errors.New("the updater is shutting down")
	}
	if err := check(m, c.props.State); err != nil {
		c.mu.Unlock()
		return err
	}
	err := edit(c.o.Sysroot)
	old := c.props
	if rerr := c.readSysroot(&c.props); err == nil {
		err = rerr
	}
	if err == nil && c.props.State == StateUpdateAvailable && c.o.Sysroot.Refusal(c.props.AvailableVersion) != nil {
		// A version now held is no longer on offer. One already staged
		// stays update-ready: applying it is left to whoever asks.
		c.props.State = StateIdle
		c.props.clearOffer()
	}
	c.unlockAndNotify(old)
	return err
}

// Cancel stops a poll or a fetch. What a fetch verified is kept.
func (c *Core) Cancel() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := check(MethodCancel, c.props.State); err != nil {
		return err
	}
	if c.cancel != nil {
		c.cancel(errCancelled)
	}
	return nil
}

// Hint tells the core that a peer may have something newer (a discovery
// event). It starts a poll if the daemon is idle, or once the running
// operation ends.
func (c *Core) Hint() {
	// Marked first: the poll that starts now clears it, and an operation
	// running now sees it when it ends and polls then.
	c.mu.Lock()
	c.hinted = true
	c.mu.Unlock()
	if err := c.Poll(); err != nil {
		c.o.Log.Debug("hint deferred until the running operation ends", "state", c.Props().State)
	}
}

// candidates are the peers to ask, in the order to ask them, minus banned
// ones.
func (c *Core) candidates() []string {
	now := time.Now()
	var answered map[string]bool
	if recs, err := c.o.DB.Peers(now.Add(-answeredWithin)); err == nil {
		answered = make(map[string]bool, len(recs))
		for _, r := range recs {
			answered[r.URL] = true
		}
	}
	return askOrder(c.pollPeers(), c.o.Discovered(), answered, func(u string) bool { return c.o.DB.Banned(u, now) }, rand.Shuffle)
}

// answeredWithin is how recent a peer's last answer must be for it to be
// asked before the discovered peers nobody has heard from.
const answeredWithin = 24 * time.Hour

// askOrder is the order a poll asks its peers in: the configured sources as
// given, then discovered peers that answered a poll before, then the other
// discovered peers shuffled. Discovered peers are ordered by nothing they
// claim: a flood of forged adverts claiming newer versions must not push
// the honest peers to the back of a poll that asks 32 at a time for 10 s.
func askOrder(first, discovered []string, answered map[string]bool, banned func(string) bool, shuffle func(int, func(int, int))) []string {
	var out, known, rest []string
	seen := map[string]bool{}
	take := func(u string) bool {
		if seen[u] || banned(u) {
			return false
		}
		seen[u] = true
		return true
	}
	for _, u := range first {
		if take(u) {
			out = append(out, u)
		}
	}
	for _, u := range discovered {
		switch {
		case !take(u):
		case answered[u]:
			known = append(known, u)
		default:
			rest = append(rest, u)
		}
	}
	shuffle(len(rest), func(i, j int) { rest[i], rest[j] = rest[j], rest[i] })
	return append(append(out, known...), rest...)
}

// Polling bounds: a poll asks this many peers at once and waits this long
// in all, so a table full of forged peers at addresses nobody answers on
// (each costing a connect timeout) delays a poll by seconds, not minutes.
const (
	pollConcurrency = 32
	pollTimeout     = 10 * time.Second
)

// askAll fetches every peer's index, pollConcurrency at a time in the
// peers' order, within pollTimeout, and returns them, or each one's error,
// in that order. One peer's failure does not stop the others.
func askAll(ctx context.Context, open func(string) (apply.Source, error), peers []string) ([]*blobstore.Index, []error) {
	ctx, cancel := context.WithTimeout(ctx, pollTimeout)
	defer cancel()
	indexes, errs := make([]*blobstore.Index, len(peers)), make([]error, len(peers))
	var g errgroup.Group
	g.SetLimit(pollConcurrency)
	for i, u := range peers {
		if ctx.Err() != nil {
			errs[i] = fmt.Errorf("%s: not asked: %w", u, context.Cause(ctx))
			continue
		}
		g.Go(func() error {
			cl, err := open(u)
			if err != nil {
				errs[i] = err
				return nil
			}
			indexes[i], errs[i] = cl.Index(ctx)
			return nil
		})
	}
	g.Wait()
	return indexes, errs
}

func (c *Core) poll(ctx context.Context) func() error {
	c.mu.Lock()
	c.hinted = false // this poll answers every hint so far
	c.mu.Unlock()
	peers := c.candidates()
	c.update(func(p *Props) { p.PeerCount = uint32(len(peers)) })
	cur := c.Props()
	indexes, errs := askAll(ctx, c.o.Open, peers)
	sel := selectOffers(peers, indexes, errs, cur.Image, cur.CurrentVersion, func(v uint64) bool { return c.o.Sysroot.Refusal(v) != nil }, time.Now())
	records := sel.records
	if len(records) > 0 {
		if err := c.o.DB.SavePeers(records); err != nil {
			c.o.Log.Warn("save peers", "err", err)
		}
	}
	c.o.DB.SetLastPoll(time.Now())
	if context.Cause(ctx) == errCancelled {
		c.cancelled(MethodPoll)
		return nil
	}
	if len(sel.groups) == 0 {
		if sel.lastErr != nil && len(records) == 0 {
			c.fail(ErrorPoll, fmt.Errorf("no peer answered: %w", sel.lastErr))
			return nil
		}
		// Nothing on offer: what an earlier offer or fetch left in the
		// properties no longer describes anything.
		c.update(func(p *Props) {
			p.State = StateIdle
			p.clearOffer()
			p.Waiting = c.pollWait()
		})
		return nil
	}
	// Versions their publisher withdrew are no offer: the preview, which
	// reads the signed withdrawn list, says so, and the next newest is.
	groups := sel.groups
	var pv *apply.Preview
	for len(groups) > 0 {
		var err error
		if pv, err = c.preview(ctx, groups[0].v, groups[0].urls); !errors.Is(err, apply.ErrWithdrawn) {
			break
		}
		c.o.Log.Info("skipping a withdrawn version", "version", groups[0].v)
		// Its peers may hold an older version that is not withdrawn: the
		// pull's own rule (version 0: the newest it may take) finds it.
		urls := groups[0].urls
		groups = groups[1:]
		older, err := c.preview(ctx, 0, urls)
		if err != nil {
			continue
		}
		groups = addOffer(groups, older.Version, urls)
		if groups[0].v == older.Version {
			pv = older
			break
		}
	}
	if len(groups) == 0 {
		c.update(func(p *Props) {
			p.State = StateIdle
			p.clearOffer()
		})
		return nil
	}
	best, urls := groups[0].v, groups[0].urls
	c.mu.Lock()
	c.offers = groups
	c.mu.Unlock()
	rs := c.rollout(cmp.Or(cur.Image, sel.image), best)
	c.update(func(p *Props) {
		if p.AvailableVersion != best {
			// Progress of a fetch of another version says nothing of this one.
			p.clearOffer()
		}
		p.setRollout(rs)
		p.State, p.AvailableVersion = StateUpdateAvailable, best
		if pv != nil {
			p.setPreview(pv)
		}
		if p.Image == "" {
			p.Image = sel.image
		}
	})
	c.o.Log.Info("update available", "version", best, "peers", len(urls))
	if c.o.Policy == PolicyAuto || c.o.Policy == PolicyDownload {
		return c.Fetch
	}
	return nil
}

// preview learns from the first peer that can give it what fetching
// version v would cost (nil if none can: the offer stands, and the fetch
// finds out), or that v is withdrawn (ErrWithdrawn).
func (c *Core) preview(ctx context.Context, v uint64, urls []string) (*apply.Preview, error) {
	var lastErr error
	for _, u := range urls {
		src, err := c.o.Open(u)
		if err != nil {
			continue
		}
		pv, err := c.o.Sysroot.Preview(ctx, src, apply.PullOptions{Version: v, Trust: c.o.Trust, Log: c.o.Log, Memory: c.o.Memory, Policy: c.o.Entries})
		if err == nil || errors.Is(err, apply.ErrWithdrawn) {
			return pv, err
		}
		lastErr = err
		c.o.Log.Info("could not preview the update", "version", v, "peer", u, "err", err)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, lastErr
}

// addOffer adds the peers urls as offering version v to groups, newest
// first.
func addOffer(groups []offer, v uint64, urls []string) []offer {
	i, found := slices.BinarySearchFunc(groups, v, func(g offer, v uint64) int { return cmp.Compare(v, g.v) })
	if found {
		groups[i].urls = append(groups[i].urls, urls...)
		return groups
	}
	return slices.Insert(groups, i, offer{v: v, urls: urls})
}

// selection is what a poll learnt: the versions on offer and the peers it
// heard from.
type selection struct {
	groups  []offer      // versions newer than current, newest first
	image   string       // the image the newest offer is of
	records []PeerRecord // every peer that listed the image
	lastErr error        // the last peer's error, if any failed
}

// selectOffers reads the peers' indexes (or errors, in the peers' order):
// every version of image newer than current and not refused (marked bad,
// or held) is an offer. A node that has no image yet takes a peer's only one. The highest
// version wins; among its peers, discovery's order is kept. Lower ones are
// kept as fallbacks: a peer can list a version it does not have (the index
// is unsigned), and a liar must not freeze the laptop below what honest
// peers offer.
func selectOffers(peers []string, indexes []*blobstore.Index, errs []error, image string, current uint64, bad func(uint64) bool, now time.Time) selection {
	type found struct {
		url string
		v   uint64
		img string
	}
	var sel selection
	var offers []found
	for i, u := range peers {
		ix, err := indexes[i], errs[i]
		if err != nil {
			sel.lastErr = err
			continue
		}
		img := image
		if img == "" && len(ix.Images()) == 1 {
			img = ix.Images()[0]
		}
		if e, ok := ix.Latest(img); ok {
			sel.records = append(sel.records, PeerRecord{URL: u, Image: img, Version: e.Version, Source: "poll", LastSeen: now})
			if e.Version > current && !bad(e.Version) {
				offers = append(offers, found{u, e.Version, img})
			}
		}
	}
	sort.SliceStable(offers, func(i, j int) bool { return offers[i].v > offers[j].v })
	for _, f := range offers {
		if len(sel.groups) == 0 || sel.groups[len(sel.groups)-1].v != f.v {
			sel.groups = append(sel.groups, offer{v: f.v})
		}
		g := &sel.groups[len(sel.groups)-1]
		g.urls = append(g.urls, f.url)
	}
	if len(offers) > 0 {
		sel.image = offers[0].img
	}
	return sel
}

// fetch pulls the newest version offered; if every peer offering it fails,
// it falls back to the next newest, so peers listing versions they cannot
// serve, or serving them badly, cannot keep the laptop where it is.
func (c *Core) fetch(ctx context.Context) func() error {
	c.mu.Lock()
	groups := append([]offer(nil), c.offers...)
	c.mu.Unlock()
	var lastErr error
	for _, g := range groups {
		if g.v != c.Props().AvailableVersion {
			c.o.Log.Warn("falling back to an older offered version", "version", g.v, "err", lastErr)
			c.update(func(p *Props) {
				p.clearOffer()
				p.AvailableVersion = g.v
			})
		}
		next, done, err := c.fetchVersion(ctx, g.v, g.urls)
		if done {
			return next
		}
		lastErr = err
		if ctx.Err() != nil {
			break
		}
	}
	if context.Cause(ctx) == errCancelled {
		c.cancelled(MethodFetch)
		return nil
	}
	if lastErr == nil {
		lastErr = errors.New("no peer offers it any more")
	}
	c.fail(ErrorFetch, fmt.Errorf("fetch version %d: %w", c.Props().AvailableVersion, lastErr))
	return nil
}

// ProgressInterval is the shortest time between two changes of
// DownloadedBytes during a fetch.
const ProgressInterval = 250 * time.Millisecond

// fetchVersion pulls version want from the peers offering it, each in turn
// as the primary with the others as a swarm. done reports success.
func (c *Core) fetchVersion(ctx context.Context, want uint64, peers []string) (next func() error, done bool, lastErr error) {
	c.update(func(p *Props) { p.DownloadedBytes = 0 })
	var lastPersist, lastLogged, lastShown time.Time
	var persisted, latest, latestTotal int64
	var pmu sync.Mutex
	var later *time.Timer // shows the latest count once the interval is up
	show := func() {      // pmu held
		lastShown = time.Now()
		done, total := latest, latestTotal
		c.update(func(p *Props) {
			if p.State != StateFetching {
				return // the fetch has ended, and said what it got
			}
			// A part refetched counts twice in done: never past the total.
			p.DownloadedBytes = max(p.DownloadedBytes, uint64(min(done, total)))
			if p.DownloadSize == 0 {
				p.DownloadSize = uint64(total) // no preview said
			}
		})
	}
	defer func() {
		pmu.Lock()
		if later != nil {
			later.Stop()
		}
		pmu.Unlock()
	}()
	progress := func(done, total int64) {
		pmu.Lock()
		defer pmu.Unlock()
		latest, latestTotal = max(latest, done), total
		// The pull reports every read; a desktop needs a few a second, and
		// the last count before a stall must show too.
		if wait := ProgressInterval - time.Since(lastShown); wait <= 0 || done >= total {
			show()
		} else if later == nil {
			later = time.AfterFunc(wait, func() {
				pmu.Lock()
				defer pmu.Unlock()
				later = nil
				show()
			})
		}
		if time.Since(lastLogged) >= time.Second {
			lastLogged = time.Now()
			c.o.Log.Debug("fetch progress", "version", want, "done", done, "total", total)
		}
		// The fetched-bytes counter is durable but written at most once a
		// second: every bbolt commit costs two fsyncs.
		if time.Since(lastPersist) > time.Second && done > persisted {
			c.o.DB.AddCounter("fetched-bytes", uint64(done-persisted))
			persisted, lastPersist = done, time.Now()
		}
	}
	// Every peer offering the version serves objects at once (a swarm); the
	// first one that answers also gives the manifest and indexes.
	var clients []apply.Source
	var urls []string
	peers, _ = c.lanOnly(peers)
	for _, u := range peers {
		src, err := c.o.Open(u)
		if err != nil {
			continue
		}
		clients = append(clients, src)
		urls = append(urls, u)
	}
	for i, cl := range clients {
		u := urls[i]
		others := append(append([]apply.Source(nil), clients[:i]...), clients[i+1:]...)
		began := time.Now()
		res, err := c.o.Sysroot.Pull(ctx, cl, apply.PullOptions{Version: want, Trust: c.o.Trust, Progress: progress, Log: c.o.Log, EncodingBudget: c.o.EncodingBudget, Memory: c.o.Memory, Peers: others, Helpers: c.o.Helpers, Policy: c.o.Entries})
		if err == nil {
			c.o.Metrics.fetched(res, u, time.Since(began))
			pmu.Lock()
			if res.FetchedBytes > persisted {
				c.o.DB.AddCounter("fetched-bytes", uint64(res.FetchedBytes-persisted))
			}
			pmu.Unlock()
			c.o.Log.Info("update staged", "version", want, "from", u, "fetched", res.FetchedBytes, "patches", res.PatchObjects, "from_neighbours", res.NeighbourBytes, "sources", res.Sources)
			if c.o.Pulled != nil {
				c.o.Pulled(res)
			}
			rs := c.rollout(res.Image, want)
			c.update(func(p *Props) {
				p.State = StateUpdateReady
				p.DownloadedBytes, p.DownloadSize = uint64(res.FetchedBytes), uint64(res.FetchedBytes)
				p.setRollout(rs)
			})
			c.mu.Lock()
			obs := append([]Observer(nil), c.obs...)
			c.mu.Unlock()
			for _, o := range obs {
				o.UpdateReady(want)
			}
			if c.o.Policy == PolicyAuto && rs.In {
				return c.autoApply, true, nil
			}
			if !rs.In {
				c.o.Log.Info("update staged, but not rolled out to this machine yet: not applying it", "version", want, "rollout", rs.String())
			}
			return nil, true, nil
		}
		if ctx.Err() != nil {
			return nil, false, err
		}
		lastErr = err
		if blame(err) {
			c.o.Log.Warn("banning peer that served bad data", "peer", u, "err", err)
			c.o.DB.Ban(u, time.Now().Add(c.o.BanFor))
		}
	}
	return nil, false, lastErr
}

// blame reports whether a failed pull is the primary peer's fault: bad
// data, a bad or revoked signature, a stalled transfer, an old manifest
// offered as new, or a version its own index listed but it could not serve.
func blame(err error) bool {
	for _, e := range []error{transfer.ErrPeer, transfer.ErrNotFound, manifest.ErrBadSignature, manifest.ErrUntrustedKey,
		manifest.ErrRevokedKey, manifest.ErrFormat, apply.ErrNotNewer, apply.ErrExpired} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

func (c *Core) apply(ctx context.Context) func() error {
	began := time.Now()
	from, to, err := c.o.Sysroot.Switch(c.Props().AvailableVersion)
	if err != nil && !errors.Is(err, apply.ErrPrune) {
		c.fail(ErrorApply, err)
		return nil
	}
	c.o.Metrics.applied(time.Since(began))
	c.o.Log.Info("update applied", "from", from, "to", to)
	if err != nil {
		// The switch stands; the next apply prunes again.
		c.o.Log.Warn("remove old tree", "err", err)
	}
	c.update(func(p *Props) {
		c.readSysroot(p)
		p.State = StateUpdateApplied
		p.clearOffer()
	})
	if c.o.OnApplied != nil {
		c.o.OnApplied(from, to)
	}
	return nil
}
