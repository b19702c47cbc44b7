package main

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/diff"
	"github.com/peerup/peerup/manifest"
)

// realLibs is where the trees' bytes come from: real shared libraries,
// which bsdiff and zstd see as they would in an image.
const realLibs = "/usr/lib/x86_64-linux-gnu"

// pickLibs returns up to total bytes of regular files from realLibs
// between 64 KiB and 1 MiB, in name order, so every run uses the same ones.
func pickLibs(t *testing.T, total int64) []string {
	t.Helper()
	ents, err := os.ReadDir(realLibs)
	if err != nil {
		t.Skipf("no real files to publish: %v", err)
	}
	var out []string
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil || !fi.Mode().IsRegular() || fi.Size() < 64<<10 || fi.Size() > 1<<20 {
			continue
		}
		out = append(out, filepath.Join(realLibs, e.Name()))
		if total -= fi.Size(); total <= 0 {
			return out
		}
	}
	t.Skipf("%s holds too few files to publish", realLibs)
	return nil
}

// rebuilt is lib as a rebuild changes it: a stretch of another real
// library's bytes spliced in a third of the way along.
func rebuilt(t *testing.T, lib, other string) []byte {
	t.Helper()
	a, err := os.ReadFile(lib)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(other)
	if err != nil {
		t.Fatal(err)
	}
	at := len(a) / 3
	return slices.Concat(a[:at], b[:min(len(b), 8<<10)], a[at+4<<10:])
}

// writeTree makes a tree of files in dir: name → bytes.
func writeTree(t *testing.T, dir string, files map[string][]byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dir, "usr/lib"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, "usr/lib", name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// checkRepoWhole checks that the repo at dir serves only whole versions:
// every listed version's manifest is signed and matches its index entry,
// every object it names is present and hash-correct, and so are its delta
// index (which every version after the first must have) and each encoding
// the index names. It returns the listed versions and how many encodings
// each has.
func checkRepoWhole(t *testing.T, dir string, kr *manifest.Keyring) ([]uint64, map[uint64]int) {
	t.Helper()
	repo, err := blobstore.OpenRepo(dir)
	if err != nil {
		t.Fatal(err)
	}
	ix, err := repo.ReadIndex()
	if err != nil {
		t.Fatalf("index: %v", err)
	}
	checked := map[manifest.Digest]bool{}
	object := func(what string, d manifest.Digest, size int64) {
		if checked[d] {
			return
		}
		f, err := repo.Open(d)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		defer f.Close()
		h := sha256.New()
		n, err := io.Copy(h, f)
		if err != nil || n != size || manifest.Digest(h.Sum(nil)) != d {
			t.Fatalf("%s: object %s is %d bytes hashing to %x (%v), want %d bytes", what, d, n, h.Sum(nil), err, size)
		}
		checked[d] = true
	}
	var listed []uint64
	encodings := map[uint64]int{}
	for _, e := range ix.Entries {
		what := fmt.Sprintf("%s v%d", e.Image, e.Version)
		listed = append(listed, e.Version)
		mf, err := repo.OpenVersion(e.Image, e.Version)
		if err != nil {
			t.Fatalf("%s is listed: %v", what, err)
		}
		defer mf.Close()
		if _, _, err := manifest.Accept(kr, mf.Signed(), manifest.Want{Image: e.Image, Version: e.Version}); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		md, err := mf.Digest(context.Background())
		if err != nil || md != e.Manifest {
			t.Fatalf("%s: manifest hashes to %s (%v), the index says %s", what, md, err, e.Manifest)
		}
		r, err := manifest.NewReader(mf.Reader())
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		for {
			en, err := r.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			if en.Type == manifest.TypeFile {
				object(what+" "+en.Path, en.SHA256, en.Size)
			}
		}
		if e.Version == 1 {
			continue
		}
		df, err := repo.OpenDeltas(e.Image, e.Version)
		if err != nil {
			t.Fatalf("%s is listed without its delta index: %v", what, err)
		}
		defer df.Close()
		x, err := diff.AcceptDeltas(kr, df.Signed(), e.Image, e.Version, md)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		encodings[e.Version] = len(x.Encodings)
		for _, enc := range x.Encodings {
			object(what+" encoding", enc.Digest, enc.Size)
		}
	}
	return listed, encodings
}

// leftovers lists what a repo holds beyond its listed versions: entries in
// staging/ and version files under images/ that the index does not list.
func leftovers(t *testing.T, dir string) []string {
	t.Helper()
	repo, err := blobstore.OpenRepo(dir)
	if err != nil {
		t.Fatal(err)
	}
	ix, err := repo.ReadIndex()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	staged, _ := os.ReadDir(repo.Layout().Staging())
	for _, e := range staged {
		out = append(out, "staging/"+e.Name())
	}
	for _, img := range []string{"school-laptop"} {
		files, _ := os.ReadDir(repo.Layout().ImageDir(img))
		for _, f := range files {
			name := strings.TrimSuffix(f.Name(), ".sig")
			if v, _, ok := blobstore.VersionFile(name); ok {
				if _, listed := ix.Find(img, v); !listed {
					out = append(out, "images/"+img+"/"+f.Name())
				}
			}
		}
	}
	return out
}

// TestPublishKilledAtRandomPoints kills `peerup publish` with SIGKILL at
// random moments spread over its run, making v3 with encodings of a tree of
// real libraries into a repo holding v1 and v2 (with its encodings). After
// every kill the repo serves exactly v1 and v2, or v3 whole; a laptop on v2
// pulls what is listed and verifies clean; and publishing again completes,
// leaving nothing behind.
func TestPublishKilledAtRandomPoints(t *testing.T) {
	if testing.Short() {
		t.Skip("kills publish two dozen times")
	}
	const kills = 24
	bin := buildPeerup(t)
	work := t.TempDir()
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(bin, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("peerup %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	run("keygen", "--out", work)
	key, pub := filepath.Join(work, "fleet.key"), filepath.Join(work, "fleet.pub")
	kr, err := manifest.LoadKeyring(pub)
	if err != nil {
		t.Fatal(err)
	}

	// Three releases of about 4 MiB of real libraries: each rebuilds a few
	// of them; v3 also adds one and drops one.
	libs := pickLibs(t, 4<<20)
	if len(libs) < 12 {
		t.Skipf("only %d libraries to publish", len(libs))
	}
	files := map[string][]byte{}
	for _, l := range libs[:len(libs)-1] {
		b, err := os.ReadFile(l)
		if err != nil {
			t.Fatal(err)
		}
		files[filepath.Base(l)] = b
	}
	trees := make([]string, 4)
	release := func(v int, changed []int) {
		for _, i := range changed {
			files[filepath.Base(libs[i])] = rebuilt(t, libs[i], libs[(i+5)%len(libs)])
		}
		trees[v] = filepath.Join(work, fmt.Sprintf("tree%d", v))
		writeTree(t, trees[v], files)
	}
	release(1, nil)
	release(2, []int{0, 3, 6})
	delete(files, filepath.Base(libs[1]))
	last := libs[len(libs)-1]
	b, err := os.ReadFile(last)
	if err != nil {
		t.Fatal(err)
	}
	files[filepath.Base(last)] = b
	release(3, []int{2, 4, 7, 9})

	template := filepath.Join(work, "repo")
	// --allow-same: publishing again after a kill that came too late
	// publishes v3's tree as v4.
	publish := func(repo string, v int) *exec.Cmd {
		return exec.Command(bin, "publish", "--repo", repo, "--image", "school-laptop", "--key", key, "--allow-same", trees[v])
	}
	for v := 1; v <= 2; v++ {
		if out, err := publish(template, v).CombinedOutput(); err != nil {
			t.Fatalf("publish v%d: %v\n%s", v, err, out)
		}
	}
	laptop := filepath.Join(work, "laptop-v2")
	run("update", "--sysroot", laptop, "--from", template, "--trust", pub)
	copyRepo := func() string {
		t.Helper()
		dir := filepath.Join(t.TempDir(), "repo")
		if out, err := exec.Command("cp", "-a", template, dir).CombinedOutput(); err != nil {
			t.Fatalf("copy the repo: %v\n%s", err, out)
		}
		return dir
	}

	// How long one publish of v3 takes, uninterrupted: the kills are
	// spread over that, and a little past it.
	start := time.Now()
	if out, err := publish(copyRepo(), 3).CombinedOutput(); err != nil {
		t.Fatalf("publish v3: %v\n%s", err, out)
	}
	took := time.Since(start)
	t.Logf("one publish of v3 takes %v", took.Round(time.Millisecond))

	var before, after, finished int
	seen := map[string]int{} // leftovers after a kill, by kind
	// A publish that finished before its kill proves nothing; on a loaded
	// machine publishes vary, so the rounds go on until 20 were killed.
	for i := 0; before+after-finished < 20 && i < 3*kills; i++ {
		delay := time.Duration((float64(i%kills) + rand.Float64()) / kills * 1.1 * float64(took))
		repo := copyRepo()
		cmd := publish(repo, 3)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		select {
		case err := <-exited:
			if err != nil {
				t.Fatalf("kill %d: publish failed on its own: %v", i, err)
			}
			finished++
		case <-time.After(delay):
			cmd.Process.Kill()
			<-exited
		}

		listed, encodings := checkRepoWhole(t, repo, kr)
		if encodings[2] == 0 || len(listed) == 3 && encodings[3] == 0 {
			t.Fatalf("kill %d: listed versions without encodings: %v", i, encodings)
		}
		switch {
		case slices.Equal(listed, []uint64{1, 2}):
			before++
		case slices.Equal(listed, []uint64{1, 2, 3}):
			after++
		default:
			t.Fatalf("kill %d after %v: the repo lists %v", i, delay, listed)
		}
		for _, l := range leftovers(t, repo) {
			kind := l
			if strings.HasPrefix(l, "staging/") {
				kind = "staging/" + strings.SplitN(strings.TrimPrefix(l, "staging/"), "-", 2)[0] + "-*"
			}
			seen[kind]++
		}

		// A laptop on v2 takes whatever is listed, from the repo as a
		// folder, and its trees match their manifests.
		sysroot := copySysroot(t, laptop)
		run("update", "--sysroot", sysroot, "--from", repo, "--trust", pub)
		if got, want := current(sysroot), fmt.Sprintf("trees/%d", listed[len(listed)-1]); got != want {
			t.Fatalf("kill %d: the laptop runs %s, want %s", i, got, want)
		}
		run("verify", "--sysroot", sysroot)

		// Publishing again completes: v3, or v4 (the same tree) if v3 made it.
		if out, err := publish(repo, 3).CombinedOutput(); err != nil {
			t.Fatalf("kill %d: publish again: %v\n%s", i, err, out)
		}
		if got, _ := checkRepoWhole(t, repo, kr); len(got) != len(listed)+1 {
			t.Fatalf("kill %d: after publishing again the repo lists %v (before: %v)", i, got, listed)
		}
		if l := leftovers(t, repo); len(l) > 0 {
			t.Fatalf("kill %d: publishing again left %v", i, l)
		}
	}
	var kinds []string
	for k, n := range seen {
		kinds = append(kinds, fmt.Sprintf("%s ×%d", k, n))
	}
	sort.Strings(kinds)
	t.Logf("%d kills before the index listed v3, %d after, %d publishes finished first; leftovers after kills (all cleared by the next publish): %v",
		before, after, finished, kinds)
	if before+after-finished < 20 {
		t.Errorf("only %d publishes were killed", before+after-finished)
	}
}
