package daemon

import (
	"context"
	"crypto/rand"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/godbus/dbus/v5"

	"github.com/peerup/peerup/apply"
	"github.com/peerup/peerup/manifest"
	"github.com/peerup/peerup/transfer"
)

// gate serves a repo but holds every object request after the first `open`
// ones until released, sending nothing, so a test can stop a fetch at an
// exact point.
type gate struct {
	h        http.Handler
	mu       sync.Mutex
	open     int
	served   int
	released chan struct{}
}

func (g *gate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if strings.HasPrefix(r.URL.Path, "/objects/") {
		g.mu.Lock()
		hold := g.served >= g.open
		if !hold {
			g.served++
		}
		g.mu.Unlock()
		if hold {
			select {
			case <-g.released:
			case <-r.Context().Done():
				return
			}
		}
	}
	g.h.ServeHTTP(w, r)
}

func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "peerup")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/peerup/peerup/cmd/peerup").CombinedOutput(); err != nil {
		t.Fatalf("build peerup: %v\n%s", err, out)
	}
	return bin
}

// TestResumeAfterKill9 kills the daemon mid-fetch and restarts it: the
// objects it had verified are not fetched again, as its own counters show.
func TestResumeAfterKill9(t *testing.T) {
	addr := privateBus(t)
	bin := buildBinary(t)
	f := newTestFleet(t)
	f.publish(t, 1)
	sysroot := f.sysrootAt(t, 1)
	const objects, size = 10, 256 << 10
	for i := range objects {
		b := make([]byte, size)
		rand.Read(b) // incompressible: every object travels whole
		os.WriteFile(filepath.Join(f.tree, fmt.Sprintf("etc/blob-%d", i)), b, 0o644)
	}
	f.publish(t, 2)

	// A clean pull of v2 onto v1, for comparison.
	clean := f.sysrootAt(t, 1)
	cs, _ := apply.Open(clean)
	kr, _ := manifest.LoadKeyring(f.pub)
	cl, _ := transfer.NewClient(f.url, nil)
	cleanRes, err := cs.Pull(context.Background(), cl, apply.PullOptions{Trust: kr})
	if err != nil {
		t.Fatal(err)
	}

	g := &gate{h: transfer.NewHandler(f.repo.Dir(), nil), open: 5, released: make(chan struct{})}
	srv := httptest.NewServer(g)
	defer srv.Close()
	start := func() *exec.Cmd {
		cmd := exec.Command(bin, "daemon", "--sysroot", sysroot, "--trust", f.pub, "--listen", "127.0.0.1:0",
			"--bus", addr, "--policy", "download", "--peer", srv.URL+"/")
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd
	}
	w := watch(t, addr)
	downloaded := func(s *dbus.Signal) (uint64, bool) {
		if s.Name != "org.freedesktop.DBus.Properties.PropertiesChanged" || len(s.Body) < 2 {
			return 0, false
		}
		changed, _ := s.Body[1].(map[string]dbus.Variant)
		v, ok := changed["DownloadedBytes"]
		if !ok {
			return 0, false
		}
		n, _ := v.Value().(uint64)
		return n, true
	}

	first := start()
	var run1 uint64
	// The gate lets five objects through; objects are taken in random
	// order, and only two of v2's are small, so at least three blobs
	// arrive.
	w.until(t, "the first three blobs", func(s *dbus.Signal) bool {
		if n, ok := downloaded(s); ok {
			run1 = n
		}
		return run1 >= 3*size
	})
	first.Process.Signal(syscall.SIGKILL)
	first.Wait()

	close(g.released)
	second := start()
	defer func() { second.Process.Signal(syscall.SIGTERM); second.Wait() }()
	var run2 uint64
	w.until(t, "UpdateReady after the restart", func(s *dbus.Signal) bool {
		if n, ok := downloaded(s); ok {
			run2 = n
		}
		return s.Name == Interface+".UpdateReady"
	})
	t.Logf("clean run: %d bytes; killed run: %d; resumed run: %d", cleanRes.FetchedBytes, run1, run2)
	if run1+run2 > uint64(cleanRes.FetchedBytes)+size {
		t.Errorf("fetched %d + %d bytes in all, more than one object over a clean run's %d", run1, run2, cleanRes.FetchedBytes)
	}
	if run2 > uint64(cleanRes.FetchedBytes)-3*size {
		t.Errorf("after the restart the daemon fetched %d of %d bytes: what it had verified was fetched again", run2, cleanRes.FetchedBytes)
	}
	c, err := Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Call(MethodApply); err != nil {
		t.Fatal(err)
	}
	w.until(t, "update-applied", stateIs(StateUpdateApplied))
	for i := range objects {
		want, _ := os.ReadFile(filepath.Join(f.tree, fmt.Sprintf("etc/blob-%d", i)))
		got, _ := os.ReadFile(filepath.Join(sysroot, fmt.Sprintf("current/etc/blob-%d", i)))
		if string(got) != string(want) {
			t.Fatalf("etc/blob-%d differs after the resumed update", i)
		}
	}
}
