package main

import (
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/peerup/peerup/internal/testlan"
)

// TestServeListensOnTheLANOnly runs `peerup serve` with its default listen
// in a network namespace whose node has its LAN interface and a second,
// non-multicast one (an uplink, say a café's or a public address). It must
// listen on loopback and the LAN address alone, never on every address,
// and follow the LAN address when the laptop rejoins under a new lease.
func TestServeListensOnTheLANOnly(t *testing.T) {
	lan := testlan.New(t, 1)
	bin := buildPeerup(t)
	_, must := cli(t, bin)
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	os.MkdirAll(tree, 0o755)
	os.WriteFile(filepath.Join(tree, "hello"), []byte("hi\n"), 0o644)
	repo := filepath.Join(dir, "repo")
	must("keygen", "--name", "fleet", "--out", dir)
	must("publish", "--repo", repo, "--image", "school-laptop", "--key", dir+"/fleet.key", tree)

	ns := lan.Nodes[0].NS
	for _, args := range [][]string{
		{"-n", ns, "link", "add", "up0", "type", "veth", "peer", "name", "up1"},
		{"-n", ns, "link", "set", "up0", "multicast", "off"},
		{"-n", ns, "addr", "add", "192.0.2.7/24", "dev", "up0"},
		{"-n", ns, "link", "set", "up0", "up"},
		{"-n", ns, "link", "set", "up1", "up"},
	} {
		if out, err := lan.Command(1, "ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, out)
		}
	}
	cmd := lan.Command(1, bin, "serve", "--repo", repo)
	var log testlan.Log
	cmd.Stdout, cmd.Stderr = &log, &log
	lan.Serve(cmd, 7380, &log)
	wantListening(t, cmd.Process.Pid, []string{"10.99.", "127.0.0.1"}, log.String)
	moved := lan.Readdress(1, 9)
	wantListening(t, cmd.Process.Pid, []string{moved, "127.0.0.1"}, log.String)
}

// wantListening waits until pid listens on port 7380 at exactly the
// addresses want (each a prefix of one), or fails.
func wantListening(t *testing.T, pid int, want []string, log func() string) {
	t.Helper()
	var got []string
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		got = listening(pid, 7380)
		ok := len(got) == len(want)
		for i := 0; ok && i < len(want); i++ {
			ok = strings.HasPrefix(got[i], want[i])
		}
		if ok {
			return
		}
	}
	t.Fatalf("listening on %v, want %v\n%s", got, want, log())
}

// listening lists, sorted, the addresses pid's namespace listens on at
// port, from /proc/PID/net/tcp and tcp6 (a v6 socket bound to :: shows as
// "::").
func listening(pid, port int) []string {
	var out []string
	for _, f := range []string{"tcp", "tcp6"} {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, f))
		for _, line := range strings.Split(string(b), "\n")[1:] {
			fs := strings.Fields(line)
			if len(fs) < 4 || fs[3] != "0A" {
				continue
			}
			host, p, _ := strings.Cut(fs[1], ":")
			if p != fmt.Sprintf("%04X", port) {
				continue
			}
			raw, err := hex.DecodeString(host)
			if err != nil {
				continue
			}
			// The kernel prints each 32-bit word in host (little-endian) order.
			for i := 0; i+4 <= len(raw); i += 4 {
				slices.Reverse(raw[i : i+4])
			}
			out = append(out, net.IP(raw).String())
		}
	}
	slices.Sort(out)
	return out
}
