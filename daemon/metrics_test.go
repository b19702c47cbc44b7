package daemon

import (
	"context"
	"maps"
	"net/http"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/peerup/peerup/apply"
)

// scrape reads a daemon's /metrics as Prometheus does.
func scrape(t *testing.T, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + addr + MetricsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", MetricsPath, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mf, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("metrics do not parse as the Prometheus text format: %v", err)
	}
	return mf
}

// metricValue is the value of family name's series with the labels given
// (name=value pairs), failing the test if there is none.
func metricValue(t *testing.T, mf map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	t.Helper()
	f, ok := mf[name]
	if !ok {
		t.Fatalf("no metric %s", name)
	}
next:
	for _, m := range f.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for i := 0; i+1 < len(labels); i += 2 {
			if have[labels[i]] != labels[i+1] {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue()
		case m.Gauge != nil:
			return m.GetGauge().GetValue()
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount())
		}
	}
	t.Fatalf("no series of %s with labels %v", name, labels)
	return 0
}

// TestMetrics: a daemon serves its versions, state, peers, bans, bytes by
// source and fetch and apply durations at /metrics, beside its repo; the
// server's bytes and the fetch count rise with a fetch, the apply count
// with an apply.
func TestMetrics(t *testing.T) {
	f := newTestFleet(t)
	f.publish(t, 1)
	sysroot := f.sysrootAt(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	d, err := Start(ctx, Config{Sysroot: sysroot, Trust: []string{f.pub}, Listen: "127.0.0.1:0", Bus: "none", Policy: "download", Peers: []string{f.url}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); d.Wait(ctx) }()
	log := newStateLog()
	d.Core.Observe(log)
	addr := d.Addr.String()

	before := scrape(t, addr)
	for _, name := range []string{"peerup_version", "peerup_state", "peerup_peers", "peerup_banned_peers", "peerup_rollout_waiting",
		"peerup_fetched_bytes_total", "peerup_fetch_duration_seconds", "peerup_apply_duration_seconds"} {
		if _, ok := before[name]; !ok {
			t.Errorf("no metric %s before any fetch", name)
		}
	}
	if got := metricValue(t, before, "peerup_version", "link", "current", "image", "school-laptop"); got != 1 {
		t.Errorf("current version %v, want 1", got)
	}
	for _, src := range []string{"server", "neighbour", "volume"} {
		if got := metricValue(t, before, "peerup_fetched_bytes_total", "source", src); got != 0 {
			t.Errorf("%s bytes %v before any fetch", src, got)
		}
	}
	if got := metricValue(t, before, "peerup_banned_peers"); got != 0 {
		t.Errorf("%v peers banned", got)
	}

	f.publish(t, 2)
	if err := pollAgain(ctx, d.Core); err != nil {
		t.Fatal(err)
	}
	if err := log.waitFor(ctx, d.Core, StateUpdateReady, 1); err != nil {
		t.Fatal(err)
	}
	fetched := scrape(t, addr)
	if got := metricValue(t, fetched, "peerup_fetched_bytes_total", "source", "server"); got <= 0 {
		t.Errorf("server bytes %v after a fetch from the server", got)
	}
	if got := metricValue(t, fetched, "peerup_fetch_duration_seconds"); got != 1 {
		t.Errorf("%v fetches counted, want 1", got)
	}
	if got := metricValue(t, fetched, "peerup_version", "link", "staged"); got != 2 {
		t.Errorf("staged version %v, want 2", got)
	}
	if got := metricValue(t, fetched, "peerup_state", "state", string(StateUpdateReady)); got != 1 {
		t.Errorf("state update-ready is %v, want 1", got)
	}
	if got := metricValue(t, fetched, "peerup_state", "state", string(StateIdle)); got != 0 {
		t.Errorf("state idle is %v in update-ready", got)
	}
	if got := metricValue(t, fetched, "peerup_peers"); got != 1 {
		t.Errorf("%v peers, want 1", got)
	}

	if err := d.Core.Apply(); err != nil {
		t.Fatal(err)
	}
	if err := log.waitFor(ctx, d.Core, StateUpdateApplied, 1); err != nil {
		t.Fatal(err)
	}
	applied := scrape(t, addr)
	if got := metricValue(t, applied, "peerup_apply_duration_seconds"); got != 1 {
		t.Errorf("%v applies counted, want 1", got)
	}
	for link, want := range map[string]float64{"current": 2, "previous": 1} {
		if got := metricValue(t, applied, "peerup_version", "link", link); got != want {
			t.Errorf("%s version %v, want %v", link, got, want)
		}
	}
	// The repo is served beside the metrics, as before.
	resp, err := http.Get("http://" + addr + "/index")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("GET /index beside the metrics: %v %v", resp, err)
	}
	if resp != nil {
		resp.Body.Close()
	}
}

// TestSeedMetrics: a seed serves the version it advertises at /metrics.
func TestSeedMetrics(t *testing.T) {
	f := newTestFleet(t)
	f.publish(t, 1)
	f.publish(t, 2)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	seed, err := StartSeed(ctx, Config{Repo: f.repo.Dir(), Trust: []string{f.pub}, Listen: "127.0.0.1:0"}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); seed.close() }()
	mf := scrape(t, seed.Addr.String())
	if got := metricValue(t, mf, "peerup_version", "link", "advertised", "image", "school-laptop"); got != 2 {
		t.Errorf("advertised version %v, want 2", got)
	}
}

// TestMetricsSources: a pull's bytes are labelled by their source's kind,
// and the metadata counts as the primary source's.
func TestMetricsSources(t *testing.T) {
	m := NewMetrics([]string{"http://server:7380/"})
	for _, tc := range []struct{ name, want string }{
		{"http://server:7380/", sourceServer},
		{"http://server:7380", sourceServer},
		{"http://10.0.0.7:7380/", sourceNeighbour},
		{"https://mirror.example/", sourceNeighbour},
		{"/media/stick", sourceVolume},
	} {
		if got := m.source(tc.name); got != tc.want {
			t.Errorf("source(%q) = %s, want %s", tc.name, got, tc.want)
		}
	}
	m.fetched(&apply.PullResult{FetchedBytes: 1000, Sources: map[string]int64{"http://10.0.0.7:7380/": 600, "http://server:7380": 300}}, "http://server:7380/", time.Second)
	mfs, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "peerup_fetched_bytes_total" {
			continue
		}
		for _, s := range mf.GetMetric() {
			got[s.GetLabel()[0].GetValue()] = s.GetCounter().GetValue()
		}
	}
	if want := map[string]float64{sourceServer: 400, sourceNeighbour: 600, sourceVolume: 0}; !maps.Equal(got, want) {
		t.Errorf("bytes by source %v, want %v", got, want)
	}
}
