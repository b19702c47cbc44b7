package apply_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/peerup/peerup/apply"
	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/diff"
	"github.com/peerup/peerup/manifest"
	"github.com/peerup/peerup/transfer"
)

// The tests here use no network at all: laptops get every version from
// folders written by apply.Export, as an offline school does from USB
// sticks.

// countingObjects counts the reads of the export's source.
type countingObjects struct {
	inner apply.ObjectSource
	// afterFirstOpen, if set, runs once the first object is opened.
	afterFirstOpen func()

	mu    sync.Mutex
	opens map[manifest.Digest]int
	bytes int64
}

func (c *countingObjects) OpenObject(d manifest.Digest) (io.ReadCloser, error) {
	c.mu.Lock()
	c.opens[d]++
	first := len(c.opens) == 1 && c.opens[d] == 1
	c.mu.Unlock()
	if first && c.afterFirstOpen != nil {
		c.afterFirstOpen()
	}
	r, err := c.inner.OpenObject(d)
	if err != nil {
		return nil, err
	}
	return countingReader{r, c}, nil
}

type countingReader struct {
	io.ReadCloser
	c *countingObjects
}

func (r countingReader) Read(p []byte) (int, error) {
	n, err := r.ReadCloser.Read(p)
	r.c.mu.Lock()
	r.c.bytes += int64(n)
	r.c.mu.Unlock()
	return n, err
}

// sneakernetFleet publishes v1 to v3 with delta indexes: a library that
// changes a little each time, and a new incompressible megabyte in each of
// v2 and v3. It returns the tree as v3 has it.
func sneakernetFleet(t *testing.T) (*fleet, string) {
	t.Helper()
	return libraryReleases(t, 3, func(tree string, v int) { addBlob(t, tree, v) })
}

// addBlob adds version v's incompressible megabyte to tree.
func addBlob(t *testing.T, tree string, v int) {
	blob := make([]byte, 1<<20)
	rand.Read(blob)
	write(t, tree+fmt.Sprintf("/usr/share/blob-%d", v), string(blob), 0o644)
}

func export(t *testing.T, f *fleet, targets []string, o apply.ExportOptions) *apply.ExportResult {
	t.Helper()
	res, err := apply.Export(context.Background(), f.repo, targets, o)
	if err != nil {
		t.Fatalf("export: %v", err)
	}
	return res
}

// updateFrom updates a laptop from a folder, as `peerup update --from DIR`.
func updateFrom(s *apply.Sysroot, dir string, trust *manifest.Keyring) (*apply.PullResult, error) {
	src, err := apply.OpenSource(dir)
	if err != nil {
		return nil, err
	}
	res, err := s.Pull(context.Background(), src, apply.PullOptions{Trust: trust})
	if err != nil {
		return nil, err
	}
	_, _, err = s.Apply(res.Version)
	return res, err
}

// offlineLaptop is a laptop that got version v from a stick of its own.
func offlineLaptop(t *testing.T, f *fleet, v uint64) *apply.Sysroot {
	t.Helper()
	stick := t.TempDir()
	export(t, f, []string{stick}, apply.ExportOptions{Version: v})
	s := newSysroot(t)
	if _, err := updateFrom(s, stick, f.trust); err != nil {
		t.Fatalf("install v%d from a stick: %v", v, err)
	}
	return s
}

// fillUp writes to dir's filesystem until it is full.
func fillUp(t *testing.T, dir string) {
	fl, err := os.Create(filepath.Join(dir, "filler"))
	if err != nil {
		t.Error(err)
		return
	}
	defer fl.Close()
	buf := make([]byte, 1<<20)
	for {
		if _, err := fl.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Error(err)
			}
			return
		}
	}
}

// TestExportToThreeSticksOneFull: one source read feeds three sticks; the
// one on a small filesystem fails with a clear message, whether it is too
// small from the start or fills up part-way, and the other two are
// complete repos that update offline laptops from v1 to v3.
func TestExportToThreeSticksOneFull(t *testing.T) {
	tests := []struct {
		name      string
		size      string
		fillAfter bool // fill the stick once reading has begun
		text      string
	}{
		{"too small from the start", "1m", false, "MiB is free"},
		{"fills up while writing", "16m", true, "(writing objects/"},
	}
	f, tree := sneakernetFleet(t)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			full := smallTmpfs(t, tc.size)
			a, b := t.TempDir(), filepath.Join(t.TempDir(), "new-folder")
			src := &countingObjects{inner: apply.StoreObjects{Store: f.repo.Store}, opens: map[manifest.Digest]int{}}
			if tc.fillAfter {
				src.afterFirstOpen = func() { fillUp(t, full) }
			}
			var progressed [3]bool
			var mu sync.Mutex
			res, err := apply.Export(context.Background(), f.repo, []string{a, full, b}, apply.ExportOptions{
				Objects: src,
				Progress: func(i int, done, total int64) {
					mu.Lock()
					progressed[i] = progressed[i] || done > 0
					mu.Unlock()
				},
			})
			if err == nil || res == nil {
				t.Fatalf("export reported no failure: %v", err)
			}
			if !errors.Is(err, syscall.ENOSPC) {
				t.Errorf("err = %v, want ENOSPC", err)
			}
			bad := res.Targets[1].Err
			t.Logf("the full stick: %v", bad)
			for _, want := range []string{"export to " + full + ": ", "no space left on device", tc.text} {
				if bad == nil || !strings.Contains(bad.Error(), want) {
					t.Errorf("full stick's error %q does not say %q", bad, want)
				}
			}
			if res.Targets[0].Err != nil || res.Targets[2].Err != nil {
				t.Fatalf("the other sticks failed: %v; %v", res.Targets[0].Err, res.Targets[2].Err)
			}
			if !progressed[0] || !progressed[2] {
				t.Errorf("no progress reported for the good sticks: %v", progressed)
			}

			// Read once: every object opened exactly once, its bytes read once.
			if len(src.opens) != res.Objects {
				t.Errorf("%d objects opened, %d exported", len(src.opens), res.Objects)
			}
			for d, n := range src.opens {
				if n != 1 {
					t.Errorf("object %s opened %d times", d, n)
				}
			}
			if src.bytes != res.Bytes {
				t.Errorf("read %d bytes from the source for %d bytes of objects", src.bytes, res.Bytes)
			}

			// The full stick does not look like a repo.
			for _, name := range []string{blobstore.Layout{}.Marker(), "index"} {
				if _, err := os.Stat(filepath.Join(full, name)); err == nil {
					t.Errorf("the failed stick has %s", name)
				}
			}
			if d, _ := transfer.NewDir(full); d != nil {
				if _, err := d.Index(context.Background()); !errors.Is(err, transfer.ErrNotFound) {
					t.Errorf("the failed stick's index: %v", err)
				}
			}

			for _, stick := range []string{a, b} {
				laptop := offlineLaptop(t, f, 1)
				res, err := updateFrom(laptop, stick, f.trust)
				if err != nil {
					t.Fatalf("update from %s: %v", stick, err)
				}
				if res.Version != 3 {
					t.Fatalf("updated to v%d", res.Version)
				}
				compareTrees(t, tree, filepath.Join(laptop.Dir(), "current")+"/")
			}
		})
	}
}

// stickFiles lists a stick's files, relative to it.
func stickFiles(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		if !d.IsDir() {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	sort.Strings(out)
	return out
}

// TestExportFromVersionCarriesOnlyWhatIsMissing: a stick for laptops at v1
// holds v3's signed files and, for each object v1 lacks, a patch against a
// v1 file where one is smaller, else the object; nothing else. It updates a
// v1 laptop, and a laptop with nothing is told clearly what is missing.
func TestExportFromVersionCarriesOnlyWhatIsMissing(t *testing.T) {
	f, tree := sneakernetFleet(t)
	fullStick, stick := t.TempDir(), t.TempDir()
	full := export(t, f, []string{fullStick}, apply.ExportOptions{})
	res := export(t, f, []string{stick}, apply.ExportOptions{FromVersion: 1})
	objectsOf := func(v uint64) map[manifest.Digest]int64 {
		mb, _ := os.ReadFile(f.repo.Layout().Manifest("school-laptop", v))
		m, err := manifest.Parse(mb)
		if err != nil {
			t.Fatal(err)
		}
		out := map[manifest.Digest]int64{}
		for _, e := range m.Entries {
			if e.Type == manifest.TypeFile {
				out[e.SHA256] = e.Size
			}
		}
		return out
	}
	v1, v3 := objectsOf(1), objectsOf(3)
	var lacking int64
	for d, size := range v3 {
		if _, ok := v1[d]; !ok {
			lacking += size
		}
	}
	if res.Version != 3 || res.Encodings == 0 || res.Bytes >= lacking-(500<<10) || res.Bytes >= full.Bytes {
		t.Errorf("from v1: %d objects, %d encodings, %d bytes; v1 lacks %d bytes; a full export has %d", res.Objects, res.Encodings, res.Bytes, lacking, full.Bytes)
	}

	// Only the signed files of v3 and what they name.
	named := map[string]bool{}
	for d := range v3 {
		named[blobstore.Layout{}.Object(d)] = true
	}
	db, _ := os.ReadFile(f.repo.Layout().Deltas("school-laptop", 3))
	x, _ := diff.ParseDeltaIndex(db)
	for _, enc := range x.Encodings {
		named[blobstore.Layout{}.Object(enc.Digest)] = true
	}
	objects := 0
	for _, p := range stickFiles(t, stick) {
		switch {
		case p == "peerup-repo", p == "index", strings.HasPrefix(p, "images/school-laptop/3."):
		case named[p]:
			objects++
		default:
			t.Errorf("the stick holds %s, which no signed file of v3 names", p)
		}
	}
	if objects != res.Objects {
		t.Errorf("%d objects on the stick, %d exported", objects, res.Objects)
	}
	for _, p := range []string{"images/school-laptop/3.manifest.sig", "images/school-laptop/3.deltas.sig"} {
		if _, err := os.Stat(filepath.Join(stick, p)); err != nil {
			t.Errorf("the stick lacks %s", p)
		}
	}

	laptop := offlineLaptop(t, f, 1)
	pr, err := updateFrom(laptop, stick, f.trust)
	if err != nil {
		t.Fatal(err)
	}
	if pr.PatchObjects == 0 {
		t.Errorf("no patches used: %+v", pr)
	}
	compareTrees(t, tree, filepath.Join(laptop.Dir(), "current")+"/")

	fresh := newSysroot(t)
	unlock, _ := fresh.Lock() // its lock file is no change worth reporting
	unlock()
	before := snapshot(t, fresh.Dir())
	if _, err := updateFrom(fresh, stick, f.trust); !errors.Is(err, transfer.ErrNotFound) || !strings.Contains(err.Error(), "objects/") {
		t.Errorf("a laptop without v1 from a v1 stick: err = %v, want a clear not-found naming the object", err)
	}
	if after := snapshot(t, fresh.Dir()); after != before {
		t.Error("the refused update changed the laptop")
	}
}

// TestTamperedStickIsRefused: a stick is untrusted; whatever is wrong with
// it is refused with an error naming it, and the laptop is unchanged.
func TestTamperedStickIsRefused(t *testing.T) {
	f, _ := sneakernetFleet(t)
	mb, _ := os.ReadFile(f.repo.Layout().Manifest("school-laptop", 3))
	m, _ := manifest.Parse(mb)
	var target *manifest.Entry
	for i := range m.Entries {
		if m.Entries[i].Path == "usr/share/blob-3" {
			target = &m.Entries[i]
		}
	}
	obj := blobstore.Layout{}.Object(target.SHA256)
	tests := []struct {
		name   string
		tamper func(stick string)
		want   error
		text   []string
	}{
		{"object bytes changed", func(stick string) {
			p := filepath.Join(stick, obj)
			b, _ := os.ReadFile(p)
			b[1000] ^= 0xff
			os.WriteFile(p, b, 0o644)
		}, blobstore.ErrMismatch, []string{target.SHA256.String(), "usr/share/blob-3"}},
		{"object cut short", func(stick string) {
			os.Truncate(filepath.Join(stick, obj), 4096)
		}, blobstore.ErrTooShort, []string{target.SHA256.String(), "usr/share/blob-3"}},
		{"object replaced by a symlink", func(stick string) {
			p := filepath.Join(stick, obj)
			os.Remove(p)
			os.Symlink("/etc/passwd", p)
		}, transfer.ErrPeer, []string{obj, "symlinks are not followed"}},
		{"object replaced by a fifo", func(stick string) {
			p := filepath.Join(stick, obj)
			os.Remove(p)
			unix.Mkfifo(p, 0o644)
		}, transfer.ErrPeer, []string{obj, "not a regular file"}},
		{"manifest edited", func(stick string) {
			p := filepath.Join(stick, blobstore.Layout{}.Manifest("school-laptop", 3))
			b, _ := os.ReadFile(p)
			os.WriteFile(p, []byte(strings.Replace(string(b), "label v3", "label v9", 1)), 0o644)
		}, manifest.ErrBadSignature, []string{"bad signature"}},
		{"index points elsewhere", func(stick string) {
			os.WriteFile(filepath.Join(stick, "index"), []byte("peerup-index 1\nschool-laptop 3 nonsense\n"), 0o644)
		}, transfer.ErrPeer, []string{"malformed repo index"}},
	}
	laptop := offlineLaptop(t, f, 1)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			stick := t.TempDir()
			export(t, f, []string{stick}, apply.ExportOptions{})
			tc.tamper(stick)
			before := snapshot(t, laptop.Dir())
			_, err := updateFrom(laptop, stick, f.trust)
			t.Logf("refused: %v", err)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			for _, s := range tc.text {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not say %q", err, s)
				}
			}
			if after := snapshot(t, laptop.Dir()); after != before {
				t.Errorf("the refused stick changed the laptop")
			}
			if st, _ := laptop.Status(); st.Current != 1 || st.Staged != 0 {
				t.Errorf("status %+v", st)
			}
		})
	}
}

// TestExportRefusesUnsuitableFolders: an export never clears a folder that
// is not an earlier export, nor writes into its own source.
func TestExportRefusesUnsuitableFolders(t *testing.T) {
	f := newFleet(t)
	f.publish(makeTree(t, "VERSION=1\n"), 1)
	photos := t.TempDir()
	write(t, photos+"/objects/holiday.jpg", "a photo", 0o644)
	good, other := t.TempDir(), t.TempDir()
	write(t, other+"/notes.txt", "a teacher's notes", 0o644)
	pupils := t.TempDir() // owned by another user, who could plant links
	if os.Geteuid() == 0 {
		os.Chown(pupils, 65534, 65534)
	}
	tests := []struct {
		name    string
		targets []string
		bad     int // which target fails; -1: the whole export is refused
		text    string
	}{
		{"a working repo", []string{good, f.repo.Dir() + "/../repo2", newSysroot(t).Repo().Dir()}, 2, "working peerup repo"},
		{"a folder with other objects", []string{photos, good}, 0, "holds \"objects\" but no earlier export"},
		{"the source itself", []string{good, f.repo.Dir()}, -1, "overlap"},
		{"inside the source", []string{filepath.Join(f.repo.Dir(), "objects", "stick")}, -1, "overlap"},
		{"the same folder twice", []string{good, good + "/."}, -1, "given twice"},
		{"a folder another user owns", []string{good, pupils}, 1, "owned by uid 65534"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if strings.Contains(tc.text, "owned by") && os.Geteuid() != 0 {
				t.Skip("needs root to give a folder to another user")
			}
			before := snapshot(t, photos) + snapshot(t, f.repo.Dir())
			res, err := apply.Export(context.Background(), f.repo, tc.targets, apply.ExportOptions{})
			if err == nil || !strings.Contains(err.Error(), tc.text) {
				t.Fatalf("err = %v, want %q", err, tc.text)
			}
			if tc.bad < 0 && res != nil {
				t.Errorf("a refused export wrote to some targets: %+v", res)
			}
			for i, r := range resTargets(res) {
				if (r.Err != nil) != (i == tc.bad) {
					t.Errorf("target %d: %v", i, r.Err)
				}
			}
			if after := snapshot(t, photos) + snapshot(t, f.repo.Dir()); after != before {
				t.Error("a refused folder or the source was changed")
			}
		})
	}
	// Told that the other user is trusted, the export writes there.
	if os.Geteuid() == 0 {
		export(t, f, []string{pupils}, apply.ExportOptions{AnyOwner: true})
	}
	// A folder with other files is fine; they are left alone, and an
	// earlier export there is replaced.
	for range 2 {
		export(t, f, []string{other}, apply.ExportOptions{})
	}
	if b, _ := os.ReadFile(other + "/notes.txt"); string(b) != "a teacher's notes" {
		t.Error("the export touched a file of its own")
	}
	if d, _ := transfer.NewDir(other); d != nil {
		if _, err := d.Index(context.Background()); err != nil {
			t.Errorf("re-exported folder: %v", err)
		}
	}
}

func resTargets(r *apply.ExportResult) []apply.TargetResult {
	if r == nil {
		return nil
	}
	return r.Targets
}

// TestExportFromALaptop: a laptop that went from v1 to v3 by patches
// exports what it holds — in full, or for laptops still at v1 with the
// patches it kept — and each stick updates another v1 laptop. What it
// cannot vouch for is refused before anything is written.
func TestExportFromALaptop(t *testing.T) {
	f, tree := sneakernetFleet(t)
	server := t.TempDir()
	export(t, f, []string{server}, apply.ExportOptions{FromVersion: 1})
	a := offlineLaptop(t, f, 1)
	if _, err := updateFrom(a, server, f.trust); err != nil {
		t.Fatal(err)
	}
	for _, from := range []uint64{0, 1} {
		stick := t.TempDir()
		res, err := apply.Export(context.Background(), a.Repo(), []string{stick}, apply.ExportOptions{FromVersion: from, Trust: f.trust})
		if err != nil {
			t.Fatalf("export from the laptop (from v%d): %v", from, err)
		}
		if res.Version != 3 || (from == 1) != (res.Encodings > 0) {
			t.Errorf("from v%d: %+v", from, res)
		}
		b := offlineLaptop(t, f, 1)
		if _, err := updateFrom(b, stick, f.trust); err != nil {
			t.Fatalf("update from the laptop's stick (from v%d): %v", from, err)
		}
		compareTrees(t, tree, filepath.Join(b.Dir(), "current")+"/")
	}

	other, _ := manifest.GenerateKey("other fleet")
	dir := t.TempDir()
	_, pub, _ := manifest.WriteKeyPair(other, dir, "other")
	otherTrust, _ := manifest.LoadKeyring(pub)
	tests := []struct {
		name string
		o    apply.ExportOptions
		want error
		text string
	}{
		{"signed by a key not trusted", apply.ExportOptions{Trust: otherTrust}, manifest.ErrUntrustedKey, "3.manifest"},
		{"a base version the laptop no longer holds", apply.ExportOptions{FromVersion: 2}, nil, "holds no manifest of school-laptop v2"},
		{"a version it never had", apply.ExportOptions{Version: 2}, nil, "holds no version 2 of school-laptop"},
		{"a base at or above the version", apply.ExportOptions{FromVersion: 3}, nil, "not older than version 3"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			stick := t.TempDir()
			_, err := apply.Export(context.Background(), a.Repo(), []string{stick}, tc.o)
			if err == nil || tc.want != nil && !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.text) {
				t.Fatalf("err = %v, want %v saying %q", err, tc.want, tc.text)
			}
			if files := stickFiles(t, stick); len(files) != 0 {
				t.Errorf("a refused export wrote %v", files)
			}
		})
	}
}

// TestExportWritesNothingOutsideTheStick: whoever owns the stick plants
// symlinks into it while the export runs (once the first object is being
// read, after the folder was cleared): the version's manifest, signature
// and index as links to a file outside, and an object folder as a link to
// a folder outside. Root's export must write through none of them: the
// canary folder is unchanged, and the stick, if the export says it
// succeeded, updates a laptop. Where the test can, the stick belongs to
// nobody, who plants the links, and the export is told to trust that
// owner (--any-owner).
func TestExportWritesNothingOutsideTheStick(t *testing.T) {
	f, _ := sneakernetFleet(t)
	canary := t.TempDir()
	victim := filepath.Join(canary, "shadow")
	write(t, victim, "root:x:0:0\n", 0o600)
	stick := t.TempDir()
	_, byNobody := canActAsNobody()
	if byNobody {
		os.Chown(stick, 65534, 65534)
	}
	lay := blobstore.Layout{}
	var planted []string
	src := &countingObjects{inner: apply.StoreObjects{Store: f.repo.Store}, opens: map[manifest.Digest]int{}}
	src.afterFirstOpen = func() {
		// Pairs of a link's target and its path on the stick: the
		// files, and every object folder not made yet.
		var links []string
		for _, rel := range []string{lay.Manifest("school-laptop", 3), lay.Signature("school-laptop", 3), lay.Index(), lay.Marker()} {
			links = append(links, victim, filepath.Join(stick, rel))
			planted = append(planted, rel)
		}
		for i := 0; i < 256; i++ {
			d := filepath.Join(stick, "objects", fmt.Sprintf("%02x", i))
			if _, err := os.Lstat(d); err != nil {
				links = append(links, canary, d)
			}
		}
		const plant = `while [ $# -gt 0 ]; do mkdir -p "$(dirname "$2")" && rm -f "$2" && ln -s "$1" "$2" || exit 1; shift 2; done`
		if byNobody {
			asNobody(t, stick, plant, links...)
			return
		}
		if out, err := exec.Command("sh", append([]string{"-c", plant, "sh"}, links...)...).CombinedOutput(); err != nil {
			t.Fatalf("plant the links: %v\n%s", err, out)
		}
	}
	before := snapshot(t, canary)
	_, err := apply.Export(context.Background(), f.repo, []string{stick}, apply.ExportOptions{Objects: src, AnyOwner: byNobody})
	if after := snapshot(t, canary); after != before {
		t.Fatalf("the export wrote outside the stick (err %v):\nbefore:\n%s\nafter:\n%s", err, before, after)
	}
	if b, _ := os.ReadFile(victim); string(b) != "root:x:0:0\n" {
		t.Fatalf("the file outside was overwritten: %q", b)
	}
	if len(planted) == 0 {
		t.Fatal("nothing was planted: the test proves nothing")
	}
	if err != nil {
		t.Logf("export refused the planted stick: %v", err)
		if !strings.Contains(err.Error(), stick) {
			t.Errorf("error %q does not name the stick", err)
		}
		return
	}
	s := newSysroot(t)
	if _, err := updateFrom(s, stick, f.trust); err != nil {
		t.Fatalf("the exported stick does not update a laptop: %v", err)
	}
}

// catchUpFleet is sneakernetFleet with, from v2 on, an 11 MiB library that
// changes a little each version: its cheapest encoding is a zstd-dict
// against the previous version's, which a laptop's default memory budget
// cannot decode (the dictionary is held whole), so it must come whole.
func catchUpFleet(t *testing.T) (*fleet, string) {
	t.Helper()
	return libraryReleases(t, 3, func(tree string, v int) {
		addBlob(t, tree, v)
		big := bytes.Repeat([]byte("machine code of a large library; "), 11<<20/33)
		copy(big[v*7919:], fmt.Sprintf("[fix %d]", v))
		write(t, tree+"/usr/lib/libbig.so", string(big), 0o755)
	})
}

// TestCatchUpSticks: each kind of stick a school gets — a full export, a
// catch-up export from each older version, and exports from a laptop's
// sysroot, full and catch-up — against laptops at each older version (and
// one at v2 that kept v1), the stick read as a folder and served over
// HTTP. A stick updates every laptop at or above its base version to v3,
// with the tree as published; a laptop below the base is refused with a
// not-found naming the object, and left as it was.
func TestCatchUpSticks(t *testing.T) {
	f, tree := catchUpFleet(t)
	// A laptop that went v1 to v3 over the network exports what it holds:
	// v3, v2's manifest (previous), and the encodings it fetched.
	donor := newSysroot(t)
	for v := uint64(1); v <= 3; v++ {
		f.update(donor, v)
	}
	sticks := []struct {
		name string
		src  *blobstore.Repo
		from uint64
	}{
		{"full", f.repo, 0},
		{"from v1", f.repo, 1},
		{"from v2", f.repo, 2},
		{"sysroot full", donor.Repo(), 0},
		{"sysroot from v2", donor.Repo(), 2},
	}
	laptops := []struct {
		name    string
		at      uint64 // the version it runs
		history []uint64
	}{
		{"v1 laptop", 1, []uint64{1}},
		{"v2 laptop", 2, []uint64{2}},
		{"v2 laptop keeping v1", 2, []uint64{1, 2}},
	}
	reads := []struct {
		name string
		open func(t *testing.T, stick string) apply.Source
	}{
		{"folder", func(t *testing.T, stick string) apply.Source {
			src, err := apply.OpenSource(stick)
			if err != nil {
				t.Fatal(err)
			}
			return src
		}},
		{"http", func(t *testing.T, stick string) apply.Source {
			srv := httptest.NewServer(transfer.NewHandler(stick, nil))
			t.Cleanup(srv.Close)
			c, err := transfer.NewClient(srv.URL, nil)
			if err != nil {
				t.Fatal(err)
			}
			return c
		}},
	}
	// The sticks the laptops were installed from, one per version.
	install := map[uint64]string{}
	for _, v := range []uint64{1, 2} {
		install[v] = t.TempDir()
		export(t, f, []string{install[v]}, apply.ExportOptions{Version: v})
	}
	for _, sk := range sticks {
		stick := t.TempDir()
		res, err := apply.Export(context.Background(), sk.src, []string{stick}, apply.ExportOptions{FromVersion: sk.from, Trust: f.trust})
		if err != nil {
			t.Fatalf("export %s: %v", sk.name, err)
		}
		if res.Version != 3 || (sk.from != 0) != (res.Encodings > 0) {
			t.Errorf("export %s: %+v", sk.name, res)
		}
		for _, lp := range laptops {
			for _, rd := range reads {
				t.Run(strings.ReplaceAll(sk.name+"/"+lp.name+"/"+rd.name, " ", "-"), func(t *testing.T) {
					s := newSysroot(t)
					for _, v := range lp.history {
						if _, err := updateFrom(s, install[v], f.trust); err != nil {
							t.Fatalf("install v%d: %v", v, err)
						}
					}
					before := snapshot(t, s.Dir())
					pr, err := s.Pull(context.Background(), rd.open(t, stick), apply.PullOptions{Trust: f.trust})
					if lp.at < sk.from {
						if !errors.Is(err, transfer.ErrNotFound) || !strings.Contains(err.Error(), "objects/") {
							t.Fatalf("a v%d laptop from a stick for v%d: %v, want a not-found naming the object", lp.at, sk.from, err)
						}
						if after := snapshot(t, s.Dir()); after != before {
							t.Error("the refused update changed the laptop")
						}
						return
					}
					if err != nil {
						t.Fatalf("update: %v", err)
					}
					if _, _, err := s.Apply(3); err != nil {
						t.Fatal(err)
					}
					if sk.from != 0 && pr.PatchObjects == 0 {
						t.Errorf("a catch-up stick used no patch: %+v", pr)
					}
					compareTrees(t, tree, filepath.Join(s.Dir(), "current")+"/")
				})
			}
		}
	}
}
