package main

import (
	"os/exec"
	"path/filepath"
	"testing"
)

// TestDemo runs the demo end to end, as `make demo` does on a fresh machine.
func TestDemo(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "peerup")
	if out, err := exec.Command("go", "build", "-o", bin, "peerup/cmd/peerup").CombinedOutput(); err != nil {
		t.Fatalf("build peerup: %v\n%s", err, out)
	}
	if err := run(bin, false); err != nil {
		t.Fatal(err)
	}
}
