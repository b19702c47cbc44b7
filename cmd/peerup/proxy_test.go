package main

import (
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/peerup/peerup/transfer"
)

// TestMirrorGoesThroughTheProxy: a school server whose only way out is a
// proxy mirrors its upstream through http_proxy; the proxy (a small one
// here, counting what it forwards) sees the requests. (A daemon's peers
// never take a proxy: transfer's TestOnlyUpstreamClientsTakeTheProxy.)
func TestMirrorGoesThroughTheProxy(t *testing.T) {
	bin := buildPeerup(t)
	dir := t.TempDir()
	run := func(env []string, args ...string) string {
		t.Helper()
		cmd := exec.Command(bin, args...)
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("peerup %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	run(nil, "keygen", "--name", "fleet", "--out", dir+"/keys")
	os.MkdirAll(dir+"/tree/etc", 0o755)
	os.WriteFile(dir+"/tree/etc/os-release", []byte("VERSION_ID=1\n"), 0o644)
	run(nil, "publish", "--repo", dir+"/upstream", "--image", "school-laptop", "--key", dir+"/keys/fleet.key", dir+"/tree")

	upstream := httptest.NewServer(transfer.NewHandler(dir+"/upstream", nil))
	defer upstream.Close()
	target, _ := url.Parse(upstream.URL)
	// The upstream's name resolves nowhere: only the proxy knows it, as a
	// school's proxy knows the internet.
	var forwarded atomic.Int64
	rp := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		r.SetURL(target)
	}}
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Host != "updates.example.invalid" {
			http.Error(w, "not for this proxy", http.StatusForbidden)
			return
		}
		forwarded.Add(1)
		rp.ServeHTTP(w, r)
	}))
	defer proxy.Close()
	env := []string{"http_proxy=" + proxy.URL, "HTTP_PROXY=" + proxy.URL, "no_proxy=", "NO_PROXY="}
	out := run(env, "mirror", "--repo", dir+"/mirror", "--from", "http://updates.example.invalid/", "--trust", dir+"/keys/fleet.pub")
	if !strings.Contains(out, "mirrored school-laptop version 1") {
		t.Fatalf("mirror through the proxy: %s", out)
	}
	if forwarded.Load() == 0 {
		t.Fatal("the proxy forwarded nothing")
	}

}

// TestDiscoverSaysWhenItCannotListen: on a machine with no link to listen
// on (only loopback, as a laptop whose Wi-Fi is off), `peerup discover`
// fails and says why, instead of printing nothing. (A LAN with an address
// and no routes is a link: the netns tests in daemon/ browse on one.)
func TestDiscoverSaysWhenItCannotListen(t *testing.T) {
	unshare, err := exec.LookPath("unshare")
	if err != nil || os.Geteuid() != 0 {
		t.Skip("needs root and unshare (util-linux) for a network namespace")
	}
	bin := buildPeerup(t)
	script := `ip link set lo up && exec "$0" discover --timeout 2s`
	out, err := exec.Command(unshare, "-n", "--", "sh", "-c", script, bin).CombinedOutput()
	if err == nil {
		t.Fatalf("discover exited 0 where it could not listen:\n%s", out)
	}
	if !strings.Contains(string(out), "cannot listen for mDNS") {
		t.Fatalf("discover did not say why:\n%s", out)
	}
}
