package manifest

import (
	"bytes"
	"crypto"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	pgperrors "github.com/ProtonMail/go-crypto/openpgp/errors"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
)

// MaxSignature bounds a detached signature file: a real one is about 120
// bytes binary and 300 armored, so 4 KiB holds a dozen signers' worth and a
// hostile endless one costs a laptop nothing.
const MaxSignature = 4 << 10

// Errors a caller can test for with errors.Is.
var (
	ErrBadSignature = errors.New("bad signature")
	ErrUntrustedKey = errors.New("signed by a key that is not trusted")
	ErrRevokedKey   = errors.New("signed by a revoked key")
)

// RevokedFile is the name of the revocation list in a trust directory.
const RevokedFile = "revoked"

// maxRevoked bounds a revocation list file.
const maxRevoked = 64 << 10

// acceptedHashes are the digests a fleet signature may use; weaker ones
// (SHA-1, RIPEMD) are refused even if a trusted key made them.
var acceptedHashes = []crypto.Hash{crypto.SHA256, crypto.SHA384, crypto.SHA512}

// checkSignaturePacket refuses, with a plain reason, bytes that are not one
// OpenPGP signature packet or that sign with a hash peerup does not accept.
func checkSignaturePacket(sig []byte) (*packet.Signature, error) {
	p, err := packet.Read(bytes.NewReader(sig))
	if err != nil {
		return nil, fmt.Errorf("%w: not an OpenPGP signature (%v)", ErrBadSignature, err)
	}
	s, ok := p.(*packet.Signature)
	if !ok {
		return nil, fmt.Errorf("%w: not an OpenPGP signature (an OpenPGP %T)", ErrBadSignature, p)
	}
	if !slices.Contains(acceptedHashes, s.Hash) {
		return nil, fmt.Errorf("%w: made with %s, which peerup refuses (sign with SHA-256 or stronger: gpg --digest-algo SHA256)", ErrBadSignature, hashName(s.Hash))
	}
	return s, nil
}

// issuer names the key a signature says made it: its fingerprint, or its
// key ID where the signature carries only that.
func issuer(s *packet.Signature) string {
	switch {
	case len(s.IssuerFingerprint) > 0:
		return fmt.Sprintf("%X", s.IssuerFingerprint)
	case s.IssuerKeyId != nil:
		return fmt.Sprintf("key ID %016X", *s.IssuerKeyId)
	}
	return "an unnamed key"
}

func hashName(h crypto.Hash) string {
	if h.Available() || h == crypto.SHA1 || h == crypto.MD5 || h == crypto.RIPEMD160 {
		return h.String()
	}
	return fmt.Sprintf("hash algorithm %d", h)
}

// keyConfig makes fleet keys as ed25519 in the legacy EdDSA encoding
// (algorithm 22, v4 keys): GnuPG 2.2, still the norm on fleets, rejects the
// RFC 9580 forms, and RSA keys are slow and large.
func keyConfig() *packet.Config {
	return &packet.Config{
		Algorithm:   packet.PubKeyAlgoEdDSA,
		Curve:       packet.Curve25519,
		DefaultHash: crypto.SHA256,
	}
}

// GenerateKey makes a new fleet signing key.
func GenerateKey(name string) (*openpgp.Entity, error) {
	e, err := openpgp.NewEntity(name, "peerup fleet key", "", keyConfig())
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	return e, nil
}

// WriteKeyPair writes DIR/NAME.key (secret, mode 0600) and DIR/NAME.pub
// (public), both ASCII-armored so that gpg --import takes them.
func WriteKeyPair(e *openpgp.Entity, dir, name string) (secret, public string, err error) {
	var sec, pub bytes.Buffer
	w, err := armor.Encode(&sec, openpgp.PrivateKeyType, nil)
	if err != nil {
		return "", "", err
	}
	if err := e.SerializePrivate(w, nil); err != nil {
		return "", "", fmt.Errorf("serialize secret key: %w", err)
	}
	w.Close()
	sec.WriteByte('\n')
	w, err = armor.Encode(&pub, openpgp.PublicKeyType, nil)
	if err != nil {
		return "", "", err
	}
	if err := e.Serialize(w); err != nil {
		return "", "", fmt.Errorf("serialize public key: %w", err)
	}
	w.Close()
	pub.WriteByte('\n')
	secret = filepath.Join(dir, name+".key")
	public = filepath.Join(dir, name+".pub")
	for _, f := range []struct {
		path string
		data []byte
		mode os.FileMode
	}{{secret, sec.Bytes(), 0o600}, {public, pub.Bytes(), 0o644}} {
		if _, err := os.Lstat(f.path); err == nil {
			return "", "", fmt.Errorf("%s already exists; not overwriting a key", f.path)
		}
		if err := os.WriteFile(f.path, f.data, f.mode); err != nil {
			return "", "", fmt.Errorf("write key: %w", err)
		}
	}
	return secret, public, nil
}

// readKeys reads armored or binary OpenPGP keys.
func readKeys(path string) (openpgp.EntityList, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read key: %w", err)
	}
	var list openpgp.EntityList
	if strings.HasPrefix(strings.TrimSpace(string(data)), "-----BEGIN PGP") {
		list, err = openpgp.ReadArmoredKeyRing(bytes.NewReader(data))
	} else {
		list, err = openpgp.ReadKeyRing(bytes.NewReader(data))
	}
	if err != nil {
		var se pgperrors.StructuralError
		if errors.As(err, &se) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("read key %s: not an OpenPGP key file (%w)", path, err)
		}
		return nil, fmt.Errorf("read key %s: %w", path, err)
	}
	if len(list) == 0 {
		return nil, fmt.Errorf("read key %s: no keys in file", path)
	}
	return list, nil
}

// readPublicKeys is readKeys for trust: a file holding a secret key is
// refused. An admin who copies the secret key to laptops hands whoever
// takes one laptop the fleet's signing key.
func readPublicKeys(path string) (openpgp.EntityList, error) {
	list, err := readKeys(path)
	if err != nil {
		return nil, err
	}
	for _, e := range list {
		if e.PrivateKey != nil {
			return nil, fmt.Errorf("%s holds a secret key: laptops trust the public key only; give the .pub file peerup keygen wrote beside it, and keep this one on the publisher", path)
		}
	}
	return list, nil
}

// Signer signs manifests with one fleet secret key.
type Signer struct {
	e *openpgp.Entity
}

// LoadSigner reads a secret key written by WriteKeyPair or exported by gpg
// (unprotected by a passphrase: publishing runs unattended).
func LoadSigner(path string) (*Signer, error) {
	list, err := readKeys(path)
	if err != nil {
		return nil, err
	}
	if len(list) != 1 || list[0].PrivateKey == nil {
		return nil, fmt.Errorf("%s: want exactly one secret key", path)
	}
	if list[0].PrivateKey.Encrypted {
		return nil, fmt.Errorf("%s: secret key is protected by a passphrase", path)
	}
	return &Signer{e: list[0]}, nil
}

// NewSigner wraps a key made by GenerateKey.
func NewSigner(e *openpgp.Entity) *Signer { return &Signer{e: e} }

// Fingerprint is the signing key's fingerprint in hex.
func (s *Signer) Fingerprint() string { return Fingerprint(s.e) }

// Sign writes a binary detached signature over data. Binary, not armored: the
// library's armored form lacks the CRC that gpg insists on.
func (s *Signer) Sign(sig io.Writer, data io.Reader) error {
	if err := openpgp.DetachSign(sig, s.e, data, keyConfig()); err != nil {
		return fmt.Errorf("sign: %w", err)
	}
	return nil
}

// Keyring is the set of trusted fleet public keys, less the revoked ones.
type Keyring struct {
	keys    openpgp.EntityList
	revoked map[string]bool // fingerprints, uppercase hex
}

// LoadKeyring reads one or more public key files (armored or binary). A
// path may be a directory (a trust directory such as /etc/peerup/trusted.d):
// then every *.pub, *.asc and *.gpg file in it is read, and its "revoked"
// file, if any, lists fingerprints that are never trusted.
func LoadKeyring(paths ...string) (*Keyring, error) {
	if len(paths) == 0 {
		return nil, errors.New("no trusted keys given (--trust)")
	}
	kr := &Keyring{}
	for _, p := range paths {
		if err := kr.load(p, true); err != nil {
			return nil, err
		}
	}
	if len(kr.keys) == 0 {
		return nil, fmt.Errorf("no trusted keys in %s", strings.Join(paths, ", "))
	}
	return kr, nil
}

// load adds the keys at path, a key file or a trust directory; a missing
// directory is an error only if required.
func (k *Keyring) load(path string, required bool) error {
	fi, err := os.Stat(path)
	if err != nil {
		if !required && errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("read key: %w", err)
	}
	if !fi.IsDir() {
		list, err := readPublicKeys(path)
		if err != nil {
			return err
		}
		k.keys = append(k.keys, list...)
		return nil
	}
	names, err := os.ReadDir(path)
	if err != nil {
		return fmt.Errorf("read trust directory: %w", err)
	}
	for _, n := range names {
		switch filepath.Ext(n.Name()) {
		case ".pub", ".asc", ".gpg":
			list, err := readPublicKeys(filepath.Join(path, n.Name()))
			if err != nil {
				return err
			}
			k.keys = append(k.keys, list...)
		}
	}
	revoked, err := ReadRevoked(filepath.Join(path, RevokedFile))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return k.Revoke(revoked...)
}

// ReadRevoked reads a revocation list: one fingerprint (40 uppercase hex
// digits) a line; blank lines and lines starting with # are ignored.
func ReadRevoked(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxRevoked+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(data) > maxRevoked {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, maxRevoked)
	}
	var out []string
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if err := CheckFingerprint(line); err != nil {
			return nil, fmt.Errorf("%s line %d: %w", path, i+1, err)
		}
		out = append(out, line)
	}
	return out, nil
}

// Revoke stops trusting the keys with these fingerprints, whatever else
// lists them.
func (k *Keyring) Revoke(fprs ...string) error {
	for _, f := range fprs {
		if err := CheckFingerprint(f); err != nil {
			return fmt.Errorf("revoke: %w", err)
		}
		if k.revoked == nil {
			k.revoked = map[string]bool{}
		}
		k.revoked[f] = true
	}
	return nil
}

// Revoked reports whether the key with fingerprint f is revoked.
func (k *Keyring) Revoked(f string) bool { return k.revoked[f] }

// With returns a copy of k that also trusts the keys at paths (files or
// trust directories; missing ones are skipped) and honours their
// revocation lists. k itself is not changed.
func (k *Keyring) With(paths ...string) (*Keyring, error) {
	c := &Keyring{keys: append(openpgp.EntityList(nil), k.keys...), revoked: map[string]bool{}}
	for f := range k.revoked {
		c.revoked[f] = true
	}
	for _, p := range paths {
		if err := c.load(p, false); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// Fingerprints lists the trusted keys' fingerprints, revoked ones excluded.
func (k *Keyring) Fingerprints() []string {
	var out []string
	for _, e := range k.keys {
		if f := Fingerprint(e); !k.revoked[f] {
			out = append(out, f)
		}
	}
	return out
}

// KeyFingerprints reads the public keys in the file at path and
// returns their fingerprints.
func KeyFingerprints(path string) ([]string, error) {
	list, err := readKeys(path)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range list {
		out = append(out, Fingerprint(e))
	}
	return out, nil
}

// Fingerprint spells an entity's primary key fingerprint as peerup does.
func Fingerprint(e *openpgp.Entity) string { return fmt.Sprintf("%X", e.PrimaryKey.Fingerprint) }

// Verify checks a detached signature (binary or armored) over the bytes read
// from signed, and returns the fingerprint of the trusted key that made it.
func (k *Keyring) Verify(signed io.Reader, sig []byte) (string, error) {
	if len(bytes.TrimSpace(sig)) == 0 {
		return "", fmt.Errorf("%w: empty signature", ErrBadSignature)
	}
	if len(sig) > MaxSignature {
		return "", fmt.Errorf("%w: signature larger than %d bytes", ErrBadSignature, MaxSignature)
	}
	if bytes.HasPrefix(bytes.TrimSpace(sig), []byte("-----BEGIN PGP SIGNATURE")) {
		block, err := armor.Decode(bytes.NewReader(sig))
		if err != nil {
			return "", fmt.Errorf("%w: %w", ErrBadSignature, err)
		}
		raw, err := io.ReadAll(io.LimitReader(block.Body, MaxSignature))
		if err != nil {
			return "", fmt.Errorf("%w: %w", ErrBadSignature, err)
		}
		sig = raw
	}
	// The library's own messages mislead here: a SHA-1 signature comes back
	// as a "hash algorithm or salt mismatch", random bytes as an unknown
	// signer. Say what the bytes are first.
	pkt, err := checkSignaturePacket(sig)
	if err != nil {
		return "", err
	}
	signer, err := openpgp.CheckDetachedSignatureAndHash(k.keys, signed, bytes.NewReader(sig), acceptedHashes, nil)
	if err != nil {
		if errors.Is(err, pgperrors.ErrUnknownIssuer) {
			// Which key signed says whether the publisher used a wrong
			// key or the laptop lacks a rotation's new one.
			return "", fmt.Errorf("%w: made by %s", ErrUntrustedKey, issuer(pkt))
		}
		return "", fmt.Errorf("%w: %w", ErrBadSignature, err)
	}
	fpr := Fingerprint(signer)
	if k.revoked[fpr] {
		return "", fmt.Errorf("%w: %s", ErrRevokedKey, fpr)
	}
	return fpr, nil
}
