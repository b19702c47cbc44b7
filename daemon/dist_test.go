package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/godbus/dbus/v5"
)

// distUnits are the systemd units daemon/dist ships.
func distUnits() []string {
	return []string{"peerup.service", "peerup-mark-good.service", "peerup-apply-on-shutdown.service"}
}

func TestSystemdUnitsVerify(t *testing.T) {
	for _, name := range distUnits() {
		t.Run(name, func(t *testing.T) { verifyUnit(t, name) })
	}
}

// TestSystemdUnitsAreHardened holds every unit to an exposure of at most
// 4.0 in systemd's own assessment: a daemon that runs as root and takes
// bytes from the LAN gets only what it needs.
func TestSystemdUnitsAreHardened(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed (apt-get install systemd); skipping the exposure check")
	}
	for _, name := range distUnits() {
		t.Run(name, func(t *testing.T) { checkExposure(t, sa, filepath.Join("dist", name)) })
	}
}

// checkExposure holds the unit file at path to an exposure of at most 4.0
// in systemd-analyze security's offline assessment.
func checkExposure(t *testing.T, sa, path string) {
	t.Helper()
	out, err := exec.Command(sa, "security", "--offline=yes", path).CombinedOutput()
	_, rest, ok := strings.Cut(string(out), "Overall exposure level for "+filepath.Base(path)+": ")
	var level float64
	if ok {
		_, err = fmt.Sscanf(rest, "%f", &level)
	}
	if !ok || err != nil {
		t.Fatalf("systemd-analyze security %s gave no exposure level (%v):\n%s", path, err, out)
	}
	t.Logf("%s: exposure %.1f", path, level)
	if level > 4.0 {
		t.Errorf("%s: exposure %.1f, want at most 4.0:\n%s", path, level, out)
	}
}

// analyzeVerify runs systemd-analyze verify on the unit file at path with
// env added, and fails the test on anything it reports. Without a running
// systemd (containers, CI) verify still checks the unit's syntax and
// directives; it only complains about the manager, which is not reported.
func analyzeVerify(t *testing.T, sa, path string, env ...string) {
	t.Helper()
	cmd := exec.Command(sa, "verify", path)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	var msgs []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if line != "" && !strings.Contains(line, "System has not been booted with systemd") && !strings.Contains(line, "Failed to connect to bus") {
			msgs = append(msgs, line)
		}
	}
	if len(msgs) > 0 {
		t.Errorf("systemd-analyze verify %s: %v\n%s", path, err, strings.Join(msgs, "\n"))
	}
}

func verifyUnit(t *testing.T, name string) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed (apt-get install systemd); skipping unit verification")
	}
	unit, err := os.ReadFile("dist/" + name)
	if err != nil {
		t.Fatal(err)
	}
	// The shipped unit runs /usr/bin/peerup; verify a copy that points at a
	// binary that exists here (verify checks ExecStart is executable).
	bin, _ := os.Executable()
	dir := t.TempDir()
	fixed := bytes.Replace(unit, []byte("/usr/bin/peerup"), []byte(bin), 1)
	os.WriteFile(filepath.Join(dir, name), fixed, 0o644)
	// verify also looks up the man pages Documentation= names: those the
	// package installs, generated here from the commands' help.
	peerup := buildBinary(t)
	if out, err := exec.Command(peerup, "man", filepath.Join(dir, "man", "man1")).CombinedOutput(); err != nil {
		t.Fatalf("peerup man: %v\n%s", err, out)
	}
	analyzeVerify(t, sa, filepath.Join(dir, name), "MANPATH="+filepath.Join(dir, "man"))
}

// TestConfigFileIsCurrent: the shipped peerup.toml is ExampleConfig, so it
// lists every setting with its help and default.
func TestConfigFileIsCurrent(t *testing.T) {
	want := ExampleConfig(LaptopConfig())
	checkGenerated(t, filepath.Join("dist", "peerup.toml"), want, "PEERUP_UPDATE_CONFIG", "TestConfigFileIsCurrent")
	// Uncommented, every default reads back as itself.
	var lines []string
	for _, l := range strings.Split(string(want), "\n") {
		if k, ok := strings.CutPrefix(l, "# "); ok && strings.Contains(k, " = ") {
			l = k
		}
		lines = append(lines, l)
	}
	all := filepath.Join(t.TempDir(), "all.toml")
	os.WriteFile(all, []byte(strings.Join(lines, "\n")), 0o644)
	c, err := LoadConfig(all)
	if err != nil {
		t.Fatalf("every key uncommented: %v", err)
	}
	if w := Defaults(); c.MemoryMiB != w.MemoryMiB || c.MaxUploads != w.MaxUploads || c.Listen != w.Listen {
		t.Errorf("uncommented defaults read as %+v", c)
	}
}

func TestConfigFileAndUnknownKeys(t *testing.T) {
	c, err := LoadConfig("dist/peerup.toml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Sysroot != "/sysroot" || c.Policy != "download" || len(c.Trust) != 1 {
		t.Errorf("shipped config read as %+v", c)
	}
	bad := filepath.Join(t.TempDir(), "bad.toml")
	os.WriteFile(bad, []byte("sysroot = \"/x\"\npolcy = \"auto\"\n"), 0o644)
	if _, err := LoadConfig(bad); err == nil || !strings.Contains(err.Error(), "polcy") {
		t.Errorf("typo in config: err = %v", err)
	}
}

// TestBusPolicy runs a dbus-daemon with the shipped policy file: root owns
// the name, anyone may read properties, and a user outside the group may
// not call Apply or Rollback.
func TestBusPolicy(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run a bus client as another user")
	}
	bin, err := exec.LookPath("dbus-daemon")
	if err != nil {
		t.Skip("dbus-daemon not installed")
	}
	busctl, err := exec.LookPath("busctl")
	if err != nil {
		t.Skip("busctl not installed")
	}
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("setpriv not installed (util-linux)")
	}
	// Not t.TempDir: its parent is 0700, and the bus socket must be
	// reachable by the unprivileged client.
	dir, err := os.MkdirTemp("", "peerup-bus-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755)
	policy, _ := os.ReadFile("dist/org.peerup.Updater1.conf")
	os.WriteFile(filepath.Join(dir, "org.peerup.Updater1.conf"), policy, 0o644)
	// A system-bus-like config: deny by default, then our policy.
	conf := `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN" "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=` + dir + `/bus</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_destination="org.freedesktop.DBus"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
  </policy>
  <includedir>` + dir + `</includedir>
</busconfig>`
	os.WriteFile(filepath.Join(dir, "bus.conf"), []byte(conf), 0o644)
	cmd := exec.Command(bin, "--config-file="+filepath.Join(dir, "bus.conf"), "--nofork", "--print-address=1")
	out, _ := cmd.StdoutPipe()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	line := make([]byte, 512)
	n, err := out.Read(line)
	if err != nil {
		t.Fatalf("dbus-daemon: %v\n%s", err, stderr.String())
	}
	addr := strings.TrimSpace(string(line[:n]))

	f := newTestFleet(t)
	f.publish(t, 1)
	ctx, cancel := context.WithCancel(context.Background())
	d, err := Start(ctx, Config{Sysroot: t.TempDir(), Trust: []string{f.pub}, Listen: "127.0.0.1:0", Bus: addr}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); d.Wait(ctx) }()

	asNobody := func(args ...string) error {
		c := exec.Command(setpriv, append([]string{"--reuid=65534", "--regid=65534", "--clear-groups", busctl, "--address=" + addr}, args...)...)
		var e bytes.Buffer
		c.Stderr = &e
		if err := c.Run(); err != nil {
			return errors.New(strings.TrimSpace(e.String()))
		}
		return nil
	}
	if err := asNobody("get-property", BusName, string(ObjectPath), Interface, "State"); err != nil {
		t.Errorf("nobody cannot read State: %v", err)
	}
	for _, m := range []string{"Apply", "Rollback"} {
		err := asNobody("call", BusName, string(ObjectPath), Interface, m)
		if err == nil || !strings.Contains(err.Error(), "denied") {
			t.Errorf("nobody calling %s: %v, want access denied", m, err)
		}
	}
	// Root may: Rollback reaches the daemon and fails on state, not policy.
	conn, err := dbus.Connect(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	err = conn.Object(BusName, ObjectPath).Call(Interface+".Apply", 0).Err
	var de dbus.Error
	if !errors.As(err, &de) || de.Name != ErrorWrongState {
		t.Errorf("root calling Apply: %v, want %s", err, ErrorWrongState)
	}
}

// TestInterfaceXMLIsCurrent: the shipped introspection document is the
// interface the daemon exports (PEERUP_UPDATE_XML=1 rewrites it).
func TestInterfaceXMLIsCurrent(t *testing.T) {
	want, err := InterfaceXML()
	if err != nil {
		t.Fatal(err)
	}
	checkGenerated(t, filepath.Join("dist", "org.peerup.Updater1.xml"), want, "PEERUP_UPDATE_XML", "TestInterfaceXMLIsCurrent")
}

// checkGenerated fails unless the shipped file at path is want, what the
// code generates; with env set, the test writes it first.
func checkGenerated(t *testing.T, path string, want []byte, env, test string) {
	t.Helper()
	if os.Getenv(env) != "" {
		if err := os.WriteFile(path, want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s is not what the code generates; run %s=1 go test -run %s ./daemon\n%s", path, env, test, want)
	}
}

// TestMakeInstall: make install DESTDIR=… lays out every file daemon/dist
// ships, unchanged, and both binaries, as a package would; a second
// install keeps the admin's config file.
func TestMakeInstall(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("needs make (apt-get install make)")
	}
	dest := t.TempDir()
	install := func() {
		t.Helper()
		if out, err := exec.Command("make", "-C", "..", "install", "DESTDIR="+dest).CombinedOutput(); err != nil {
			t.Fatalf("make install: %v\n%s", err, out)
		}
	}
	install()
	installed := map[string][]byte{} // base name -> contents, of what landed
	err := filepath.WalkDir(dest, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		rel, _ := filepath.Rel(dest, p)
		installed[rel] = b
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	err = filepath.WalkDir("dist", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		want, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for rel, got := range installed {
			if filepath.Base(rel) == d.Name() && bytes.Equal(got, want) {
				return nil
			}
		}
		t.Errorf("make install does not install %s", p)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, bin := range []string{"usr/bin/peerup", "usr/bin/peerup-boot"} {
		if fi, err := os.Stat(filepath.Join(dest, bin)); err != nil || fi.Mode()&0o111 == 0 {
			t.Errorf("%s: not installed as an executable (%v)", bin, err)
		}
	}
	// The manual: the command and every verb, as the unit's
	// Documentation= names them.
	for _, page := range []string{"peerup.1", "peerup-daemon.1", "peerup-update.1", "peerup-publish.1", "peerup-rollback.1"} {
		b, err := os.ReadFile(filepath.Join(dest, "usr/share/man/man1", page))
		if err != nil || !bytes.Contains(b, []byte(".SH NAME")) {
			t.Errorf("man page %s: not installed, or not a man page (%v)", page, err)
		}
	}
	conf := filepath.Join(dest, "etc", "peerup", "peerup.toml")
	if err := os.WriteFile(conf, []byte("policy = \"notify\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	install()
	if b, _ := os.ReadFile(conf); string(b) != "policy = \"notify\"\n" {
		t.Errorf("a second make install replaced the admin's config file")
	}
}

// TestDebianPackage builds the .deb as a distribution would
// (dpkg-buildpackage -us -uc -b on a copy of the tree), holds it to no
// lintian errors, and, as root on a machine without a peerup package of
// its own, installs it with dpkg -i, checks the installed units with
// systemd-analyze verify and security, and purges it.
func TestDebianPackage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the package")
	}
	for _, tool := range []string{"dpkg-buildpackage", "dh", "lintian"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (apt-get install dpkg-dev debhelper lintian); skipping the package build", tool)
		}
	}
	// A copy of the checkout, as its files are now: the build writes
	// debian/ scratch and the .deb beside the source folder.
	src := filepath.Join(t.TempDir(), "peerup")
	files, err := exec.Command("git", "-C", "..", "ls-files", "-co", "--exclude-standard").Output()
	if err != nil {
		t.Skipf("not a git checkout (%v); skipping the package build", err)
	}
	for _, f := range strings.Fields(string(files)) {
		b, err := os.ReadFile(filepath.Join("..", f))
		if err != nil {
			continue // deleted in the working tree
		}
		fi, _ := os.Stat(filepath.Join("..", f))
		dst := filepath.Join(src, f)
		os.MkdirAll(filepath.Dir(dst), 0o755)
		if err := os.WriteFile(dst, b, fi.Mode().Perm()); err != nil {
			t.Fatal(err)
		}
	}
	build := exec.Command("dpkg-buildpackage", "-us", "-uc", "-b")
	build.Dir = src
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("dpkg-buildpackage: %v\n%s", err, out)
	}
	debs, _ := filepath.Glob(filepath.Join(filepath.Dir(src), "peerup_*_*.deb"))
	if len(debs) != 1 {
		t.Fatalf("dpkg-buildpackage made %v, want one peerup .deb", debs)
	}
	deb := debs[0]
	out, _ := exec.Command("lintian", deb).CombinedOutput()
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "E: ") {
			t.Errorf("lintian: %s", line)
		}
	}
	t.Logf("lintian:\n%s", out)

	if os.Geteuid() != 0 {
		t.Skip("dpkg -i needs root; the package built and lintian passed")
	}
	if err := exec.Command("dpkg-query", "-W", "peerup").Run(); err == nil {
		t.Skip("a peerup package is installed on this machine: not replacing it")
	}
	t.Cleanup(func() { exec.Command("dpkg", "--purge", "peerup").Run() })
	if out, err := exec.Command("dpkg", "-i", deb).CombinedOutput(); err != nil {
		t.Fatalf("dpkg -i: %v\n%s", err, out)
	}
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed (apt-get install systemd); the package installed")
	}
	for _, unit := range distUnits() {
		// The installed man pages are what Documentation= names.
		analyzeVerify(t, sa, "/lib/systemd/system/"+unit)
		checkExposure(t, sa, "/lib/systemd/system/"+unit)
	}
	if out, err := exec.Command("/usr/bin/peerup", "--version").CombinedOutput(); err != nil {
		t.Errorf("the installed peerup does not run: %v\n%s", err, out)
	}
}

// TestTwoClonesBuildTheSameBinaries: make build in two clones of this
// commit at different paths makes byte-identical binaries (-trimpath, the
// commit stamped, nothing of the machine), so a distribution can check a
// build by rebuilding it.
func TestTwoClonesBuildTheSameBinaries(t *testing.T) {
	if testing.Short() {
		t.Skip("builds peerup twice")
	}
	if _, err := exec.Command("git", "-C", "..", "rev-parse", "HEAD").Output(); err != nil {
		t.Skipf("not a git checkout (%v)", err)
	}
	dirs := []string{filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "other", "place", "pu")}
	var bins [][]byte
	for _, d := range dirs {
		if out, err := exec.Command("git", "clone", "-q", "..", d).CombinedOutput(); err != nil {
			t.Fatalf("git clone: %v\n%s", err, out)
		}
		if out, err := exec.Command("make", "-C", d, "build").CombinedOutput(); err != nil {
			t.Fatalf("make build in %s: %v\n%s", d, err, out)
		}
		for _, b := range []string{"bin/peerup", "bin/peerup-boot"} {
			data, err := os.ReadFile(filepath.Join(d, b))
			if err != nil {
				t.Fatal(err)
			}
			bins = append(bins, data)
		}
	}
	if !bytes.Equal(bins[0], bins[2]) || !bytes.Equal(bins[1], bins[3]) {
		t.Errorf("two clones at %s and %s built different binaries", dirs[0], dirs[1])
	}
}
