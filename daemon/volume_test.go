package daemon

import (
	"context"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/peerup/peerup/apply"
)

// propsLog hands the test every change of the daemon's properties.
type propsLog struct{ ch chan Props }

func (l propsLog) PropsChanged(old, cur Props) { l.ch <- cur }
func (l propsLog) UpdateReady(uint64)          {}

// until waits for properties that satisfy want.
func (l propsLog) until(t *testing.T, c *Core, what string, want func(Props) bool) {
	t.Helper()
	if want(c.Props()) {
		return
	}
	deadline := time.After(60 * time.Second)
	for {
		select {
		case p := <-l.ch:
			if want(p) {
				return
			}
		case <-deadline:
			t.Fatalf("timed out waiting for %s; properties: %+v", what, c.Props())
		}
	}
}

// testLog shows the daemon's log with the test's, when it fails or with -v.
type testLog struct{ t *testing.T }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// TestVolumeGainsARepo: a laptop with no network peer and a configured
// mount path; when a USB stick holding v2 appears there — written into the
// folder, already there when the daemon starts, or mounted onto it — the
// daemon finds v2 and acts by its policy, as for a LAN peer.
func TestVolumeGainsARepo(t *testing.T) {
	tests := []struct {
		name   string
		policy string
		when   string // "written", "at start" or "mounted"
		want   State
	}{
		{"auto applies", "auto", "written", StateUpdateApplied},
		{"download stages", "download", "written", StateUpdateReady},
		{"notify tells", "notify", "written", StateUpdateAvailable},
		{"there at start", "auto", "at start", StateUpdateApplied},
		{"stick mounted on the path", "auto", "mounted", StateUpdateApplied},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newTestFleet(t)
			f.publish(t, 1)
			sysroot := f.sysrootAt(t, 1)
			f.publish(t, 2)
			vol, stick := t.TempDir(), t.TempDir()
			exportTo := func(dir string) {
				t.Helper()
				if _, err := apply.Export(context.Background(), f.repo, []string{dir}, apply.ExportOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			if tc.when == "mounted" {
				if os.Getuid() != 0 {
					t.Skip("needs root to mount the stick")
				}
				exportTo(stick) // the stick, written elsewhere
			}
			if tc.when == "at start" {
				exportTo(vol)
			}

			ctx, cancel := context.WithCancel(context.Background())
			d, err := Start(ctx, Config{Sysroot: sysroot, Trust: []string{f.pub}, Listen: "127.0.0.1:0", Bus: "none",
				Policy: tc.policy, Volumes: []string{vol}}, nil, slog.New(slog.NewTextHandler(testLog{t}, nil)))
			if err != nil {
				t.Fatal(err)
			}
			defer func() { cancel(); d.Wait(ctx) }()
			log := propsLog{make(chan Props, 4096)}
			d.Core.Observe(log)

			switch tc.when {
			case "written":
				exportTo(vol)
			case "mounted":
				if out, err := exec.Command("mount", "--bind", "-o", "ro", stick, vol).CombinedOutput(); err != nil {
					t.Skipf("cannot mount: %v %s", err, out)
				}
				t.Cleanup(func() { exec.Command("umount", "-l", vol).Run() })
			}
			log.until(t, d.Core, string(tc.want), func(p Props) bool {
				return p.State == tc.want && p.AvailableVersion == 2 || p.State == tc.want && p.CurrentVersion == 2
			})
			if tc.want == StateUpdateApplied {
				if target, _ := os.Readlink(sysroot + "/current"); target != "trees/2" {
					t.Errorf("current -> %s", target)
				}
				got, _ := os.ReadFile(sysroot + "/current/etc/os-release")
				if !strings.Contains(string(got), "VERSION=2") {
					t.Errorf("current/etc/os-release = %q", got)
				}
			}
		})
	}
}

func TestConfigVolumes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "peerup.toml")
	os.WriteFile(path, []byte("sysroot = \"/sysroot\"\nvolumes = [\"/media/peerup\", \"/mnt/usb\"]\nscan-mounts = true\n"), 0o644)
	c, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(c.Volumes, " ") != "/media/peerup /mnt/usb" || !c.ScanMounts {
		t.Errorf("config read as %+v", c)
	}
}

func TestParseMountinfo(t *testing.T) {
	in := `22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
95 22 8:17 / /media/pupil/SCHOOL\040STICK rw,nosuid - vfat /dev/sdb1 rw
96 22 0:50 / /run/media/a\134b rw - exfat /dev/sdc1 rw
`
	got := parseMountinfo(strings.NewReader(in))
	want := []string{"/", "/media/pupil/SCHOOL STICK", `/run/media/a\b`}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("mount points = %q, want %q", got, want)
	}
	for _, tc := range []struct {
		path string
		want bool
	}{{"/media/pupil/SCHOOL STICK", true}, {"/run/media/x", true}, {"/mnt/usb", true}, {"/", false}, {"/home", false}, {"/mediax", false}} {
		if under(tc.path, mountRoots()) != tc.want {
			t.Errorf("under(%q) = %v", tc.path, !tc.want)
		}
	}
}

// TestScanMountsFindsAStick: with scan-mounts, a stick mounted anywhere
// under the removable-media roots is found, and so is the next stick
// mounted there after it is taken out.
func TestScanMountsFindsAStick(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to mount the stick")
	}
	f := newTestFleet(t)
	f.publish(t, 1)
	sticks := []string{t.TempDir(), t.TempDir()}
	if _, err := apply.Export(context.Background(), f.repo, sticks, apply.ExportOptions{}); err != nil {
		t.Fatal(err)
	}
	media := t.TempDir()
	v := newVolumes(nil, true, slog.New(slog.NewTextHandler(testLog{t}, nil)))
	v.roots = []string{media + "/"}
	found := make(chan string, 16)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		v.run(ctx, func(p string) { found <- p }, func() bool { return true })
	}()
	defer func() { cancel(); <-done }()
	mountPoint := filepath.Join(media, "SCHOOL STICK")
	os.MkdirAll(mountPoint, 0o755)
	for _, stick := range sticks {
		if out, err := exec.Command("mount", "--bind", stick, mountPoint).CombinedOutput(); err != nil {
			t.Skipf("cannot mount: %v %s", err, out)
		}
		select {
		case p := <-found:
			if p != mountPoint {
				t.Errorf("found %q, want %q", p, mountPoint)
			}
		case <-time.After(60 * time.Second):
			t.Fatalf("the stick mounted from %s was not found", stick)
		}
		if got := v.Present(); len(got) != 1 || got[0] != mountPoint {
			t.Errorf("present: %q", got)
		}
		if out, err := exec.Command("umount", mountPoint).CombinedOutput(); err != nil {
			t.Fatalf("umount: %v %s", err, out)
		}
	}
}
