package manifest

import (
	"bytes"
	"crypto"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	pgperrors "github.com/ProtonMail/go-crypto/openpgp/errors"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
)

// MaxSignature bounds a detached signature file; a real one is about 120 bytes.
const MaxSignature = 64 << 10

// Errors a caller can test for with errors.Is.
var (
	ErrBadSignature = errors.New("bad signature")
	ErrUntrustedKey = errors.New("signed by a key that is not trusted")
)

// acceptedHashes are the digests a fleet signature may use; weaker ones
// (SHA-1, RIPEMD) are refused even if a trusted key made them.
var acceptedHashes = []crypto.Hash{crypto.SHA256, crypto.SHA384, crypto.SHA512}

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
		return nil, fmt.Errorf("read key %s: %w", path, err)
	}
	if len(list) == 0 {
		return nil, fmt.Errorf("read key %s: no keys in file", path)
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
func (s *Signer) Fingerprint() string { return fmt.Sprintf("%X", s.e.PrimaryKey.Fingerprint) }

// Sign writes a binary detached signature over data. Binary, not armored: the
// library's armored form lacks the CRC that gpg insists on.
func (s *Signer) Sign(sig io.Writer, data io.Reader) error {
	if err := openpgp.DetachSign(sig, s.e, data, keyConfig()); err != nil {
		return fmt.Errorf("sign: %w", err)
	}
	return nil
}

// Keyring is the set of trusted fleet public keys.
type Keyring struct {
	keys openpgp.EntityList
}

// LoadKeyring reads one or more public key files (armored or binary).
func LoadKeyring(paths ...string) (*Keyring, error) {
	if len(paths) == 0 {
		return nil, errors.New("no trusted keys given (--trust)")
	}
	kr := &Keyring{}
	for _, p := range paths {
		list, err := readKeys(p)
		if err != nil {
			return nil, err
		}
		kr.keys = append(kr.keys, list...)
	}
	return kr, nil
}

// Verify checks a detached signature (binary or armored) over the bytes read
// from signed, and returns the fingerprint of the trusted key that made it.
func (k *Keyring) Verify(signed io.Reader, sig []byte) (string, error) {
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
	signer, err := openpgp.CheckDetachedSignatureAndHash(k.keys, signed, bytes.NewReader(sig), acceptedHashes, nil)
	if err != nil {
		if errors.Is(err, pgperrors.ErrUnknownIssuer) {
			return "", fmt.Errorf("%w (%v)", ErrUntrustedKey, err)
		}
		return "", fmt.Errorf("%w: %w", ErrBadSignature, err)
	}
	return fmt.Sprintf("%X", signer.PrimaryKey.Fingerprint), nil
}
