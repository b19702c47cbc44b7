package apply_test

// The attack suite (SPEC.md §17): every peer is untrusted, and only the
// fleet key may decide what a laptop installs. Each TestAttack* says what
// it asserts; each refusal is checked for its error, for a sysroot and
// store left exactly as they were, and for bounded time (a context
// deadline) and memory (bytes allocated during the attack). Every scene
// then checks, as it ends, that nothing outside the sysroot changed (a
// canary folder beside it and the fleet's repo), that the sysroot
// verifies, and that an honest update to v3 still completes.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dsnet/compress/bzip2"
	"golang.org/x/sys/unix"

	"github.com/peerup/peerup/apply"
	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/diff"
	"github.com/peerup/peerup/internal/hostile"
	"github.com/peerup/peerup/manifest"
	"github.com/peerup/peerup/transfer"
)

const (
	attackDeadline = 60 * time.Second
	// maxAttackAlloc bounds what a refused pull may allocate in all; a
	// whole honest pull of the test image takes a fraction of it.
	maxAttackAlloc = 160 << 20
)

// scene is a fleet that published v1, v2 and v3 (each with a delta index)
// and a laptop running v2; v3 is the update the attacks go after.
type scene struct {
	t    *testing.T
	f    *fleet
	tree string
	s    *apply.Sysroot
	// before is outside() as the first pull began: a test may still
	// change the fleet's repo (publish a crafted file) before that.
	before string
}

func newScene(t *testing.T) *scene {
	t.Helper()
	f, tree := libraryReleases(t, 3, nil)
	s := newSysroot(t)
	f.update(s, 2)
	sc := &scene{t: t, f: f, tree: tree, s: s}
	// Canaries: a folder beside the sysroot, and the fleet's repo, which
	// the peers serve; no attack may write to either.
	write(t, filepath.Join(filepath.Dir(s.Dir()), "canary", "keep"), "the machine's own\n", 0o644)
	t.Cleanup(func() {
		if t.Failed() {
			return
		}
		if after := sc.outside(); sc.before != "" && after != sc.before {
			t.Errorf("the attack wrote outside the sysroot:\nbefore:\n%s\nafter:\n%s", sc.before, after)
		}
		// (t.Context has ended by the time cleanups run.)
		if probs, err := s.Verify(hostile.Context(t, attackDeadline)); err != nil || len(probs) > 0 {
			t.Errorf("the sysroot does not verify after the attack: %v %v", probs, err)
		}
		// A later honest update still works, from whatever the attack
		// left (current v2, perhaps v3 staged by an update that
		// completed despite it).
		if st, _ := s.Status(); st.Current != 3 {
			srv := httptest.NewServer(sc.honest())
			defer srv.Close()
			c, err := transfer.NewClient(srv.URL+"/", nil)
			if err != nil {
				t.Fatal(err)
			}
			sc.completes(c, apply.PullOptions{})
			t.Log("after the attack, an honest update to v3 completed and verifies")
		}
	})
	return sc
}

// outside describes what the attacks must leave alone: the folder around
// the sysroot, the sysroot aside, and the fleet's repo.
func (sc *scene) outside() string {
	around := filepath.Dir(sc.s.Dir())
	ents, _ := os.ReadDir(around)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return strings.Join(names, " ") + "\n" + snapshot(sc.t, filepath.Join(around, "canary")) + snapshot(sc.t, sc.f.repo.Dir())
}

// honest is the fleet's repo as an HTTP handler.
func (sc *scene) honest() http.Handler { return transfer.NewHandler(sc.f.repo.Dir(), nil) }

// peer serves the fleet's repo but none of its derived metadata (manifest
// deltas, packed delta indexes), so that an attack on a manifest or a delta
// index reaches the pull as sent; peerWithDerived serves those too.
func (sc *scene) peer() *hostile.Peer {
	p := sc.peerWithDerived()
	p.On("/images/", ".zst", hostile.Status(http.StatusNotFound))
	return p
}

func (sc *scene) peerWithDerived() *hostile.Peer { return hostile.New(sc.t, sc.honest()) }

func (sc *scene) client(p *hostile.Peer) *transfer.Client {
	c, err := transfer.NewClient(p.URL(), nil)
	if err != nil {
		sc.t.Fatal(err)
	}
	return c
}

// file reads a file of the fleet's repo.
func (sc *scene) file(rel string) []byte {
	b, err := os.ReadFile(filepath.Join(sc.f.repo.Dir(), rel))
	if err != nil {
		sc.t.Fatal(err)
	}
	return b
}

func objectPath(data string) string {
	return "/" + blobstore.Layout{}.Object(manifest.Digest(sha256.Sum256([]byte(data))))
}

func manifestURL(v uint64) string { return "/" + blobstore.Layout{}.Manifest("school-laptop", v) }

func deltasURL(v uint64) string { return "/" + blobstore.Layout{}.Deltas("school-laptop", v) }

func manifestDeltaURL(v, from uint64) string {
	return "/" + blobstore.Layout{}.ManifestDelta("school-laptop", v, from)
}

func packedDeltasURL(v uint64) string {
	return "/" + blobstore.Layout{}.PackedDeltas("school-laptop", v)
}

// pull runs a pull of v3 (unless o says otherwise) within the attack
// deadline and reports its result, error and allocations.
func (sc *scene) pull(src apply.Source, o apply.PullOptions) (*apply.PullResult, error, uint64) {
	sc.t.Helper()
	if o.Trust == nil {
		o.Trust = sc.f.trust
	}
	if o.Version == 0 {
		o.Version = 3
	}
	if sc.before == "" {
		sc.before = sc.outside()
	}
	ctx := hostile.Context(sc.t, attackDeadline)
	var res *apply.PullResult
	var err error
	n := hostile.Allocated(func() { res, err = sc.s.Pull(ctx, src, o) })
	if ctx.Err() != nil {
		sc.t.Fatalf("the pull ran into its deadline (%v): the attack was not bounded in time", err)
	}
	if n > maxAttackAlloc {
		sc.t.Errorf("the pull allocated %d MiB, bound %d MiB", n>>20, maxAttackAlloc>>20)
	}
	return res, err, n
}

// refused asserts that a pull from src fails with an error wrapping want
// (if given) and saying text, and leaves the sysroot and store unchanged.
func (sc *scene) refused(src apply.Source, o apply.PullOptions, want error, text string) error {
	sc.t.Helper()
	before := snapshot(sc.t, sc.s.Dir())
	_, err, _ := sc.pull(src, o)
	if err == nil {
		sc.t.Fatal("the attack succeeded: pull accepted it")
	}
	if want != nil && !errors.Is(err, want) {
		sc.t.Errorf("err = %v, want %v", err, want)
	}
	if !strings.Contains(err.Error(), text) {
		sc.t.Errorf("error %q does not say %q", err, text)
	}
	if after := snapshot(sc.t, sc.s.Dir()); after != before {
		sc.t.Errorf("the refused pull changed the sysroot or store:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	st, _ := sc.s.Status()
	if st.Current != 2 || st.Staged != 0 {
		sc.t.Errorf("status after the attack: %+v", st)
	}
	return err
}

// completes asserts that a pull from src succeeds despite the attack and
// builds exactly the published v3 tree.
func (sc *scene) completes(src apply.Source, o apply.PullOptions) *apply.PullResult {
	sc.t.Helper()
	res, err, _ := sc.pull(src, o)
	if err != nil {
		sc.t.Fatalf("the update did not complete: %v", err)
	}
	if _, _, err := sc.s.Apply(3); err != nil {
		sc.t.Fatal(err)
	}
	compareTrees(sc.t, sc.tree, filepath.Join(sc.s.Dir(), "current")+"/")
	return res
}

// TestAttackArbitrarySoftware asserts that no bytes the fleet key did not
// vouch for are installed: an object that does not match the manifest, a
// manifest signed by an unknown key, a manifest edited after signing, and a
// fleet signature over other bytes are each refused with the error that
// names the fault.
func TestAttackArbitrarySoftware(t *testing.T) {
	sc := newScene(t)
	m3 := sc.file(blobstore.Layout{}.Manifest("school-laptop", 3))
	sig2 := sc.file(blobstore.Layout{}.Signature("school-laptop", 2))
	intruder, err := manifest.GenerateKey("intruder")
	if err != nil {
		t.Fatal(err)
	}
	var isig bytes.Buffer
	manifest.NewSigner(intruder).Sign(&isig, bytes.NewReader(m3))
	tests := []struct {
		name string
		prog func(p *hostile.Peer)
		want error
		text string
	}{
		{"object bytes not as the manifest says", func(p *hostile.Peer) {
			p.OnPath(objectPath("VERSION=3\n"), hostile.Bytes([]byte("VERSION=6\n")))
		}, blobstore.ErrMismatch, "etc/os-release"},
		{"manifest signed by an unknown key", func(p *hostile.Peer) {
			p.OnPath(manifestURL(3)+".sig", hostile.Bytes(isig.Bytes()))
		}, manifest.ErrUntrustedKey, "not trusted"},
		{"manifest edited after signing", func(p *hostile.Peer) {
			p.OnPath(manifestURL(3), hostile.Bytes(bytes.Replace(m3, []byte("etc/os-release 0644"), []byte("etc/os-release 4755"), 1)))
		}, manifest.ErrBadSignature, "bad signature"},
		{"fleet signature over other bytes", func(p *hostile.Peer) {
			p.OnPath(manifestURL(3)+".sig", hostile.Bytes(sig2))
		}, manifest.ErrBadSignature, "bad signature"},
		{"no signature at all", func(p *hostile.Peer) {
			p.OnPath(manifestURL(3)+".sig", hostile.Bytes(nil))
		}, manifest.ErrBadSignature, "bad signature"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sc.t = t
			p := sc.peer()
			tc.prog(p)
			sc.refused(sc.client(p), apply.PullOptions{}, tc.want, tc.text)
		})
	}
}

// TestAttackRollback asserts that validly signed but old manifests cannot
// take a laptop back: an older manifest presented as the new version, the
// current one replayed as new, and an older version asked for outright are
// refused.
func TestAttackRollback(t *testing.T) {
	sc := newScene(t)
	for _, tc := range []struct {
		name    string
		replay  uint64 // the version whose manifest is served as v3
		version uint64
		want    error
		text    string
	}{
		{"older manifest presented as new", 1, 3, nil, "signed as school-laptop v1"},
		{"current manifest replayed", 2, 3, nil, "signed as school-laptop v2"},
		{"older version offered outright", 0, 1, apply.ErrNotNewer, "not newer"},
		{"current version offered again", 0, 2, apply.ErrNotNewer, "not newer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sc.t = t
			p := sc.peer()
			if tc.replay != 0 {
				p.OnPath(manifestURL(3), hostile.Bytes(sc.file(blobstore.Layout{}.Manifest("school-laptop", tc.replay))))
				p.OnPath(manifestURL(3)+".sig", hostile.Bytes(sc.file(blobstore.Layout{}.Signature("school-laptop", tc.replay))))
			}
			sc.refused(sc.client(p), apply.PullOptions{Version: tc.version}, tc.want, tc.text)
		})
	}
}

// TestAttackExpiredManifest asserts the optional expiry (SPEC.md §1, §17):
// a validly signed, newer manifest past its expires time is refused with
// ErrExpired, so a peer hoarding an old release cannot hand it out for
// ever; before that time it installs.
func TestAttackExpiredManifest(t *testing.T) {
	sc := newScene(t)
	created := time.Now().Add(-48 * time.Hour)
	_, err := sc.f.repo.Publish(context.Background(), sc.tree, blobstore.PublishOptions{
		Image: "school-laptop", Version: 4, Signer: sc.f.signer, Created: created, Expires: created.Add(24 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	p := sc.peer()
	sc.refused(sc.client(p), apply.PullOptions{Version: 4}, apply.ErrExpired, "expired")
	if _, err, _ := sc.pull(sc.client(p), apply.PullOptions{Version: 4, Now: func() time.Time { return created.Add(time.Hour) }}); err != nil {
		t.Fatalf("before its expiry the version installs: %v", err)
	}
}

// TestAttackEndlessData asserts that a peer cannot make a laptop read or
// hold without bound: an object longer than declared is cut off at its
// size plus one (ErrTooLong), and an endless manifest or delta index at the
// client's limit (ErrPeer), each within the allocation bound.
func TestAttackEndlessData(t *testing.T) {
	sc := newScene(t)
	for _, tc := range []struct {
		name, path string
		body       http.Handler
		want       error
		text       string
	}{
		{"object longer than declared", objectPath("VERSION=3\n"), hostile.Endless([]byte("VERSION=3\n")), blobstore.ErrTooLong, "more bytes than declared"},
		{"endless manifest", manifestURL(3), hostile.Endless([]byte("peerup-manifest 1\n")), transfer.ErrPeer, "larger than"},
		{"endless signature", manifestURL(3) + ".sig", hostile.Endless(nil), transfer.ErrPeer, "larger than"},
		{"endless delta index", deltasURL(3), hostile.Endless([]byte("peerup-deltas 1\n")), transfer.ErrPeer, "larger than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sc.t = t
			p := sc.peer()
			p.OnPath(tc.path, tc.body)
			sc.refused(sc.client(p), apply.PullOptions{}, tc.want, tc.text)
		})
	}
}

// TestAttackSlowRetrieval asserts that a peer trickling a byte a second
// is given up once it falls below the minimum rate, and the laptop fetches
// from the other peer instead: the update completes, within the deadline.
func TestAttackSlowRetrieval(t *testing.T) {
	sc := newScene(t)
	slow := sc.peer()
	slow.On("/objects/", "", hostile.TrickleFrom(sc.honest(), time.Second))
	good := sc.peer()
	stall := transfer.Stall{Window: 300 * time.Millisecond, MinBytes: 256}
	// The slow peer is the primary: the swarm asks it first.
	res := sc.completes(sc.client(slow).WithStall(stall), apply.PullOptions{Peers: []apply.Source{sc.client(good).WithStall(stall)}})
	if slow.Hits("/objects/", "") == 0 {
		t.Fatal("the slow peer was never asked: the test proves nothing")
	}
	t.Logf("%d objects fetched; the slow peer was asked %d times", res.FetchedObjects, slow.Hits("/objects/", ""))
}

// TestAttackMixAndMatch asserts that parts of one version cannot be passed
// off as parts of another: an object of v1 served for v3's (refused by
// hash), v2's encodings served under v3's encoding names (refused by hash,
// and the update still completes with whole objects), and v2's signed
// delta index offered for v3 (refused: it names another manifest).
func TestAttackMixAndMatch(t *testing.T) {
	t.Run("object of another version", func(t *testing.T) {
		sc := newScene(t)
		p := sc.peer()
		p.OnPath(objectPath("VERSION=3\n"), hostile.Bytes([]byte("VERSION=1\n")))
		sc.refused(sc.client(p), apply.PullOptions{}, blobstore.ErrMismatch, "etc/os-release")
	})
	t.Run("delta index of another version", func(t *testing.T) {
		sc := newScene(t)
		p := sc.peer()
		p.OnPath(deltasURL(3), hostile.Bytes(sc.file(blobstore.Layout{}.Deltas("school-laptop", 2))))
		p.OnPath(deltasURL(3)+".sig", hostile.Bytes(sc.file(blobstore.Layout{}.Deltas("school-laptop", 2)+".sig")))
		sc.refused(sc.client(p), apply.PullOptions{}, nil, "delta index for school-laptop v2")
	})
	t.Run("encodings of another version", func(t *testing.T) {
		sc := newScene(t)
		idx2, _ := diff.ParseDeltaIndex(sc.file(blobstore.Layout{}.Deltas("school-laptop", 2)))
		idx3, _ := diff.ParseDeltaIndex(sc.file(blobstore.Layout{}.Deltas("school-laptop", 3)))
		if len(idx2.Encodings) == 0 || len(idx3.Encodings) == 0 {
			t.Fatal("the scene has no encodings to mix")
		}
		old := sc.file(blobstore.Layout{}.Object(idx2.Encodings[0].Digest))
		p := sc.peer()
		for _, e := range idx3.Encodings {
			p.OnPath("/"+blobstore.Layout{}.Object(e.Digest), hostile.Bytes(old))
		}
		res := sc.completes(sc.client(p), apply.PullOptions{})
		if res.PatchObjects != 0 {
			t.Fatalf("%d objects were patched from another version's encodings", res.PatchObjects)
		}
	})
}

// forge writes a manifest for school-laptop v3 with the given entry lines,
// as a compromised publisher could, bypassing the Writer's checks.
func forge(files, bytes int, entries ...string) []byte {
	return fmt.Appendf(nil, "peerup-manifest 1\nimage school-laptop\nversion 3\nlabel forged\ncreated 2026-01-01T00:00:00Z\nentries %d\nfiles %d\nbytes %d\n\n%s\n",
		len(entries), files, bytes, strings.Join(entries, "\n"))
}

// TestAttackHostilePaths asserts that a validly signed manifest (a
// compromised publisher) still cannot write outside the new tree: "..",
// absolute paths and a path through a symlink (a -> /etc, then a/passwd)
// are refused by the manifest reader, and device nodes and setuid files
// by the node's policy where it forbids them — all before any object is
// fetched. The builder's own checks are tested in build_attack_test.go.
func TestAttackHostilePaths(t *testing.T) {
	passwd := "root::0:0::/root:/bin/sh\n"
	hash := fmt.Sprintf("%x", sha256.Sum256([]byte(passwd)))
	sc := newScene(t)
	outside := filepath.Join(t.TempDir(), "outside")
	for _, tc := range []struct {
		name   string
		m      []byte
		policy apply.EntryPolicy
		want   error
		text   string
	}{
		{"dot-dot", forge(1, len(passwd), "d . 0755 0 0", "f ../../../../etc/passwd 0644 0 0 "+fmt.Sprint(len(passwd))+" "+hash), apply.EntryPolicy{}, manifest.ErrFormat, `path component ".."`},
		{"absolute", forge(1, len(passwd), "d . 0755 0 0", "f /etc/passwd 0644 0 0 "+fmt.Sprint(len(passwd))+" "+hash), apply.EntryPolicy{}, manifest.ErrFormat, "absolute path"},
		{"through a symlink", forge(1, len(passwd), "d . 0755 0 0", "l a 0777 0 0 "+outside, "f a/passwd 0644 0 0 "+fmt.Sprint(len(passwd))+" "+hash), apply.EntryPolicy{}, manifest.ErrFormat, `parent "a" is not a directory`},
		{"symlink named like a directory", forge(0, 0, "d . 0755 0 0", "l etc 0777 0 0 /etc", "d etc/cron.d 0755 0 0"), apply.EntryPolicy{}, manifest.ErrFormat, `parent "etc" is not a directory`},
		{"device node", forge(0, 0, "d . 0755 0 0", "b sda 0666 0 0 8:0"), apply.EntryPolicy{NoDevices: true}, apply.ErrForbidden, "block device"},
		{"setuid file", forge(1, len(passwd), "d . 0755 0 0", "f su 4755 0 0 "+fmt.Sprint(len(passwd))+" "+hash), apply.EntryPolicy{NoSetuid: true}, apply.ErrForbidden, "setuid"},
		{"setgid file", forge(1, len(passwd), "d . 0755 0 0", "f wall 2755 0 0 "+fmt.Sprint(len(passwd))+" "+hash), apply.EntryPolicy{NoSetuid: true}, apply.ErrForbidden, "mode 2755"},
		// cap_setuid=ep, as setcap writes it (VFS_CAP_REVISION_2).
		{"file capabilities", forge(1, len(passwd), "d . 0755 0 0", "f sh 0755 0 0 "+fmt.Sprint(len(passwd))+" "+hash+" x=security.capability=%01%00%00%02%80%00%00%00%80%00%00%00%00%00%00%00%00%00%00%00"), apply.EntryPolicy{NoSetuid: true}, apply.ErrForbidden, "file capabilities"},
		{"POSIX ACL", forge(1, len(passwd), "d . 0755 0 0", "f notes 0600 0 0 "+fmt.Sprint(len(passwd))+" "+hash+" x=system.posix_acl_access=%02%00%00%00"), apply.EntryPolicy{}, manifest.ErrFormat, "POSIX ACL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sc.t = t
			var sig bytes.Buffer
			if err := sc.f.signer.Sign(&sig, bytes.NewReader(tc.m)); err != nil {
				t.Fatal(err)
			}
			p := sc.peer()
			p.OnPath(manifestURL(3), hostile.Bytes(tc.m))
			p.OnPath(manifestURL(3)+".sig", hostile.Bytes(sig.Bytes()))
			p.On("/images/", ".deltas", hostile.Status(http.StatusNotFound))
			p.On("/objects/", "", hostile.Bytes([]byte(passwd)))
			sc.refused(sc.client(p), apply.PullOptions{Policy: tc.policy}, tc.want, tc.text)
			if n := p.Hits("/objects/", ""); n != 0 {
				t.Errorf("%d objects fetched before the manifest was refused", n)
			}
			if _, err := os.Lstat(outside); err == nil {
				t.Fatal("something was written outside the tree")
			}
		})
	}
	// The same policy lets an honest image with neither through.
	sc.t = t
	sc.completes(sc.client(sc.peer()), apply.PullOptions{})
}

// bzip2Of compresses b as bsdiff's streams are.
func bzip2Of(t *testing.T, b []byte) []byte {
	var buf bytes.Buffer
	w, err := bzip2.NewWriter(&buf, nil)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(b)
	w.Close()
	return buf.Bytes()
}

// bsdiffPatch assembles a BSDIFF40 patch from its parts.
func bsdiffPatch(ctrl, diffBlock, extra []byte, newSize int64) []byte {
	out := []byte("BSDIFF40")
	for _, n := range []int64{int64(len(ctrl)), int64(len(diffBlock)), newSize} {
		var b [8]byte
		for i := range 8 {
			b[i] = byte(n >> (8 * i))
		}
		out = append(out, b[:]...)
	}
	return append(append(append(out, ctrl...), diffBlock...), extra...)
}

// TestAttackMaliciousPatch asserts, end to end through a pull, that a
// patch the (compromised) publisher signed into the delta index, so that
// its hash matches, but crafted to allocate hugely or to loop, is refused
// by the applier's checks within the allocation bound; the planner then
// falls back to the whole object and the update completes. With the whole
// object withheld too, the pull fails naming the encoding's fault.
func TestAttackMaliciousPatch(t *testing.T) {
	lib3 := library(3)
	target := manifest.Digest(sha256.Sum256([]byte(lib3)))
	for _, tc := range []struct {
		name  string
		patch func(t *testing.T) []byte
	}{
		{"declares a terabyte", func(t *testing.T) []byte {
			return bsdiffPatch(bzip2Of(t, nil), bzip2Of(t, nil), bzip2Of(t, nil), 1<<40)
		}},
		{"a million empty control triples", func(t *testing.T) []byte {
			return bsdiffPatch(bzip2Of(t, make([]byte, 24<<20)), bzip2Of(t, nil), bzip2Of(t, nil), int64(len(lib3)))
		}},
		{"seeks far outside the old file", func(t *testing.T) []byte {
			ctrl := make([]byte, 24)
			ctrl[0], ctrl[16] = 1, 0xff // add 1 byte, then seek back 255 before the start
			ctrl[23] = 0x7f
			return bsdiffPatch(bzip2Of(t, ctrl), bzip2Of(t, []byte{0}), bzip2Of(t, nil), int64(len(lib3)))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sc := newScene(t)
			patch := tc.patch(t)
			pd := manifest.Digest(sha256.Sum256(patch))
			b, _ := sc.f.repo.Begin()
			if err := b.Put(context.Background(), pd, int64(len(patch)), bytes.NewReader(patch)); err != nil {
				t.Fatal(err)
			}
			if err := b.Commit(); err != nil {
				t.Fatal(err)
			}
			dp := sc.f.repo.Layout().Deltas("school-laptop", 3)
			idx, err := diff.ParseDeltaIndex(sc.file(blobstore.Layout{}.Deltas("school-laptop", 3)))
			if err != nil {
				t.Fatal(err)
			}
			base := manifest.Digest(sha256.Sum256([]byte(library(2)))) // the laptop holds it
			idx.Encodings = append(idx.Encodings, diff.Encoding{Target: target, Kind: diff.KindBsdiff, Digest: pd, Size: int64(len(patch)), Base: base})
			idx.Sort()
			raw, err := idx.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			var sig bytes.Buffer
			sc.f.signer.Sign(&sig, bytes.NewReader(raw))
			os.WriteFile(dp, raw, 0o644)
			os.WriteFile(dp+".sig", sig.Bytes(), 0o644)

			var log bytes.Buffer
			withheld := sc.peer()
			withheld.OnPath("/"+blobstore.Layout{}.Object(target), hostile.Status(http.StatusNotFound))
			for _, e := range idx.For(target) {
				if e.Digest != pd {
					withheld.OnPath("/"+blobstore.Layout{}.Object(e.Digest), hostile.Status(http.StatusNotFound))
				}
			}
			sc.refused(sc.client(withheld), apply.PullOptions{Log: slog.New(slog.NewTextHandler(&log, nil))}, nil, "usr/lib/libschool.so.1")
			if !strings.Contains(log.String(), "encoding failed") || !strings.Contains(log.String(), pd.String()) {
				t.Errorf("the patch's refusal was not reported:\n%s", log.String())
			}
			res := sc.completes(sc.client(sc.peer()), apply.PullOptions{})
			t.Logf("completed with %d patches and %d whole objects; the malicious patch refused", res.PatchObjects, res.WholeObjects)
		})
	}
}

// TestSecondUpdateFetchesAManifestDelta: a laptop that runs v2 rebuilds v3's
// manifest from its own with the server's manifest delta and fetches the
// packed delta index; the whole manifest and the plain index are never
// asked for, and what it received is counted.
func TestSecondUpdateFetchesAManifestDelta(t *testing.T) {
	sc := newScene(t)
	p := sc.peerWithDerived()
	res := sc.completes(sc.client(p), apply.PullOptions{})
	if res.ManifestFrom != 2 {
		t.Fatalf("manifest rebuilt from v%d, want from v2 (the running version)", res.ManifestFrom)
	}
	for _, path := range []string{manifestURL(3), deltasURL(3)} {
		if n := p.HitsPath(path); n != 0 {
			t.Errorf("%s fetched %d times", path, n)
		}
	}
	whole := int64(len(sc.file(blobstore.Layout{}.Manifest("school-laptop", 3))))
	if res.MetadataBytes <= 0 || res.MetadataBytes >= whole {
		t.Errorf("metadata of %d bytes, the whole manifest alone is %d", res.MetadataBytes, whole)
	}
	if res.FetchedBytes != res.MetadataBytes+res.PatchBytes+res.WholeBytes {
		t.Errorf("fetched bytes do not add up: %+v", res)
	}
}

// TestAttackTamperedManifestDelta: a manifest delta that rebuilds anything
// but the signed manifest is refused with a clear error, before any object
// is fetched, and nothing changes.
func TestAttackTamperedManifestDelta(t *testing.T) {
	sc := newScene(t)
	lay := blobstore.Layout{}
	v2, v3 := sc.file(lay.Manifest("school-laptop", 2)), sc.file(lay.Manifest("school-laptop", 3))
	packed := func(t *testing.T, base, target []byte, edit func(string) string) []byte {
		var d bytes.Buffer
		if err := manifest.MakeDelta(&d, base, target); err != nil {
			t.Fatal(err)
		}
		z, err := diff.EncodeZstd([]byte(edit(d.String())))
		if err != nil {
			t.Fatal(err)
		}
		return z
	}
	same := func(s string) string { return s }
	// v3's manifest with one file's hash changed: a delta to it is
	// self-consistent, and only the signature can refuse it.
	forged := bytes.Replace(v3, []byte(manifest.Digest(sha256.Sum256([]byte(library(3)))).String()), []byte(strings.Repeat("ab", 32)), 1)
	if bytes.Equal(forged, v3) {
		t.Fatal("the forged manifest is the real one")
	}
	for _, tc := range []struct {
		name  string
		delta func(t *testing.T) []byte
		want  error
		text  string
	}{
		{"rebuilds a manifest the fleet key never signed", func(t *testing.T) []byte { return packed(t, v2, forged, same) }, manifest.ErrBadSignature, "rebuilt from its delta from v2"},
		{"an op edited", func(t *testing.T) []byte {
			return packed(t, v2, v3, func(s string) string { return strings.Replace(s, "\n=", "\n=9", 1) })
		}, manifest.ErrDelta, "bad manifest delta"},
		{"made from another base", func(t *testing.T) []byte { return packed(t, v3, v3, same) }, manifest.ErrDelta, "another base manifest"},
		{"not zstd", func(t *testing.T) []byte { return []byte("peerup-manifest-delta 1\n") }, nil, "manifest delta from v2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sc.t = t
			p := sc.peerWithDerived()
			p.OnPath(manifestDeltaURL(3, 2), hostile.Bytes(tc.delta(t)))
			err := sc.refused(sc.client(p), apply.PullOptions{}, tc.want, tc.text)
			if !strings.Contains(err.Error(), p.Addr()) {
				t.Errorf("error %q does not name the peer", err)
			}
			if n := p.Hits("/objects/", ""); n != 0 {
				t.Errorf("%d objects fetched before the manifest was refused", n)
			}
		})
	}
}

// TestAttackWorldWritableFileSharesNoInode: an image ships a file anyone
// may write (mode 0666). A local user rewrites it on the laptop; a later
// version carries the same bytes as a root-owned program. The shared
// inode would hand the user's bytes to root: instead the writable file is
// the tree's own copy, the store's object is untouched, and the program
// comes out as signed. The user's write runs as nobody.
func TestAttackWorldWritableFileSharesNoInode(t *testing.T) {
	f := newFleet(t)
	tree := t.TempDir()
	const body = "#!/bin/sh\necho the image's own script\n"
	write(t, tree+"/usr/share/scratch", body, 0o666)
	f.publish(tree, 1)
	s := newSysroot(t)
	f.update(s, 1)
	shared := filepath.Join(s.TreePath(1), "usr/share/scratch")
	var st unix.Stat_t
	if err := unix.Lstat(shared, &st); err != nil {
		t.Fatal(err)
	}
	if st.Nlink != 1 || st.Mode&0o777 != 0o666 {
		t.Fatalf("the 0666 file: mode %o with %d links, want its own inode", st.Mode&0o777, st.Nlink)
	}
	// The user writes it as nobody. On a booted laptop the file is at its
	// own path under /; here trees/ (0700) is opened to others for the
	// write, which then goes through the file's own mode.
	evil := "#!/bin/sh\necho the user's code, run as root\n"
	if _, ok := canActAsNobody(); ok {
		trees := filepath.Dir(s.TreePath(1))
		os.Chmod(trees, 0o711)
		asNobody(t, trees, `printf '%s' "$1" > "$2"`, evil, shared)
		os.Chmod(trees, 0o700)
	} else if err := os.WriteFile(shared, []byte(evil), 0o666); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(shared); string(b) != evil {
		t.Fatalf("the user's write did not land: %q", b)
	}
	write(t, tree+"/usr/sbin/maintain", body, 0o755)
	f.publish(tree, 2)
	f.update(s, 2)
	got, err := os.ReadFile(filepath.Join(s.TreePath(2), "usr/sbin/maintain"))
	if err != nil || string(got) != body {
		t.Fatalf("the root-owned program in v2: %q, %v; want the signed bytes", got, err)
	}
}

// TestBusyPeerIsAskedAgainAsItSays: the only source answers an object with
// 503 and Retry-After: 3, then serves it; the server's own request log
// shows the client came back no sooner than it was asked to.
func TestBusyPeerIsAskedAgainAsItSays(t *testing.T) {
	sc := newScene(t)
	var mu sync.Mutex
	var asked []time.Time
	honest := sc.honest()
	p := sc.peer()
	p.On("/objects/", "", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		asked = append(asked, time.Now())
		first := len(asked) == 1
		mu.Unlock()
		if first {
			w.Header().Set("Retry-After", "3")
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		honest.ServeHTTP(w, r)
	}))
	sc.completes(sc.client(p), apply.PullOptions{Parallel: 1})
	mu.Lock()
	defer mu.Unlock()
	if len(asked) < 2 {
		t.Fatalf("the server was asked %d times", len(asked))
	}
	if gap := asked[1].Sub(asked[0]); gap < 2900*time.Millisecond {
		t.Fatalf("the client came back after %v, was asked to wait 3 s", gap)
	}
}

// TestAttackLinksPlantedInTheSysrootPath: a sysroot or repo placed where
// another user can write (a world-writable shared folder), into which
// that user, as nobody, has planted a link named like the sysroot that
// points at a folder of root's. Root's peerup must refuse the path with
// one line saying why, before it writes anything: the linked folder stays
// as it was.
func TestAttackLinksPlantedInTheSysrootPath(t *testing.T) {
	if why, ok := canActAsNobody(); !ok {
		t.Skip(why)
	}
	base := t.TempDir()
	shared := filepath.Join(base, "shared")
	if err := os.Mkdir(shared, 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chmod(shared, 0o777)
	canary := filepath.Join(base, "root-only")
	write(t, canary+"/keep", "root's\n", 0o600)
	before := snapshot(t, canary)
	asNobody(t, shared, `ln -s "$1" "$2/sysroot" && ln -s "$1" "$2/repo"`, canary, shared)
	for _, tc := range []struct {
		name string
		open func() error
	}{
		{"sysroot", func() error { _, err := apply.Open(filepath.Join(shared, "sysroot")); return err }},
		{"repo", func() error { _, err := blobstore.OpenRepo(filepath.Join(shared, "repo")); return err }},
		{"a sysroot not yet made", func() error { _, err := apply.Open(filepath.Join(shared, "new", "sysroot")); return err }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.open()
			if err == nil {
				t.Fatal("opened a sysroot or repo whose path another user can change")
			}
			if msg := err.Error(); !strings.Contains(msg, "writable by group or others") || strings.Contains(msg, "\n") {
				t.Errorf("error %q: want one line saying the path is writable by others", msg)
			}
		})
	}
	if after := snapshot(t, canary); after != before {
		t.Errorf("root's folder changed through the planted link:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if _, err := os.Lstat(filepath.Join(shared, "new")); err == nil {
		t.Error("a refused sysroot was created")
	}
}

// canActAsNobody reports whether the test can run commands as the
// unprivileged user nobody (root, with util-linux's setpriv), and why not.
func canActAsNobody() (string, bool) {
	if os.Geteuid() != 0 {
		return "needs root to act as nobody", false
	}
	if _, err := exec.LookPath("setpriv"); err != nil {
		return "needs setpriv (util-linux) to act as nobody", false
	}
	return "", true
}

// asNobody runs the shell script with args as nobody, the local user of
// the attacks, with every folder above dir opened for it to reach (the
// test's own temporary folders are 0700).
func asNobody(t *testing.T, dir, script string, args ...string) {
	t.Helper()
	for d := filepath.Dir(dir); d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
	cmd := exec.Command("setpriv", append([]string{"--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c", script, "sh"}, args...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("as nobody: %v\n%s", err, out)
	}
}
