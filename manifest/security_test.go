package manifest

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const (
	fprA = "0123456789ABCDEF0123456789ABCDEF01234567"
	fprB = "89ABCDEF0123456789ABCDEF0123456789ABCDEF"
)

// TestOptionalHeaderFields: expires, keys-add and keys-revoke round-trip in
// their one spelling, and a manifest without them is byte-for-byte what it
// was before they existed.
func TestOptionalHeaderFields(t *testing.T) {
	plain, err := sample().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(plain, []byte("expires")) || bytes.Contains(plain, []byte("keys-")) {
		t.Fatalf("optional fields written when unset:\n%s", plain)
	}
	m := sample()
	m.Expires = m.Created.Add(90 * 24 * time.Hour)
	m.KeysAdd = []string{fprA, fprB}
	m.KeysRevoke = []string{fprB}
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := Parse(b)
	if err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	if !got.Expires.Equal(m.Expires) || strings.Join(got.KeysAdd, ",") != fprA+","+fprB || strings.Join(got.KeysRevoke, ",") != fprB {
		t.Fatalf("fields lost: %+v", got.Header)
	}
	if b2, _ := got.Marshal(); !bytes.Equal(b, b2) {
		t.Fatalf("re-encoding differs:\n%s\n%s", b, b2)
	}
	good := string(b)
	for name, bad := range map[string]string{
		"out of order":      strings.Replace(strings.Replace(good, "keys-add", "keys-tmp", 1), "keys-revoke "+fprB+"\n", "", 1),
		"revoke before add": strings.Replace(good, "keys-add "+fprA+" "+fprB+"\nkeys-revoke "+fprB, "keys-revoke "+fprB+"\nkeys-add "+fprA+" "+fprB, 1),
		"twice":             strings.Replace(good, "keys-revoke", "keys-add "+fprA+"\nkeys-revoke", 1),
		"unsorted":          strings.Replace(good, fprA+" "+fprB, fprB+" "+fprA, 1),
		"duplicate":         strings.Replace(good, fprA+" "+fprB, fprA+" "+fprA, 1),
		"lowercase":         strings.Replace(good, "keys-revoke "+fprB, "keys-revoke "+strings.ToLower(fprB), 1),
		"empty list":        strings.Replace(good, "keys-revoke "+fprB, "keys-revoke ", 1),
		"unknown field":     strings.Replace(good, "expires", "expiry", 1),
		"expires early":     strings.Replace(good, "expires 2027", "expires 2025", 1),
		"expires garbled":   strings.Replace(good, "expires 2027-", "expires 2027/", 1),
		"too many keys":     strings.Replace(good, "keys-revoke "+fprB, "keys-revoke "+strings.Repeat(fprB+" ", MaxHeaderKeys)+fprB, 1),
	} {
		if _, err := Parse([]byte(bad)); !errors.Is(err, ErrFormat) {
			t.Errorf("%s: err = %v, want ErrFormat", name, err)
		}
	}
}

// TestTrustDirectoryAndRevocation: a trust directory holds several keys
// and a revocation list; a signature by a revoked key is refused with
// ErrRevokedKey even though the key file is still there.
func TestTrustDirectoryAndRevocation(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "trusted.d")
	os.Mkdir(dir, 0o755)
	oldKey, _ := newKey(t, dir, "old")
	newK, _ := newKey(t, dir, "new")
	for _, n := range []string{"old.key", "new.key"} {
		os.Remove(filepath.Join(dir, n)) // a laptop holds public keys only
	}
	msg, _ := sample().Marshal()
	sign := func(s *Signer) []byte {
		var b bytes.Buffer
		if err := s.Sign(&b, bytes.NewReader(msg)); err != nil {
			t.Fatal(err)
		}
		return b.Bytes()
	}
	kr, err := LoadKeyring(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []*Signer{oldKey, newK} {
		if _, err := kr.Verify(bytes.NewReader(msg), sign(s)); err != nil {
			t.Fatalf("key in the trust directory: %v", err)
		}
	}
	os.WriteFile(filepath.Join(dir, RevokedFile), []byte("# leaked 2026-03\n"+oldKey.Fingerprint()+"\n"), 0o644)
	kr, err = LoadKeyring(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kr.Verify(bytes.NewReader(msg), sign(oldKey)); !errors.Is(err, ErrRevokedKey) || !strings.Contains(err.Error(), oldKey.Fingerprint()) {
		t.Fatalf("revoked key: err = %v, want ErrRevokedKey naming it", err)
	}
	if _, err := kr.Verify(bytes.NewReader(msg), sign(newK)); err != nil {
		t.Fatalf("the other key: %v", err)
	}
	if got := kr.Fingerprints(); len(got) != 1 || got[0] != newK.Fingerprint() {
		t.Fatalf("Fingerprints = %v", got)
	}
	os.WriteFile(filepath.Join(dir, RevokedFile), []byte("not a fingerprint\n"), 0o644)
	if _, err := LoadKeyring(dir); err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Fatalf("garbled revocation list: err = %v", err)
	}
	// With adds keys from a directory without changing the original.
	other := filepath.Join(t.TempDir(), "adopted")
	os.Mkdir(other, 0o755)
	third, _ := newKey(t, other, "third")
	base, _ := LoadKeyring(filepath.Join(dir, "new.pub"))
	ext, err := base.With(other, filepath.Join(t.TempDir(), "missing"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ext.Verify(bytes.NewReader(msg), sign(third)); err != nil {
		t.Fatalf("adopted key: %v", err)
	}
	if _, err := base.Verify(bytes.NewReader(msg), sign(third)); !errors.Is(err, ErrUntrustedKey) {
		t.Fatalf("With changed its receiver: %v", err)
	}
}

// FuzzVerify feeds random signature bytes, binary or armored, to Verify:
// it must never panic, never take long, and never accept.
func FuzzVerify(f *testing.F) {
	dir := f.TempDir()
	e, err := GenerateKey("fleet")
	if err != nil {
		f.Fatal(err)
	}
	_, pub, err := WriteKeyPair(e, dir, "fleet")
	if err != nil {
		f.Fatal(err)
	}
	kr, err := LoadKeyring(pub)
	if err != nil {
		f.Fatal(err)
	}
	msg, _ := sample().Marshal()
	var sig bytes.Buffer
	NewSigner(e).Sign(&sig, bytes.NewReader(msg))
	f.Add(sig.Bytes())
	f.Add([]byte("-----BEGIN PGP SIGNATURE-----\n\niHUEABYIAB0WIQ==\n=AAAA\n-----END PGP SIGNATURE-----\n"))
	f.Add([]byte{0x88, 0x75, 0x04, 0x00, 0x16, 0x08})
	want := NewSigner(e).Fingerprint()
	f.Fuzz(func(t *testing.T, s []byte) {
		// Forging the fleet's signature needs its secret key, which the
		// fuzzer lacks: whatever verifies must be the fleet key's own
		// signature (perhaps re-encoded, armored or not).
		fpr, err := kr.Verify(bytes.NewReader(msg), s)
		if err == nil && fpr != want {
			t.Fatalf("accepted with fingerprint %s", fpr)
		}
		if err != nil && !errors.Is(err, ErrBadSignature) && !errors.Is(err, ErrUntrustedKey) {
			t.Fatalf("error wraps neither ErrBadSignature nor ErrUntrustedKey: %v", err)
		}
		if _, err := kr.Verify(bytes.NewReader(append([]byte("x"), msg...)), s); err == nil {
			t.Fatalf("signature %x verifies two different messages", s)
		}
	})
}
