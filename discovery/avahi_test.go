package discovery_test

import (
	"bufio"
	"context"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/peerup/peerup/apply"
	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/internal/testlan"
	"github.com/peerup/peerup/manifest"
	"github.com/peerup/peerup/transfer"
)

func need(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			if _, err := os.Stat("/usr/sbin/" + tool); err != nil {
				t.Skipf("%s not installed (apt-get install avahi-daemon avahi-utils dbus); skipping Avahi interop", tool)
			}
		}
	}
}

// sysrootAtV1 makes a sysroot running version 1 of school-laptop.
func sysrootAtV1(t *testing.T) (sysroot, pub string) {
	t.Helper()
	dir := t.TempDir()
	key, _ := manifest.GenerateKey("fleet")
	_, pub, err := manifest.WriteKeyPair(key, dir, "fleet")
	if err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(dir+"/tree/etc", 0o755)
	os.WriteFile(dir+"/tree/etc/os-release", []byte("VERSION=1\n"), 0o644)
	repo, _ := blobstore.OpenRepo(dir + "/repo")
	if _, err := repo.Publish(context.Background(), dir+"/tree", blobstore.PublishOptions{Image: "school-laptop", Signer: manifest.NewSigner(key)}); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(transfer.NewHandler(repo.Dir(), nil))
	defer srv.Close()
	cl, _ := transfer.NewClient(srv.URL, nil)
	kr, _ := manifest.LoadKeyring(pub)
	s, _ := apply.Open(dir + "/sysroot")
	if _, err := s.Pull(context.Background(), cl, apply.PullOptions{Trust: kr}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Apply(1); err != nil {
		t.Fatal(err)
	}
	return s.Dir(), pub
}

func buildPeerup(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "peerup")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/peerup/peerup/cmd/peerup").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return bin
}

// TestAvahiSeesOurAdvert: avahi-browse, in another node, lists the daemon's
// service with the right TXT.
func TestAvahiSeesOurAdvert(t *testing.T) {
	need(t, "avahi-daemon", "avahi-browse", "dbus-daemon", "unshare")
	lan := testlan.New(t, 2)
	bin := buildPeerup(t)
	sysroot, pub := sysrootAtV1(t)
	d := lan.Command(1, bin, "daemon", "--sysroot", sysroot, "--trust", pub, "--bus", "none", "--iface", "e1", "--no-multicast")
	d.Stderr = os.Stderr
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { d.Process.Signal(syscall.SIGTERM); d.Wait() }()

	// avahi-browse resolves what it finds; our responder answers its
	// queries by multicast from port 5353, as Avahi requires. Browse until
	// our service shows up, within avahi-browse's own -t rounds.
	script := testlan.AvahiScript(t.TempDir(), "e2", "", `for i in 1 2 3 4 5 6 7 8 9 10; do avahi-browse -rtp _peerup._tcp | grep '^=' && exit 0; done; exit 1`)
	out, err := lan.Command(2, "unshare", "-m", "sh", "-c", script).CombinedOutput()
	if err != nil {
		t.Fatalf("avahi-browse did not list our service: %v\n%s", err, out)
	}
	line := string(out)
	for _, want := range []string{"_peerup._tcp", lan.Nodes[0].IP, ";7380;", `"image=school-laptop"`, `"version=1"`, `"txtvers=1"`} {
		if !strings.Contains(line, want) {
			t.Errorf("avahi-browse output lacks %s:\n%s", want, line)
		}
	}
}

// TestWeFindAvahiPublishedPeer: a service Avahi publishes from a static
// service file is found by our discovery.
func TestWeFindAvahiPublishedPeer(t *testing.T) {
	need(t, "avahi-daemon", "dbus-daemon", "unshare")
	lan := testlan.New(t, 2)
	bin := buildPeerup(t)
	services := t.TempDir()
	os.WriteFile(filepath.Join(services, "peerup.service"), []byte(`<?xml version="1.0" standalone='no'?>
<!DOCTYPE service-group SYSTEM "avahi-service.dtd">
<service-group>
  <name>avahi peer</name>
  <service>
    <type>_peerup._tcp</type>
    <port>7380</port>
    <txt-record>txtvers=1</txt-record>
    <txt-record>image=school-laptop</txt-record>
    <txt-record>version=7</txt-record>
  </service>
</service-group>
`), 0o644)
	script := testlan.AvahiScript(t.TempDir(), "e2", services, "echo ready; exec sleep 600")
	av := lan.Command(2, "unshare", "-m", "sh", "-c", script)
	out, _ := av.StdoutPipe()
	av.Stderr = os.Stderr
	if err := av.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { av.Process.Signal(syscall.SIGKILL); av.Wait() }()
	if _, err := bufio.NewReader(out).ReadString('\n'); err != nil {
		t.Fatalf("avahi did not start: %v", err)
	}
	found, err := lan.Command(1, bin, "discover", "--iface", "e1", "--image", "school-laptop", "--count", "1", "--timeout", "30s").CombinedOutput()
	if err != nil {
		t.Fatalf("discover: %v\n%s", err, found)
	}
	want := "http://" + lan.Nodes[1].IP + ":7380/ school-laptop 7"
	if !strings.Contains(string(found), want) {
		t.Fatalf("want %q in\n%s", want, found)
	}
}
