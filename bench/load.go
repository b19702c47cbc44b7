package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/peerup/peerup/apply"
	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/transfer"
)

// serveEnv names the repo a child bench process serves (benchLoad starts
// it): the seed runs in its own process so that its peak RSS is its own.
const serveEnv = "PEERUP_BENCH_SERVE"

// Load scenario parameters: a school server seeding a class.
const (
	loadPullers   = 50
	loadFiles     = 100
	loadFileSize  = 48 << 10
	loadParallel  = 2  // fetches at once per puller
	loadMaxUpload = 64 // the seed's --max-uploads, as a school server sets it
)

// serveChild serves the repo named by serveEnv on loopback with a daemon's
// limits, prints its address, and serves until stdin closes.
func serveChild(dir string) error {
	l := transfer.Limits{MaxUploads: loadMaxUpload}
	ln, err := transfer.Listen("127.0.0.1:0", l)
	if err != nil {
		return err
	}
	srv := transfer.NewServer(ln.Addr().String(), transfer.NewHandler(dir, nil).WithLimits(l))
	go srv.Serve(ln)
	fmt.Println(ln.Addr())
	io.Copy(io.Discard, os.Stdin)
	return srv.Close()
}

// benchLoad has one seed serve loadPullers concurrent pullers over
// loopback, each from its own 127.0.1.x address (so the per-peer limits see
// separate peers), and reports errors, time and the seed's peak RSS.
func benchLoad(ctx context.Context, w io.Writer, work string) error {
	f, err := newBenchFleet(filepath.Join(work, "load"))
	if err != nil {
		return err
	}
	tree := filepath.Join(work, "load", "tree")
	for i := range loadFiles {
		b := make([]byte, loadFileSize)
		rand.Read(b)
		p := filepath.Join(tree, fmt.Sprintf("usr/share/f%02d/file-%03d", i%10, i))
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			return err
		}
	}
	if _, err := f.repo.Publish(ctx, tree, blobstore.PublishOptions{Image: "load", Version: 1, Signer: f.signer}); err != nil {
		return err
	}
	child, err := startChild(ctx, serveEnv+"="+f.repo.Dir())
	if err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	defer child.stop()
	url := "http://" + child.addr + "/"
	fmt.Fprintf(w, "\n== load: one seed, %d concurrent pullers over loopback, %d files of %d KiB each ==\n", loadPullers, loadFiles, loadFileSize>>10)
	fmt.Fprintf(w, "seed: --max-uploads %d, %d connections per peer, %d requests/s per peer; pullers: %d fetches at once each\n",
		loadMaxUpload, transfer.DefaultMaxConnsPerPeer, transfer.DefaultRequestRate, loadParallel)
	start := time.Now()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	var fetched int64
	for i := range loadPullers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n, err := pullOnce(ctx, url, filepath.Join(work, "load", fmt.Sprintf("laptop-%02d", i)), net.IPv4(127, 0, 1, byte(i+1)), f)
			mu.Lock()
			defer mu.Unlock()
			fetched += n
			if err != nil {
				errs = append(errs, fmt.Errorf("puller %d: %w", i, err))
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	hwm, rss := procStatus(child.pid, "VmHWM"), procStatus(child.pid, "VmRSS")
	fmt.Fprintf(w, "%d pullers done in %.1fs, %s served (%.0f MB/s), %d errors\n", loadPullers, took.Seconds(), mb(fetched), float64(fetched)/took.Seconds()/1e6, len(errs))
	fmt.Fprintf(w, "seed process: peak RSS (VmHWM) %s, RSS now %s\n", hwm, rss)
	for _, e := range errs[:min(len(errs), 5)] {
		fmt.Fprintf(w, "  %v\n", e)
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	return nil
}

// pullOnce pulls the load image into a fresh sysroot from a client bound to
// local address ip.
func pullOnce(ctx context.Context, url, dir string, ip net.IP, f *benchFleet) (int64, error) {
	s, err := apply.Open(dir)
	if err != nil {
		return 0, err
	}
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: ip}, Timeout: 10 * time.Second}
	hc := transfer.DefaultHTTPClient()
	hc.Transport.(*http.Transport).DialContext = d.DialContext
	c, err := transfer.NewClient(url, hc)
	if err != nil {
		return 0, err
	}
	res, err := s.Pull(ctx, c, apply.PullOptions{Trust: f.trust, Parallel: loadParallel})
	if err != nil {
		return 0, err
	}
	return res.FetchedBytes, nil
}

// procStatus reads one field of /proc/PID/status ("12345 kB").
func procStatus(pid int, field string) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "?"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && k == field {
			return strings.TrimSpace(v)
		}
	}
	return "?"
}
