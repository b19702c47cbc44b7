// Command peerup-demo shows a school's fleet on one machine: a school server
// and five laptops running the real peerup daemon, in network namespaces on
// a shaped LAN when run as root and on loopback ports otherwise. The server
// publishes v2 and v3; the demo prints, live, who heard of what, who
// fetched what from whom, and the versions the laptops end on, then rolls
// one laptop back. It works only inside a temporary folder.
package main

import (
	"bytes"
	"io/fs"

	"context"
	"errors"
	"flag"
	"fmt"
	"github.com/peerup/peerup/internal/testlan"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

func main() {
	peerup := flag.String("peerup", "bin/peerup", "path to the peerup binary")
	keep := flag.Bool("keep", false, "keep the demo folder afterwards")
	loopback := flag.Bool("loopback", false, "run the fleet on loopback ports even as root")
	flag.Parse()
	if err := run(*peerup, *keep, *loopback); err != nil {
		fmt.Fprintf(os.Stderr, "demo failed: %v\n", err)
		os.Exit(1)
	}
}

type demo struct {
	bin string
	dir string
}

// peerup runs one command, echoing it with paths shortened to the demo
// folder, and returns its output.
func (d *demo) peerup(args ...string) (string, error) {
	shown := d.show(args)
	fmt.Printf("   $ peerup %s\n", shown)
	out, err := exec.Command(d.bin, args...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("peerup %s: %v\n%s", shown, err, out)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		fmt.Printf("     %s\n", strings.ReplaceAll(line, d.dir+"/", ""))
	}
	return string(out), nil
}

func run(bin string, keep, loopback bool) error {
	abs, err := filepath.Abs(bin)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "peerup-demo-")
	if err != nil {
		return err
	}
	if keep {
		defer fmt.Printf("\nEverything is left in %s\n", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	d := &demo{bin: abs, dir: dir}
	r := &testlan.Runner{}
	return r.Run(func() error { return d.run(r, loopback) })
}

func (d *demo) run(r *testlan.Runner, loopback bool) error {
	ctx := context.Background()
	dir := d.dir
	var lan *testlan.LAN
	where := "on loopback ports (run as root for a LAN of network namespaces)"
	if why := testlan.Available(); why == "" && !loopback {
		// Links as slow as a school's Wi-Fi, so sharing shows.
		lan = testlan.NewShaped(r, laptops+1, "8mbit")
		where = "each in its own network namespace on a shared 8 Mbit/s LAN"
	}
	fmt.Printf("peerup demo: a school server and %d laptops, %s.\n", laptops, where)
	fmt.Printf("The server publishes v2 (a security fix) and then v3 (a new term); the laptops find each\n")
	fmt.Printf("version, fetch it from the server and from each other, check every byte, and switch.\nWork folder: %s\n\n", dir)

	fmt.Println("1. The build server makes the fleet's signing key and publishes v1 of a small OS image.")
	if _, err := d.peerup("keygen", "--name", "fleet", "--out", dir+"/keys"); err != nil {
		return err
	}
	tree := filepath.Join(dir, "build/rootfs")
	imageBytes := 0
	publish := func(v int, label string) error {
		if err := makeTree(tree, v); err != nil {
			return err
		}
		if err := schoolFiles(tree, v); err != nil {
			return err
		}
		var err error
		if imageBytes, err = treeBytes(tree); err != nil {
			return err
		}
		_, err = d.peerup("publish", "--repo", dir+"/repo", "--image", "demo-laptop", "--key", dir+"/keys/fleet.key", "--label", label, tree)
		return err
	}
	if err := publish(1, "Autumn term"); err != nil {
		return err
	}

	fmt.Printf("\n2. Each laptop is installed with v1 (here from the repo folder; laptops 2-%d likewise).\n", laptops)
	pub := dir + "/keys/fleet.pub"
	var sysroots []string
	for i := 1; i <= laptops; i++ {
		s := fmt.Sprintf("%s/laptop-%d", dir, i)
		sysroots = append(sysroots, s)
		args := []string{"update", "--sysroot", s, "--trust", pub, "--from", dir + "/repo"}
		if i == 1 {
			if _, err := d.peerup(args...); err != nil {
				return err
			}
		} else if out, err := exec.Command(d.bin, args...).CombinedOutput(); err != nil {
			return fmt.Errorf("install laptop-%d: %v\n%s", i, err, out)
		}
	}

	fmt.Println("\n3. The school server seeds the repo and every laptop runs the daemon (policy: auto):")
	fmt.Printf("   $ peerup daemon --repo repo --trust keys/fleet.pub          # school-server\n")
	fmt.Printf("   $ peerup daemon --sysroot laptop-N --trust keys/fleet.pub   # laptop-1 ... laptop-%d\n", laptops)
	f, err := d.startFleet(ctx, lan, dir+"/repo", pub, sysroots)
	if err != nil {
		return err
	}
	defer f.stop()

	fmt.Println("\n4. The server publishes v2, a security fix: " + fixSummary + ".")
	fmt.Println("   Nobody tells the laptops. (Times are from the publish.)")
	f.mark()
	if err := publish(2, "Security fix for grep and tar"); err != nil {
		return err
	}
	most, err := f.follow(ctx, 2, imageBytes)
	if err != nil {
		return err
	}
	// What a security fix costs a laptop is the point of the demo.
	if most > 64<<10 {
		return fmt.Errorf("a laptop received %s for v2's security fix, where kilobytes should do", size(most))
	}
	if lan != nil {
		fmt.Println("\n5. And v3, a new term's lessons (1 MiB, new data): the laptops, on v2, hear it on v2's")
		fmt.Println("   multicast group and share it with each other.")
	} else {
		fmt.Println("\n5. And v3, a new term's lessons (1 MiB, new data): the laptops ask the others every")
		fmt.Println("   second, find it, and share it with each other.")
	}
	f.mark()
	if err := publish(3, "Summer term"); err != nil {
		return err
	}
	if _, err := f.follow(ctx, 3, imageBytes); err != nil {
		return err
	}
	page, view, err := f.fleetPage(ctx, lan, 3)
	if err != nil {
		return err
	}
	f.stop()

	fmt.Println("\n6. Every laptop runs v3, built beside v2 from hard links, its files checked against the manifest:")
	for i, s := range sysroots {
		if err := sameTree(tree, filepath.Join(s, "current")); err != nil {
			return fmt.Errorf("laptop-%d: %w", i+1, err)
		}
		rel, _ := os.ReadFile(filepath.Join(s, "current/etc/os-release"))
		fmt.Printf("   laptop-%d  %s\n", i+1, firstLine(rel))
	}

	last := sysroots[laptops-1]
	fmt.Printf("\n7. The teacher on laptop-%d finds a problem with v3 and rolls back; v2 was kept.\n", laptops)
	if _, err := d.peerup("rollback", "--sysroot", last); err != nil {
		return err
	}
	rel, _ := os.ReadFile(filepath.Join(last, "current/etc/os-release"))
	fmt.Printf("     laptop-%d now runs: %s\n", laptops, firstLine(rel))
	if !strings.Contains(string(rel), "VERSION_ID=2") {
		return fmt.Errorf("laptop-%d did not roll back to v2", laptops)
	}

	fmt.Println("\n8. An old version replayed to a laptop is refused, and nothing changes.")
	_, err = d.peerup("pull", "--sysroot", sysroots[0], "--trust", pub, "--from", dir+"/repo", "--version", "1")
	if err == nil {
		return errors.New("an old version was accepted")
	}
	fmt.Printf("     refused: %s\n", lastLine(err.Error()))

	fmt.Printf("\n9. The school server's fleet page was at %s (the school LAN only;\n", page)
	fmt.Println("   `peerup fleet --from URL` prints it in a terminal). Once v3 was everywhere it showed:")
	var on []string
	for _, c := range view.Versions {
		on = append(on, fmt.Sprintf("v%d: %d", c.Version, c.Machines))
	}
	fmt.Printf("     laptops by version: %s; fell back: %d; failed: %d\n", strings.Join(on, ", "), view.FellBack, view.Failed)
	fmt.Printf("     bytes the laptops got from the server: %s, from each other: %s\n", size(int(view.ServerBytes)), size(int(view.NeighbourBytes)))
	fmt.Println("\nDone. `make test` runs the full test suite; README.md explains the rest.")
	return nil
}

// sameTree checks that got holds want's regular files with the same bytes.
func sameTree(want, got string) error {
	return filepath.WalkDir(want, func(p string, e fs.DirEntry, err error) error {
		if err != nil || !e.Type().IsRegular() {
			return err
		}
		rel, _ := filepath.Rel(want, p)
		a, _ := os.ReadFile(p)
		b, err := os.ReadFile(filepath.Join(got, rel))
		if err != nil || !bytes.Equal(a, b) {
			return fmt.Errorf("%s differs from the published tree", rel)
		}
		return nil
	})
}

// show spells a command line as a user would type it in the demo folder.
func (d *demo) show(args []string) string {
	var out []string
	for _, a := range args {
		a = strings.ReplaceAll(a, d.dir+"/", "")
		if strings.ContainsAny(a, " '\"") {
			a = "'" + a + "'"
		}
		out = append(out, a)
	}
	return strings.Join(out, " ")
}

// makeTree writes version v of a small OS tree: a few real binaries from this
// machine, text files, a symlink and an empty directory.
func makeTree(root string, v int) error {
	files := map[string]string{
		"etc/os-release": fmt.Sprintf("PRETTY_NAME=\"Demo School OS %d\"\nVERSION_ID=%d\n", v, v),
		"etc/hostname":   "laptop\n",
		"etc/motd":       "Welcome to the school laptop.\n",
	}
	if v >= 3 {
		files["usr/share/doc/release-notes"] = "Version 3: new term, new timetable.\n"
	}
	for p, data := range files {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(root, p), []byte(data), 0o644); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(filepath.Join(root, "var/log"), 0o755); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(root, "usr/bin"), 0o755); err != nil {
		return err
	}
	for _, name := range []string{"sh", "ls", "cat", "cp", "grep", "tar"} {
		src, err := exec.LookPath(name)
		if err != nil {
			continue
		}
		if err := copyFile(src, filepath.Join(root, "usr/bin", name), v >= 2 && fixedInV2(name)); err != nil {
			return err
		}
	}
	if _, err := os.Lstat(filepath.Join(root, "bin")); err != nil {
		if err := os.Symlink("usr/bin", filepath.Join(root, "bin")); err != nil {
			return err
		}
	}
	return nil
}

// fixedInV2 says which binaries v2's security fix changes, and fixSummary
// says how, for the demo's narration.
func fixedInV2(name string) bool { return name == "grep" || name == "tar" }

const fixSummary = "grep and tar rebuilt with a small change\n   (1.5 KiB of new code each, in 6 places)"

// copyFile copies a binary into the image; fix changes it as a small
// security fix changes a real build: a few functions' bytes, the rest of
// the file as it was.
func copyFile(src, dst string, fix bool) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	if fix {
		for i := 1; i <= 6; i++ {
			at := len(data) * i / 7
			for j := at; j < at+256 && j < len(data); j++ {
				data[j] ^= byte(j*31 + 7)
			}
		}
	}
	return os.WriteFile(dst, data, 0o755)
}

// treeBytes is the size of the regular files under root: the image a
// laptop would download without peerup.
func treeBytes(root string) (int, error) {
	n := 0
	err := filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err != nil || !e.Type().IsRegular() {
			return err
		}
		fi, err := e.Info()
		if err == nil {
			n += int(fi.Size())
		}
		return err
	})
	return n, err
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(string(b), "\n")
	return s
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
