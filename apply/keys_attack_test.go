package apply_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/peerup/peerup/apply"
	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/internal/hostile"
	"github.com/peerup/peerup/manifest"
)

// TestAttackKeyRotationAndRevocation asserts the key procedures of SPEC.md
// §17. A laptop that trusts only the old key adopts a new one that a
// version signed by the old key introduces (keys-add, the key shipped in
// etc/peerup/trusted.d/) — only once it runs that version, and only keys
// the manifest names; a later version signed by the new key revokes the
// old one (keys-revoke), after which a manifest signed by the old key is
// refused with ErrRevokedKey, even after a rollback and although the old
// key is still configured. A revocation list in a trust directory works
// the same way for keys the administrator revokes.
func TestAttackKeyRotationAndRevocation(t *testing.T) {
	keys := t.TempDir()
	gen := func(name string) (*manifest.Signer, string) {
		e, err := manifest.GenerateKey(name)
		if err != nil {
			t.Fatal(err)
		}
		_, pub, err := manifest.WriteKeyPair(e, keys, name)
		if err != nil {
			t.Fatal(err)
		}
		return manifest.NewSigner(e), pub
	}
	oldK, oldPub := gen("old")
	newK, newPub := gen("new")
	stray, strayPub := gen("stray")
	f := newFleet(t)
	tree := filepath.Join(t.TempDir(), "tree")
	publish := func(v uint64, s *manifest.Signer, add, revoke []string) {
		t.Helper()
		write(t, tree+"/etc/os-release", fmt.Sprintf("VERSION=%d\n", v), 0o644)
		// AnyKey: a stray or stolen key signs here as an attacker's own
		// repo would let it; the fleet's repo refuses such a publish.
		_, err := f.repo.Publish(context.Background(), tree, blobstore.PublishOptions{
			Image: "school-laptop", Version: v, Signer: s, KeysAdd: add, KeysRevoke: revoke, AnyKey: true})
		if err != nil {
			t.Fatal(err)
		}
	}
	trustOld, err := manifest.LoadKeyring(oldPub)
	if err != nil {
		t.Fatal(err)
	}
	laptop := newSysroot(t)
	pull := func(v uint64) error {
		_, err := laptop.Pull(hostile.Context(t, attackDeadline), f.client(), apply.PullOptions{Version: v, Trust: trustOld})
		return err
	}
	refused := func(v uint64, want error) {
		t.Helper()
		before := snapshot(t, laptop.Dir())
		if err := pull(v); !errors.Is(err, want) {
			t.Fatalf("v%d: err = %v, want %v", v, err, want)
		}
		if after := snapshot(t, laptop.Dir()); after != before {
			t.Fatalf("refused v%d changed the sysroot:\n%s\n%s", v, before, after)
		}
	}
	update := func(v uint64) {
		t.Helper()
		if err := pull(v); err != nil {
			t.Fatalf("v%d: %v", v, err)
		}
		if _, _, err := laptop.Switch(v); err != nil { // as the daemon does
			t.Fatal(err)
		}
	}

	publish(1, oldK, nil, nil)
	// v2 ships two keys but introduces only the new one.
	for _, p := range []string{newPub, strayPub} {
		data, _ := os.ReadFile(p)
		write(t, filepath.Join(tree, manifest.TrustedKeysDir, filepath.Base(p)), string(data), 0o644)
	}
	if _, err := f.repo.Publish(context.Background(), tree, blobstore.PublishOptions{Image: "school-laptop", Version: 2, Signer: oldK,
		KeysAdd: []string{strings.Repeat("AB", 20)}}); err == nil || !strings.Contains(err.Error(), "trusted.d") {
		t.Fatalf("a key introduced but not shipped was published: %v", err)
	}
	publish(2, oldK, []string{newK.Fingerprint()}, nil)
	publish(3, stray, nil, nil)
	publish(4, newK, nil, []string{oldK.Fingerprint()})
	publish(5, oldK, nil, nil) // the old key, stolen, signs one more

	update(1)
	refused(4, manifest.ErrUntrustedKey) // the new key is not known before v2 runs
	update(2)
	refused(3, manifest.ErrUntrustedKey) // shipped, but not introduced
	update(4)
	refused(5, manifest.ErrRevokedKey)
	if _, _, err := laptop.Rollback(); err != nil { // back to v2, which trusted the old key
		t.Fatal(err)
	}
	refused(5, manifest.ErrRevokedKey)

	// An administrator's own revocation list in a trust directory.
	dir := filepath.Join(t.TempDir(), "trusted.d")
	os.MkdirAll(dir, 0o755)
	for _, p := range []string{oldPub, strayPub} {
		data, _ := os.ReadFile(p)
		os.WriteFile(filepath.Join(dir, filepath.Base(p)), data, 0o644)
	}
	os.WriteFile(filepath.Join(dir, manifest.RevokedFile), []byte(stray.Fingerprint()+"\n"), 0o644)
	kr, err := manifest.LoadKeyring(dir)
	if err != nil {
		t.Fatal(err)
	}
	fresh := newSysroot(t)
	if _, err := fresh.Pull(hostile.Context(t, attackDeadline), f.client(), apply.PullOptions{Version: 3, Trust: kr}); !errors.Is(err, manifest.ErrRevokedKey) {
		t.Fatalf("a key revoked by the trust directory: err = %v", err)
	}
	if _, err := fresh.Pull(hostile.Context(t, attackDeadline), f.client(), apply.PullOptions{Version: 2, Trust: kr}); err != nil {
		t.Fatalf("the other key of the trust directory: %v", err)
	}
}
