// Package testbus starts a private D-Bus daemon for tests: a real
// dbus-daemon on a socket in the test's temporary folder, so tests of the
// daemon's API and of the CLI talking to it never touch the machine's own
// buses.
package testbus

import (
	"bufio"
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

// Private starts a session-type dbus-daemon for the test and returns its
// address; it stops when the test ends. Without dbus-daemon the test
// skips, saying which package to install.
func Private(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("dbus-daemon")
	if err != nil {
		t.Skip("dbus-daemon not installed (apt-get install dbus); skipping the D-Bus tests")
	}
	dir := t.TempDir()
	cmd := exec.Command(bin, "--session", "--nofork", "--print-address=1", "--address=unix:path="+dir+"/bus")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() })
	addr, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("dbus-daemon did not start: %v", err)
	}
	return strings.TrimSpace(addr)
}
