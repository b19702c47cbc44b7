package manifest

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func newKey(t *testing.T, dir, name string) (*Signer, string) {
	t.Helper()
	e, err := GenerateKey(name)
	if err != nil {
		t.Fatal(err)
	}
	sec, pub, err := WriteKeyPair(e, dir, name)
	if err != nil {
		t.Fatal(err)
	}
	s, err := LoadSigner(sec)
	if err != nil {
		t.Fatal(err)
	}
	return s, pub
}

func TestSignVerify(t *testing.T) {
	dir := t.TempDir()
	fleet, fleetPub := newKey(t, dir, "fleet")
	other, otherPub := newKey(t, dir, "other")
	msg, _ := sample().Marshal()
	var sig bytes.Buffer
	if err := fleet.Sign(&sig, bytes.NewReader(msg)); err != nil {
		t.Fatal(err)
	}
	kr, err := LoadKeyring(fleetPub)
	if err != nil {
		t.Fatal(err)
	}
	fp, err := kr.Verify(bytes.NewReader(msg), sig.Bytes())
	if err != nil || fp != fleet.Fingerprint() {
		t.Fatalf("Verify = %q, %v; want %s", fp, err, fleet.Fingerprint())
	}

	edited := bytes.Replace(msg, []byte("version 7"), []byte("version 8"), 1)
	if _, err := kr.Verify(bytes.NewReader(edited), sig.Bytes()); !errors.Is(err, ErrBadSignature) {
		t.Errorf("edited manifest: err = %v, want ErrBadSignature", err)
	}
	var osig bytes.Buffer
	other.Sign(&osig, bytes.NewReader(msg))
	if _, err := kr.Verify(bytes.NewReader(msg), osig.Bytes()); !errors.Is(err, ErrUntrustedKey) || !strings.Contains(err.Error(), other.Fingerprint()) {
		t.Errorf("untrusted key: err = %v, want ErrUntrustedKey naming the signer %s", err, other.Fingerprint())
	}
	if _, err := kr.Verify(bytes.NewReader(msg), []byte("garbage")); !errors.Is(err, ErrBadSignature) {
		t.Errorf("garbage signature: err = %v, want ErrBadSignature", err)
	}
	// A keyring of several keys accepts either.
	both, err := LoadKeyring(otherPub, fleetPub)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := both.Verify(bytes.NewReader(msg), osig.Bytes()); err != nil {
		t.Errorf("second trusted key: %v", err)
	}
}

// TestTrustTakesPublicKeysOnly: --trust given the secret key (an admin who
// copied fleet.key to the laptops), directly or in a trust directory, or a
// file that is no key at all, is refused with a message that says what to
// give instead.
func TestTrustTakesPublicKeysOnly(t *testing.T) {
	dir := t.TempDir()
	newKey(t, dir, "fleet")
	trustDir := filepath.Join(dir, "trust.d")
	os.Mkdir(trustDir, 0o755)
	sec, _ := os.ReadFile(filepath.Join(dir, "fleet.key"))
	os.WriteFile(filepath.Join(trustDir, "fleet.asc"), sec, 0o600)
	os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("the fleet key is on the USB stick\n"), 0o644)
	for _, tc := range []struct {
		name, path, want string
	}{
		{"the public key", filepath.Join(dir, "fleet.pub"), ""},
		{"the secret key", filepath.Join(dir, "fleet.key"), "holds a secret key: laptops trust the public key only; give the .pub file"},
		{"a secret key in a trust directory", trustDir, "holds a secret key"},
		{"not a key", filepath.Join(dir, "notes.txt"), "not an OpenPGP key file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadKeyring(tc.path)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("err = %v, want one saying %q", err, tc.want)
			}
		})
	}
}

func TestWriteKeyPairRefusesOverwrite(t *testing.T) {
	dir := t.TempDir()
	newKey(t, dir, "fleet")
	e, _ := GenerateKey("fleet")
	if _, _, err := WriteKeyPair(e, dir, "fleet"); err == nil {
		t.Fatal("overwrote an existing key")
	}
}

func gpgHome(t *testing.T) func(args ...string) string {
	run := gpgRunner(t)
	return func(args ...string) string {
		t.Helper()
		out, err := run(args...)
		if err != nil {
			t.Fatalf("gpg %s: %v", strings.Join(args, " "), err)
		}
		return out
	}
}

// gpgRunner runs gpg in a private home and returns its stdout, or an error
// carrying its stderr.
func gpgRunner(t *testing.T) func(args ...string) (string, error) {
	t.Helper()
	gpg, err := exec.LookPath("gpg")
	if err != nil {
		t.Skip("gpg not installed (apt-get install gnupg); skipping interop with GnuPG")
	}
	home, err := os.MkdirTemp("", "gnupg") // short path: gpg-agent's socket path is limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		exec.Command("gpgconf", "--homedir", home, "--kill", "all").Run()
		os.RemoveAll(home)
	})
	return func(args ...string) (string, error) {
		cmd := exec.Command(gpg, append([]string{"--homedir", home, "--batch", "--no-tty", "--pinentry-mode", "loopback", "--passphrase", ""}, args...)...)
		var out, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &stderr
		if err := cmd.Run(); err != nil {
			return "", fmt.Errorf("%w: %s", err, stderr.String())
		}
		return out.String(), nil
	}
}

func TestGnuPGVerifiesPeerupSignature(t *testing.T) {
	run := gpgRunner(t)
	gpg := func(args ...string) {
		if _, err := run(args...); err != nil {
			t.Fatalf("gpg %s: %v", strings.Join(args, " "), err)
		}
	}
	dir := t.TempDir()
	s, pub := newKey(t, dir, "fleet")
	msg, _ := sample().Marshal()
	mpath := filepath.Join(dir, "m")
	os.WriteFile(mpath, msg, 0o644)
	var sig bytes.Buffer
	if err := s.Sign(&sig, bytes.NewReader(msg)); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(mpath+".sig", sig.Bytes(), 0o644)
	gpg("--import", pub)
	gpg("--verify", mpath+".sig", mpath) // fails the test on a non-zero exit

	// And gpg must refuse it over edited bytes.
	os.WriteFile(mpath, bytes.Replace(msg, []byte("version 7"), []byte("version 9"), 1), 0o644)
	if _, err := run("--verify", mpath+".sig", mpath); err == nil {
		t.Fatal("gpg accepted the signature over edited bytes")
	}
}

func TestPeerupVerifiesGnuPGSignature(t *testing.T) {
	gpg := gpgHome(t)
	dir := t.TempDir()
	gpg("--quick-gen-key", "Fleet <fleet@example.org>", "ed25519", "sign", "never")
	pub := filepath.Join(dir, "fleet.pub")
	os.WriteFile(pub, []byte(gpg("--export", "-a")), 0o644)
	msg, _ := sample().Marshal()
	mpath := filepath.Join(dir, "m")
	os.WriteFile(mpath, msg, 0o644)
	kr, err := LoadKeyring(pub)
	if err != nil {
		t.Fatal(err)
	}
	for _, armored := range []bool{false, true} {
		args := []string{"--detach-sign", "-o", mpath + ".sig"}
		if armored {
			args = append([]string{"--armor"}, args...)
		}
		os.Remove(mpath + ".sig")
		gpg(append(args, mpath)...)
		sig, _ := os.ReadFile(mpath + ".sig")
		if _, err := kr.Verify(bytes.NewReader(msg), sig); err != nil {
			t.Errorf("armored=%v: gpg's signature refused: %v", armored, err)
		}
		if _, err := kr.Verify(bytes.NewReader(append(msg, '\n')), sig); !errors.Is(err, ErrBadSignature) {
			t.Errorf("armored=%v: gpg's signature over other bytes: err = %v", armored, err)
		}
	}
	// Weak hashes and bytes that are no signature are refused by name.
	for _, c := range []struct{ name, digest, want string }{
		{"SHA-1", "SHA1", "made with SHA-1, which peerup refuses"},
	} {
		os.Remove(mpath + ".sig")
		gpg("--digest-algo", c.digest, "--detach-sign", "-o", mpath+".sig", mpath)
		sig, _ := os.ReadFile(mpath + ".sig")
		if _, err := kr.Verify(bytes.NewReader(msg), sig); !errors.Is(err, ErrBadSignature) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s signature: err = %v, want it to say %q", c.name, err, c.want)
		}
	}
	if _, err := kr.Verify(bytes.NewReader(msg), bytes.Repeat([]byte{0x9a, 0x17}, 50)); !errors.Is(err, ErrBadSignature) || !strings.Contains(err.Error(), "not an OpenPGP signature") {
		t.Errorf("random bytes as a signature: err = %v, want it to say they are not one", err)
	}
	// A secret key exported by gpg can sign for peerup too.
	sec := filepath.Join(dir, "fleet.key")
	os.WriteFile(sec, []byte(gpg("--export-secret-keys", "-a")), 0o600)
	s, err := LoadSigner(sec)
	if err != nil {
		t.Fatalf("load gpg secret key: %v", err)
	}
	var sig bytes.Buffer
	s.Sign(&sig, bytes.NewReader(msg))
	if _, err := kr.Verify(bytes.NewReader(msg), sig.Bytes()); err != nil {
		t.Fatalf("signature by gpg's key through peerup: %v", err)
	}
}
