package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/peerup/peerup/apply"
	"github.com/peerup/peerup/manifest"
	"github.com/peerup/peerup/transfer"
)

// Discovery is what the daemon needs from peer discovery.
type Discovery interface {
	// Peers lists repo URLs of peers of our image, best first.
	Peers() []string
	// Newer fires when a peer with a newer version may have appeared.
	Newer() <-chan struct{}
	// VersionChanged re-advertises the node's version and announces the
	// new one to the nodes still on the old.
	VersionChanged(ctx context.Context, image string, from, to uint64)
	Close() error
}

// Daemon is a running peerup daemon.
type Daemon struct {
	Core    *Core
	DB      *DB
	Sysroot *apply.Sysroot
	Addr    net.Addr // where it serves its repo

	srv  *http.Server
	svc  *Service
	disc Discovery
	host *systemBus // UPower and NetworkManager (nil: none)
	log  *slog.Logger
	wg   sync.WaitGroup
}

// Start opens the sysroot and its database (failing at once if another
// daemon has them), serves the node's repo, and exports the D-Bus API.
// newDisc, if not nil, is called with the node's image, version and HTTP
// port once they are known.
func Start(ctx context.Context, cfg Config, newDisc func(image string, version uint64, port int) (Discovery, error), log *slog.Logger) (*Daemon, error) {
	if cfg.Sysroot == "" {
		return nil, errors.New("no sysroot (--sysroot)")
	}
	cfg = cfg.WithDefaults()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	policy, err := ParsePolicy(cfg.Policy)
	if err != nil {
		return nil, err
	}
	kr, err := manifest.LoadKeyring(cfg.Trust...)
	if err != nil {
		return nil, err
	}
	sys, err := apply.Open(cfg.Sysroot)
	if err != nil {
		return nil, err
	}
	sys.BootTries = cfg.BootTries
	sys.Fault = cfg.Fault
	sys.MachineIDFile = cfg.MachineID
	if err := sys.Recover(); err != nil {
		return nil, fmt.Errorf("%s: %w", cfg.Sysroot, err)
	}
	db, err := OpenDB(filepath.Join(sys.StateDir(), "state.db"))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", cfg.Sysroot, err)
	}
	d := &Daemon{DB: db, Sysroot: sys, log: log}
	ok := false
	defer func() {
		if !ok {
			d.close()
		}
	}()
	var partial transfer.Partial
	if !cfg.NoP2P {
		partial = sys
	}
	metrics := NewMetrics(cfg.Peers)
	ln, err := serveRepo(ctx, cfg, sys.Repo().Dir(), partial, metrics, nil, &d.srv, &d.wg, log)
	if err != nil {
		return nil, err
	}
	d.Addr = ln.Addr()
	st, err := sys.Status()
	if err != nil {
		return nil, err
	}
	if newDisc != nil {
		if d.disc, err = newDisc(st.Image, st.Current, ln.Addr().(*net.TCPAddr).Port); err != nil {
			return nil, err
		}
	}
	vols := newVolumes(cfg.Volumes, cfg.ScanMounts, log)
	peers := func() []string {
		// A stick first: it is local and costs the LAN nothing.
		return append(vols.Present(), cfg.Peers...)
	}
	discovered := func() []string {
		if d.disc == nil || cfg.NoP2P {
			return nil
		}
		return d.disc.Peers()
	}
	d.host = connectHost(cfg.SystemBus, log)
	cond, err := conditions(cfg, d.host)
	if err != nil {
		return nil, err
	}
	downloadLimit := transfer.NewRateLimiter(cfg.MaxDownloadRate)
	peerHTTP := transfer.DefaultHTTPClient()
	rep, err := newReporter(cfg, db, sys, log)
	if err != nil {
		return nil, err
	}
	var helpers func() []apply.Haver
	if !cfg.NoP2P {
		// On a metered connection, a peer beyond the LAN lends nothing
		// either.
		lanPeers := func() []string { p, _ := d.Core.lanOnly(peers()); return p }
		helpers = neighbours(func() []string { return append(lanPeers(), discovered()...) }, downloadLimit)
	}
	d.Core, err = NewCore(ctx, Options{
		Sysroot: sys, DB: db, Trust: kr, Policy: policy, Peers: peers, Discovered: discovered, Log: log, EncodingBudget: apply.EncodingBudgetMiB(*cfg.KeepEncodingsMiB), Memory: apply.MemoryMiB(cfg.MemoryMiB), Entries: apply.EntryPolicy{NoDevices: cfg.NoDevices, NoSetuid: cfg.NoSetuid},
		Helpers: helpers, Metrics: metrics, Conditions: cond, Now: cfg.Now, Pulled: rep.pulledHook(),
		Open: func(loc string) (apply.Source, error) {
			return apply.OpenSourceWith(loc, apply.SourceOptions{DownloadLimit: downloadLimit, HTTP: peerHTTP})
		},
		OnApplied: func(from, to uint64) {
			if d.disc != nil {
				d.disc.VersionChanged(ctx, d.Core.Props().Image, from, to)
			}
		},
	})
	if err != nil {
		return nil, err
	}
	metrics.watchNode(d.Core, sys, db)
	if cfg.Bus != "none" {
		conn, err := ConnectBus(cfg.Bus)
		if err != nil {
			return nil, err
		}
		if d.svc, err = Export(conn, d.Core); err != nil {
			conn.Close()
			return nil, err
		}
	}
	// Goroutines start last: a failure above closes the daemon, which
	// waits for them, and ctx has not ended.
	rep.start(ctx, d.Core, &d.wg)
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		d.loop(ctx, cfg, len(cfg.Peers) > 0)
	}()
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		d.watchConditions(ctx)
	}()
	if len(cfg.Volumes) > 0 || cfg.ScanMounts {
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			vols.run(ctx, func(path string) {
				// A new stick (or a new export on one) gets a fresh
				// chance, even where a bad one was banned.
				db.Unban(path)
			}, func() bool { d.Core.Hint(); return true }) // Hint polls now or when the running operation ends
		}()
	}
	ok = true
	return d, nil
}

// loop turns discovery events (and the optional timer) into polls.
func (d *Daemon) loop(ctx context.Context, cfg Config, pollNow bool) {
	var newer <-chan struct{}
	if d.disc != nil {
		newer = d.disc.Newer()
	}
	var tick <-chan time.Time
	if cfg.PollInterval > 0 {
		t := time.NewTicker(cfg.PollInterval)
		defer t.Stop()
		tick = t.C
	}
	if pollNow {
		d.Core.Hint()
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-newer:
			d.Core.Hint()
		case <-tick:
			d.Core.Hint()
		}
	}
}

// Wait blocks until ctx ends, then shuts everything down in order.
func (d *Daemon) Wait(ctx context.Context) {
	<-ctx.Done()
	d.close()
}

func (d *Daemon) close() {
	if d.Core != nil {
		d.Core.Wait()
	}
	if d.srv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		d.srv.Shutdown(sctx)
		cancel()
	}
	if d.svc != nil {
		d.svc.conn.Close()
	}
	if d.disc != nil {
		d.disc.Close()
	}
	d.wg.Wait()
	if d.Sysroot != nil {
		d.Sysroot.ForgetPreview()
	}
	if d.host != nil {
		d.host.Close()
	}
	if d.DB != nil {
		d.DB.Close()
	}
}

// serveRepo serves dir on cfg.Listen, with cfg's limits, and the metrics
// at MetricsPath, until *srv is shut down (or, for a LAN listen, ctx
// ends); wrap, if set, adds routes of its own. cfg has its defaults filled
// in.
func serveRepo(ctx context.Context, cfg Config, dir string, partial transfer.Partial, metrics *Metrics, wrap func(http.Handler) http.Handler, srv **http.Server, wg *sync.WaitGroup, log *slog.Logger) (net.Listener, error) {
	ln, err := transfer.ListenOn(ctx, cfg.Listen, cfg.LANAddrs, cfg.limits(), log)
	if err != nil {
		return nil, err
	}
	h := transfer.NewHandler(dir, log).WithLimits(cfg.limits())
	if partial != nil {
		h = h.WithPartial(partial)
	}
	var hh http.Handler = h
	if wrap != nil {
		hh = wrap(h)
	}
	// Not a ServeMux: its redirects of unclean paths would change what the
	// repo's own handler answers to them.
	mh := metrics.Handler()
	both := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == MetricsPath {
			mh.ServeHTTP(w, r)
			return
		}
		hh.ServeHTTP(w, r)
	})
	*srv = transfer.NewServer(ln.Addr().String(), both)
	s := *srv
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := s.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("serve", "err", err)
		}
	}()
	return ln, nil
}

// neighbours turns the peers discovery knows into clients that can lend
// objects from their own pulls, reusing one client (and its connections)
// per peer.
func neighbours(peers func() []string, limit *rate.Limiter) func() []apply.Haver {
	var mu sync.Mutex
	clients := map[string]*transfer.Client{}
	return func() []apply.Haver {
		mu.Lock()
		defer mu.Unlock()
		var out []apply.Haver
		for _, u := range peers() {
			if !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "https://") {
				continue // a volume lends nothing: it is not pulling
			}
			c := clients[u]
			if c == nil {
				var err error
				if c, err = transfer.NewClient(u, nil); err != nil {
					continue
				}
				c = c.WithDownloadRate(limit)
				clients[u] = c
			}
			out = append(out, c)
		}
		return out
	}
}
