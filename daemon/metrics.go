package daemon

import (
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	bolt "go.etcd.io/bbolt"

	"github.com/peerup/peerup/apply"
)

// MetricsPath is where every daemon serves its Prometheus metrics, beside
// its repo (SPEC.md §11).
const MetricsPath = "/metrics"

// Sources of fetched bytes, as the bytes metric labels them.
const (
	sourceServer    = "server"    // a configured peer (the school server)
	sourceNeighbour = "neighbour" // a discovered laptop, or one lending from its own pull
	sourceVolume    = "volume"    // a USB stick
)

// Metrics are one daemon's Prometheus metrics, in a registry of its own:
// what the state machine reads (versions, state, peers, bans) is collected
// from it at each scrape; what it does (bytes fetched, how long fetches
// and applies take) is counted as it happens. A nil *Metrics counts
// nothing.
type Metrics struct {
	reg     *prometheus.Registry
	bytes   *prometheus.CounterVec
	fetch   prometheus.Histogram
	apply   prometheus.Histogram
	servers map[string]bool // configured peers, without a trailing slash
}

// NewMetrics makes a daemon's metrics; bytes from the servers (its
// configured peers) count as the server's.
func NewMetrics(servers []string) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "peerup_fetched_bytes_total",
			Help: "Bytes received by successful fetches of updates, by source: server (a configured peer), neighbour, volume (a USB stick).",
		}, []string{"source"}),
		// Fetches take seconds on a LAN and an hour over a bad link;
		// applies are a few renames and a prune.
		fetch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "peerup_fetch_duration_seconds",
			Help:    "How long successful fetches of an update took, from the first request to the staged tree.",
			Buckets: prometheus.ExponentialBuckets(0.1, 4, 9),
		}),
		apply: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "peerup_apply_duration_seconds",
			Help:    "How long successful switches to a staged version took, with the prune of old trees.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 9),
		}),
		servers: map[string]bool{},
	}
	for _, s := range servers {
		m.servers[strings.TrimSuffix(s, "/")] = true
	}
	// Every source is present from the start, at 0, so a scrape shows what
	// the daemon can count before it has fetched anything.
	for _, s := range []string{sourceServer, sourceNeighbour, sourceVolume} {
		m.bytes.WithLabelValues(s)
	}
	m.reg.MustRegister(m.bytes, m.fetch, m.apply)
	return m
}

// Handler serves the metrics in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// source says which kind of source a pull's source name (a URL or a
// folder) is.
func (m *Metrics) source(name string) string {
	switch {
	case !strings.HasPrefix(name, "http://") && !strings.HasPrefix(name, "https://"):
		return sourceVolume
	case m.servers[strings.TrimSuffix(name, "/")]:
		return sourceServer
	}
	return sourceNeighbour
}

// fetched counts a successful pull from primary, which took took: each
// source's bytes, and the metadata (which only the primary sends) as the
// primary's.
func (m *Metrics) fetched(res *apply.PullResult, primary string, took time.Duration) {
	if m == nil {
		return
	}
	rest := res.FetchedBytes
	for name, n := range res.Sources {
		m.bytes.WithLabelValues(m.source(name)).Add(float64(n))
		rest -= n
	}
	if rest > 0 {
		m.bytes.WithLabelValues(m.source(primary)).Add(float64(rest))
	}
	m.fetch.Observe(took.Seconds())
}

// applied counts a successful switch.
func (m *Metrics) applied(took time.Duration) {
	if m != nil {
		m.apply.Observe(took.Seconds())
	}
}

// watchNode collects what a laptop's daemon reads at each scrape.
func (m *Metrics) watchNode(c *Core, sys *apply.Sysroot, db *DB) {
	m.reg.MustRegister(newNodeCollector(c, sys, db))
}

// watchSeed collects a seed's advertised version at each scrape.
func (m *Metrics) watchSeed(image string, v *atomic.Uint64) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name:        "peerup_version",
		Help:        versionHelp,
		ConstLabels: prometheus.Labels{"link": "advertised", "image": image},
	}, func() float64 { return float64(v.Load()) }))
}

// versionHelp describes peerup_version, which laptops and seeds both
// serve.
const versionHelp = "The node's versions of its image, by link: current, previous, staged, available (on offer); a seed's advertised."

// allStates are every state, so that a scrape shows each at 0 or 1.
func allStates() []State {
	return []State{StateIdle, StatePolling, StateUpdateAvailable, StateFetching, StateUpdateReady, StateApplying, StateUpdateApplied, StateError}
}

// nodeCollector reads a laptop's daemon's state at each scrape.
type nodeCollector struct {
	core *Core
	sys  *apply.Sysroot
	db   *DB

	version, state, peers, bans, rollout *prometheus.Desc
}

func newNodeCollector(c *Core, sys *apply.Sysroot, db *DB) *nodeCollector {
	return &nodeCollector{core: c, sys: sys, db: db,
		version: prometheus.NewDesc("peerup_version", versionHelp, []string{"image", "link"}, nil),
		state:   prometheus.NewDesc("peerup_state", "1 for the daemon's state (SPEC.md §11), 0 for the others.", []string{"state"}, nil),
		peers:   prometheus.NewDesc("peerup_peers", "Peers the last poll asked.", nil, nil),
		bans:    prometheus.NewDesc("peerup_banned_peers", "Peers barred now for serving bad data.", nil, nil),
		rollout: prometheus.NewDesc("peerup_rollout_waiting", "1 while the offered version is staged but not rolled out to this machine yet.", nil, nil),
	}
}

func (n *nodeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{n.version, n.state, n.peers, n.bans, n.rollout} {
		ch <- d
	}
}

func (n *nodeCollector) Collect(ch chan<- prometheus.Metric) {
	p := n.core.Props()
	staged := uint64(0)
	if st, err := n.sys.Status(); err == nil {
		staged = st.Staged
	}
	for _, v := range []struct {
		link string
		v    uint64
	}{{"current", p.CurrentVersion}, {"previous", p.PreviousVersion}, {"staged", staged}, {"available", p.AvailableVersion}} {
		ch <- prometheus.MustNewConstMetric(n.version, prometheus.GaugeValue, float64(v.v), p.Image, v.link)
	}
	for _, s := range allStates() {
		ch <- prometheus.MustNewConstMetric(n.state, prometheus.GaugeValue, boolGauge(p.State == s), string(s))
	}
	ch <- prometheus.MustNewConstMetric(n.peers, prometheus.GaugeValue, float64(p.PeerCount))
	ch <- prometheus.MustNewConstMetric(n.bans, prometheus.GaugeValue, float64(n.db.bannedCount(time.Now())))
	ch <- prometheus.MustNewConstMetric(n.rollout, prometheus.GaugeValue, boolGauge(p.RolloutWaiting))
}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// bannedCount is how many peers are barred at now.
func (d *DB) bannedCount(now time.Time) int {
	n := 0
	d.b.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketBans).ForEach(func(k, v []byte) error {
			if banActive(v, now) {
				n++
			}
			return nil
		})
	})
	return n
}
