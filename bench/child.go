package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"

	"github.com/peerup/peerup/transfer"
)

// updateServeEnv names what a child bench process serves for the laptop
// update timings: "peerup=REPO" or "ostree=REPO". The servers run in
// processes of their own, as a school server is a machine of its own: in
// the bench's process they would share its heap and its collector with
// everything the bench holds.
const updateServeEnv = "PEERUP_BENCH_UPDATE_SERVE"

// countsPath is where the ostree child reports what it served since the
// last report: requests and body bytes under deltas/, then the rest.
const countsPath = "/.bench/counts"

// childProc is a server child of this bench: where it listens, its pid
// (for its memory figures) and how to stop it.
type childProc struct {
	addr string
	pid  int
	stop func()
}

// startChild runs this bench binary with env set and reads the address
// it prints.
func startChild(ctx context.Context, env string) (*childProc, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, self)
	cmd.Env = append(os.Environ(), env)
	stdin, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &childProc{pid: cmd.Process.Pid, stop: func() { stdin.Close(); cmd.Wait() }}
	addr, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		c.stop()
		return nil, fmt.Errorf("server child did not start: %w", err)
	}
	c.addr = strings.TrimSpace(addr)
	return c, nil
}

// serveUpdateChild is the child side of updateServeEnv: it serves until
// its standard input closes.
func serveUpdateChild(spec string) error {
	kind, dir, _ := strings.Cut(spec, "=")
	var h http.Handler
	switch kind {
	case "peerup":
		// As fast as it goes: the per-peer request limit is for abuse, and
		// one laptop over loopback would only measure the limit.
		h = transfer.NewHandler(dir, nil).WithLimits(transfer.Limits{RequestRate: -1})
	case "ostree":
		h = newCountingFiles(dir)
	default:
		return fmt.Errorf("%s=%q: want peerup=DIR or ostree=DIR", updateServeEnv, spec)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	fmt.Println(ln.Addr())
	io.Copy(io.Discard, os.Stdin)
	return srv.Close()
}

// countingFiles serves a folder and counts what it sends, split between
// static deltas and the rest.
type countingFiles struct {
	files        http.Handler
	delta, other served
}

func newCountingFiles(dir string) *countingFiles {
	return &countingFiles{files: http.FileServer(http.Dir(dir))}
}

func (c *countingFiles) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == countsPath {
		fmt.Fprintln(w, c.delta.reqs.Swap(0), c.delta.bytes.Swap(0), c.other.reqs.Swap(0), c.other.bytes.Swap(0))
		return
	}
	s := &c.other
	if strings.HasPrefix(r.URL.Path, "/deltas/") {
		s = &c.delta
	}
	s.reqs.Add(1)
	c.files.ServeHTTP(countingWriter{w, &s.bytes}, r)
}

// readCounts asks the ostree child what it served since it last did.
func readCounts(ctx context.Context, base string, delta, other *served) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+countsPath, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var dr, db, or, ob int64
	if _, err := fmt.Fscan(resp.Body, &dr, &db, &or, &ob); err != nil {
		return fmt.Errorf("read the ostree server's counts: %w", err)
	}
	delta.reqs.Store(dr)
	delta.bytes.Store(db)
	other.reqs.Store(or)
	other.bytes.Store(ob)
	return nil
}
