package main

import (
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/peerup/peerup/internal/testlan"
)

func buildPeerup(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "peerup")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/peerup/peerup/cmd/peerup").CombinedOutput(); err != nil {
		t.Fatalf("build peerup: %v\n%s", err, out)
	}
	return bin
}

// TestDemo runs the demo end to end, as `make demo` does: as root, a school
// server and five laptops in network namespaces on a shaped LAN, finding
// each other by mDNS and multicast. The demo fails unless every laptop ends
// on v3 with the published tree and the rolled-back one on v2.
func TestDemo(t *testing.T) {
	if why := testlan.Available(); why != "" {
		t.Skip("the LAN demo " + why + "; TestDemoLoopback runs the loopback one")
	}
	if err := run(buildPeerup(t), false, false); err != nil {
		t.Fatal(err)
	}
}

// TestDemoLoopback runs the demo as a user without root gets it: the same
// fleet on loopback ports, with static peers.
func TestDemoLoopback(t *testing.T) {
	if err := run(buildPeerup(t), false, true); err != nil {
		t.Fatal(err)
	}
}
