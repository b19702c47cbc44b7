// Command peerup-demo shows the whole update path on one machine: it makes a
// fleet key, publishes two versions of a small OS tree, serves them on
// loopback, updates a laptop's sysroot to each in turn, and rolls back. It
// drives the real peerup binary, printing each command it runs, and works
// only inside a temporary folder.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

func main() {
	peerup := flag.String("peerup", "bin/peerup", "path to the peerup binary")
	keep := flag.Bool("keep", false, "keep the demo folder afterwards")
	flag.Parse()
	if err := run(*peerup, *keep); err != nil {
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

func run(bin string, keep bool) error {
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
	fmt.Printf("peerup demo: a school server publishes two versions of an OS image and a laptop\n")
	fmt.Printf("follows them, all inside %s and on 127.0.0.1.\n\n", dir)

	fmt.Println("1. The build server makes the fleet's signing key.")
	if _, err := d.peerup("keygen", "--name", "fleet", "--out", dir+"/keys"); err != nil {
		return err
	}
	tree := filepath.Join(dir, "build/rootfs")
	if err := makeTree(tree, 1); err != nil {
		return err
	}
	fmt.Println("\n2. It publishes version 1 of a small OS tree into a repo (signed manifest + objects).")
	if _, err := d.peerup("publish", "--repo", dir+"/repo", "--image", "demo-laptop", "--key", dir+"/keys/fleet.key", "--label", "Autumn term", tree); err != nil {
		return err
	}

	fmt.Println("\n3. The school server serves the repo over HTTP.")
	url, stop, err := d.serve()
	if err != nil {
		return err
	}
	defer stop()

	sysroot := dir + "/laptop"
	pull := []string{"--sysroot", sysroot, "--trust", dir + "/keys/fleet.pub", "--from", url}
	fmt.Println("\n4. A laptop updates: it checks the signature, fetches the objects, builds the tree, switches.")
	if _, err := d.peerup(append([]string{"update"}, pull...)...); err != nil {
		return err
	}

	fmt.Println("\n5. Version 2 changes /etc/os-release and adds release notes; the server publishes it.")
	if err := makeTree(tree, 2); err != nil {
		return err
	}
	if _, err := d.peerup("publish", "--repo", dir+"/repo", "--image", "demo-laptop", "--key", dir+"/keys/fleet.key", "--label", "Spring term", tree); err != nil {
		return err
	}

	fmt.Println("\n6. The laptop updates again, fetching only what changed; unchanged files are hard links.")
	if _, err := d.peerup(append([]string{"update"}, pull...)...); err != nil {
		return err
	}
	if _, err := d.peerup("status", "--sysroot", sysroot); err != nil {
		return err
	}
	rel, _ := os.ReadFile(filepath.Join(sysroot, "current/etc/os-release"))
	fmt.Printf("     current/etc/os-release says: %s\n", firstLine(rel))

	fmt.Println("\n7. Something is wrong with version 2? Roll back; the old tree was kept.")
	if _, err := d.peerup("rollback", "--sysroot", sysroot); err != nil {
		return err
	}
	rel, _ = os.ReadFile(filepath.Join(sysroot, "current/etc/os-release"))
	fmt.Printf("     current/etc/os-release says: %s\n", firstLine(rel))

	fmt.Println("\n8. An old version replayed is refused, and nothing changes.")
	if _, err := d.peerup("rollback", "--sysroot", sysroot); err != nil { // back to 2
		return err
	}
	_, err = d.peerup(append([]string{"pull", "--version", "1"}, pull...)...)
	if err == nil {
		return errors.New("an old version was accepted")
	}
	fmt.Printf("     refused: %s\n", lastLine(err.Error()))
	fmt.Println("\nDone. `make test` runs the full test suite; README.md explains the rest.")
	return nil
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

// serve starts `peerup serve` on a free loopback port and returns its URL.
func (d *demo) serve() (string, func(), error) {
	ctx, cancel := context.WithCancel(context.Background())
	args := []string{"serve", "--repo", d.dir + "/repo", "--listen", "127.0.0.1:0"}
	fmt.Printf("   $ peerup %s &\n", d.show(args))
	cmd := exec.CommandContext(ctx, d.bin, args...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		cancel()
		return "", nil, err
	}
	if err := cmd.Start(); err != nil {
		cancel()
		return "", nil, err
	}
	stop := func() { cancel(); cmd.Wait() }
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		stop()
		return "", nil, fmt.Errorf("peerup serve did not start: %w", err)
	}
	go io.Copy(io.Discard, out)
	fmt.Printf("     %s\n", strings.ReplaceAll(strings.TrimSpace(line), d.dir+"/", ""))
	i := strings.Index(line, "http://")
	if i < 0 {
		stop()
		return "", nil, fmt.Errorf("unexpected serve output %q", line)
	}
	return strings.TrimSpace(line[i:]), stop, nil
}

// makeTree writes version v of a small OS tree: a few real binaries from this
// machine, text files, a symlink and an empty directory.
func makeTree(root string, v int) error {
	files := map[string]string{
		"etc/os-release": fmt.Sprintf("PRETTY_NAME=\"Demo School OS %d\"\nVERSION_ID=%d\n", v, v),
		"etc/hostname":   "laptop\n",
		"etc/motd":       "Welcome to the school laptop.\n",
	}
	if v >= 2 {
		files["usr/share/doc/release-notes"] = "Version 2: new term, new timetable.\n"
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
		if err := copyFile(src, filepath.Join(root, "usr/bin", name)); err != nil {
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

func copyFile(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, data, 0o755)
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(string(b), "\n")
	return s
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
