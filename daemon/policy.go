package daemon

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"sync"
	"time"

	"github.com/peerup/peerup/apply"
)

// ApplyOn says when policy auto switches to a version it staged.
type ApplyOn string

// When to apply (apply-on).
const (
	// ApplyOnNow switches as soon as the conditions allow (the update
	// window, the battery).
	ApplyOnNow ApplyOn = "now"
	// ApplyOnShutdown leaves the switch to the shutdown unit
	// (peerup-apply-on-shutdown.service, running peerup apply-staged), so
	// no one sees the new version before the next boot.
	ApplyOnShutdown ApplyOn = "shutdown"
)

// ParseApplyOn checks an apply-on value.
func ParseApplyOn(s string) (ApplyOn, error) {
	switch a := ApplyOn(s); a {
	case ApplyOnNow, ApplyOnShutdown:
		return a, nil
	}
	return "", fmt.Errorf("apply-on %q: want now or shutdown", s)
}

// Conditions are what the daemon respects before acting on its own
// (SPEC.md §11, "Respecting the laptop"). They hold back what the policy
// would do by itself, never what a client asks for: a user's Apply is
// theirs to make.
type Conditions struct {
	ApplyOn ApplyOn
	// Windows are when it may apply (none: any time).
	Windows Windows
	// BatteryFloor is the charge, in percent, below which it does not
	// apply on battery (0: no floor).
	BatteryFloor int
	// Host tells the power and the connection (nil: no restriction).
	Host Host
}

// reconsiderEvery is how often the daemon looks again at what it waits
// for, beside the changes UPower and NetworkManager signal: a window opens
// on the clock, and a suspended laptop's timers do not count the night.
const reconsiderEvery = time.Minute

// hostTimeout bounds one question to UPower or NetworkManager, or one
// name lookup: a wedged service means no restriction, not a stuck daemon.
const hostTimeout = 2 * time.Second

// policyState is what the conditions remember between decisions.
type policyState struct {
	mu sync.Mutex
	// leftOut: the last poll left out peers beyond the LAN on a metered
	// connection, so the end of metering polls again.
	leftOut bool
}

// now is the daemon's clock (Options.Now, for tests).
func (c *Core) now() time.Time {
	if c.o.Now != nil {
		return c.o.Now()
	}
	return time.Now()
}

// applyHold says why the policy may not switch now, or "" if it may.
func (c *Core) applyHold(ctx context.Context) string {
	cd := c.o.Conditions
	if cd.ApplyOn == ApplyOnShutdown {
		return "applies at shutdown"
	}
	if now := c.now(); !cd.Windows.Contains(now) {
		return fmt.Sprintf("outside the update window (opens %s)", cd.Windows.NextOpen(now).Format("Mon 15:04"))
	}
	if cd.BatteryFloor > 0 && cd.Host != nil {
		ctx, cancel := context.WithTimeout(ctx, hostTimeout)
		defer cancel()
		p, err := cd.Host.Power(ctx)
		if err != nil {
			c.o.Log.Debug("no word from UPower: no battery rule", "err", err)
		} else if p.OnBattery && p.Present && p.Percentage < float64(cd.BatteryFloor) {
			return fmt.Sprintf("on battery (%d%% < %d%%)", int(math.Floor(p.Percentage)), cd.BatteryFloor)
		}
	}
	return ""
}

// autoApply is policy auto's step after a fetch: apply now, or say why
// not and wait for Reconsider.
func (c *Core) autoApply() error {
	why := c.applyHold(c.ctx)
	if why == "" {
		return c.Apply()
	}
	c.o.Log.Info("update staged; waiting to apply", "why", why)
	c.update(func(p *Props) {
		if p.State == StateUpdateReady {
			p.Waiting = why
		}
	})
	return nil
}

// Reconsider looks again at what the daemon waits for: it applies a
// staged version whose conditions now allow it, and polls again when a
// metered connection that kept it from peers beyond the LAN has ended.
func (c *Core) Reconsider() {
	p := c.Props()
	if c.o.Policy == PolicyAuto && p.State == StateUpdateReady && p.Waiting != "" {
		if err := c.autoApply(); err != nil {
			c.o.Log.Debug("apply not started", "err", err)
		}
		return
	}
	c.pol.mu.Lock()
	leftOut := c.pol.leftOut
	c.pol.mu.Unlock()
	if leftOut && !busy(p.State) && !c.metered() {
		c.o.Log.Info("the connection is no longer metered: polling every peer")
		c.Hint()
	}
}

// metered reports whether the connection costs by the byte.
func (c *Core) metered() bool {
	h := c.o.Conditions.Host
	if h == nil {
		return false
	}
	ctx, cancel := context.WithTimeout(c.ctx, hostTimeout)
	defer cancel()
	m, err := h.Metered(ctx)
	if err != nil {
		c.o.Log.Debug("no word from NetworkManager: not metered", "err", err)
		return false
	}
	return m
}

// lanOnly is locs less, on a metered connection, the sources beyond the
// LAN (isLAN); left says whether any were left out.
func (c *Core) lanOnly(locs []string) (kept []string, left bool) {
	if len(locs) == 0 || !c.metered() {
		return locs, false
	}
	discovered := c.o.Discovered()
	for _, loc := range locs {
		ctx, cancel := context.WithTimeout(c.ctx, hostTimeout)
		lan := slices.Contains(discovered, loc) || isLAN(ctx, loc, net.DefaultResolver)
		cancel()
		if lan {
			kept = append(kept, loc)
		} else {
			c.o.Log.Debug("metered connection: not asking a peer beyond the LAN", "peer", loc)
			left = true
		}
	}
	return kept, left
}

// pollPeers is Options.Peers as a poll asks them: on a metered connection,
// those on the LAN alone. It remembers whether it left any out, for the
// wait's reason and for Reconsider.
func (c *Core) pollPeers() []string {
	kept, left := c.lanOnly(c.o.Peers())
	c.pol.mu.Lock()
	c.pol.leftOut = left
	c.pol.mu.Unlock()
	return kept
}

// pollWait is why a poll that found nothing waits, or "".
func (c *Core) pollWait() string {
	c.pol.mu.Lock()
	defer c.pol.mu.Unlock()
	if c.pol.leftOut {
		return "metered connection, no LAN peer offers an update"
	}
	return ""
}

// resolver is what isLAN needs of net.Resolver.
type resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// isLAN reports whether a source is on the LAN, where fetching costs a
// metered connection nothing: a folder (a USB stick), or a URL whose host
// is, or resolves only to, private, link-local or loopback addresses. A
// name that does not resolve is not on the LAN.
func isLAN(ctx context.Context, loc string, r resolver) bool {
	u, err := url.Parse(loc)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") {
		return err == nil && u.Scheme == "" // a folder
	}
	host := u.Hostname()
	if a, err := netip.ParseAddr(host); err == nil {
		return lanAddr(a)
	}
	addrs, err := r.LookupNetIP(ctx, "ip", host)
	if err != nil || len(addrs) == 0 {
		return false
	}
	for _, a := range addrs {
		if !lanAddr(a) {
			return false
		}
	}
	return true
}

// lanAddr is the one rule for a LAN address: private, link-local or
// loopback. Metered fetching and the fleet page both go by it.
func lanAddr(a netip.Addr) bool {
	a = a.Unmap()
	return a.IsPrivate() || a.IsLoopback() || a.IsLinkLocalUnicast()
}

// watchConditions makes the core reconsider when the host's power or
// connection changes, and every reconsiderEvery, until ctx ends.
func (d *Daemon) watchConditions(ctx context.Context) {
	if d.host != nil {
		go d.host.watch(ctx, d.Core.Reconsider, d.log)
	}
	t := time.NewTicker(reconsiderEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			d.Core.Reconsider()
		}
	}
}

// conditions reads the config's rules for acting on its own.
func conditions(cfg Config, host *systemBus) (Conditions, error) {
	on, err := ParseApplyOn(cfg.ApplyOn)
	if err != nil {
		return Conditions{}, err
	}
	ws, err := ParseWindows(cfg.ApplyWindows)
	if err != nil {
		return Conditions{}, err
	}
	floor := *cfg.BatteryFloorPercent
	if floor < 0 || floor > 100 {
		return Conditions{}, fmt.Errorf("battery-floor-percent %d: want 0 (no floor) to 100", floor)
	}
	cd := Conditions{ApplyOn: on, Windows: ws, BatteryFloor: floor}
	if host != nil {
		cd.Host = host
	}
	return cd, nil
}

// ApplyStaged is what the shutdown unit runs (peerup apply-staged): under
// policy auto with apply-on "shutdown", it switches to the version the
// daemon staged, as the laptop goes down, so the next boot starts it and no
// lesson sees the change. The update window and the battery do not hold it
// back: the switch is a few renames. It leaves the old tree for the
// daemon's start to remove, so shutdown stays quick. It says what it did.
func ApplyStaged(cfg Config) (string, error) {
	cfg = cfg.WithDefaults()
	if cfg.Sysroot == "" {
		return "", errors.New("no sysroot (--sysroot)")
	}
	on, err := ParseApplyOn(cfg.ApplyOn)
	if err != nil {
		return "", err
	}
	policy, err := ParsePolicy(cfg.Policy)
	if err != nil {
		return "", err
	}
	if policy != PolicyAuto || on != ApplyOnShutdown {
		return fmt.Sprintf("nothing to do: policy is %s and apply-on %s (apply-staged acts on policy auto with apply-on shutdown)", policy, on), nil
	}
	sys, err := apply.OpenExisting(cfg.Sysroot)
	if err != nil {
		return "", err
	}
	sys.BootTries = cfg.BootTries
	st, err := sys.Status()
	if err != nil {
		return "", err
	}
	if st.Staged == 0 {
		return "nothing staged", nil
	}
	if err := sys.Refusal(st.Staged); err != nil {
		return fmt.Sprintf("staged version %d not applied: %v", st.Staged, err), nil
	}
	from, to, err := sys.Apply(st.Staged)
	if err != nil {
		return "", fmt.Errorf("apply staged version %d: %w", st.Staged, err)
	}
	return fmt.Sprintf("applied at shutdown: version %d (previous: %d); it starts at the next boot", to, from), nil
}
