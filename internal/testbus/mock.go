package testbus

import (
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
)

// Mock runs python-dbusmock's template (upower, networkmanager, ...) on
// the bus at addr as the system bus it is written for, and returns once
// the service owns its name; it stops when the test ends. Without
// python3-dbusmock the test skips, saying which package to install.
func Mock(t testing.TB, addr, template, name string) {
	t.Helper()
	py := dbusmockPython()
	if py == "" {
		t.Skip("python3-dbusmock not installed (apt-get install python3-dbusmock); skipping the UPower/NetworkManager tests")
	}
	cmd := exec.Command(py, "-m", "dbusmock", "--template", template)
	cmd.Env = append(os.Environ(), "DBUS_SYSTEM_BUS_ADDRESS="+addr)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() })
	conn, err := dbus.Connect(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var has bool
		if err := conn.BusObject().Call("org.freedesktop.DBus.NameHasOwner", 0, name).Store(&has); err == nil && has {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("dbusmock --template %s did not take %s", template, name)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// dbusmockPython is a Python that has the dbusmock module: Debian's
// (a python3 earlier on PATH, such as pyenv's, may lack it), or "".
func dbusmockPython() string {
	for _, py := range []string{"/usr/bin/python3", "python3"} {
		if exec.Command(py, "-c", "import dbusmock").Run() == nil {
			return py
		}
	}
	return ""
}
