package apply

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/peerup/peerup/internal/fsutil"
	"github.com/peerup/peerup/manifest"
)

// Errors a pull refuses a validly signed manifest with, by this node's rules.
var (
	// ErrExpired is a manifest past its signed expires time (SPEC.md §17).
	ErrExpired = manifest.ErrExpired
	// ErrNotNewer is a version at or below the current one.
	ErrNotNewer = manifest.ErrNotNewer
	// ErrForbidden is an entry this node's policy does not allow.
	ErrForbidden = errors.New("forbidden by this node's policy")
	// ErrUnsafePath is an entry that would be written outside its tree.
	ErrUnsafePath = errors.New("unsafe path")
	// ErrBuiltDiffers is an entry that came out of the build other than its
	// signed manifest says.
	ErrBuiltDiffers = errors.New("the built tree differs from the signed manifest")
)

// TrustDir holds what signed manifests taught the node about keys: the
// public keys they introduced (<fingerprint>.pub) and the fingerprints they
// revoked (revoked). Pull trusts it on top of the keys it is given.
func (s *Sysroot) TrustDir() string { return filepath.Join(s.StateDir(), "trusted.d") }

// trust returns the keys a pull trusts: those given, those the running
// version introduced, less every revoked one. It first adopts what the
// running version's signed manifest says about keys (idempotent, so a crash
// between a switch and this point loses nothing).
func (s *Sysroot) trust(given *manifest.Keyring, st Status) (*manifest.Keyring, error) {
	if err := s.adoptKeys(st); err != nil {
		return nil, fmt.Errorf("adopt keys of version %d: %w", st.Current, err)
	}
	return given.With(s.TrustDir())
}

// adoptKeys applies the keys-add and keys-revoke fields of the current
// version's manifest. A key is adopted only if the manifest names its
// fingerprint and the version's tree ships it, one key per file, in
// manifest.TrustedKeysDir; revocations are kept for good, whatever version
// runs later.
func (s *Sysroot) adoptKeys(st Status) error {
	if st.Current == 0 {
		return nil
	}
	mf, err := s.repo.OpenVersion(st.Image, st.Current)
	if err != nil {
		return nil // no manifest kept for it (a hand-made sysroot): nothing to adopt
	}
	defer mf.Close()
	// Only the header is read.
	r, err := manifest.NewReader(mf.Reader())
	if err != nil {
		return err
	}
	h := r.Header()
	if len(h.KeysAdd) == 0 && len(h.KeysRevoke) == 0 {
		return nil
	}
	dir := s.TrustDir()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	revokedPath := filepath.Join(dir, manifest.RevokedFile)
	revoked, err := manifest.ReadRevoked(revokedPath)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	merged := slices.Clone(revoked)
	for _, f := range h.KeysRevoke {
		if !slices.Contains(merged, f) {
			merged = append(merged, f)
		}
	}
	if len(merged) > len(revoked) {
		slices.Sort(merged)
		data := "# fingerprints revoked by signed manifests (peerup)\n" + strings.Join(merged, "\n") + "\n"
		if err := fsutil.WriteAtomic(revokedPath, []byte(data)); err != nil {
			return err
		}
	}
	shipped := filepath.Join(s.TreePath(st.Current), filepath.FromSlash(manifest.TrustedKeysDir))
	names, _ := os.ReadDir(shipped)
	for _, n := range names {
		if !n.Type().IsRegular() || filepath.Ext(n.Name()) != ".pub" {
			continue
		}
		p := filepath.Join(shipped, n.Name())
		fprs, err := manifest.KeyFingerprints(p)
		if err != nil || len(fprs) != 1 || !slices.Contains(h.KeysAdd, fprs[0]) || slices.Contains(merged, fprs[0]) {
			continue
		}
		dst := filepath.Join(dir, fprs[0]+".pub")
		if _, err := os.Stat(dst); err == nil {
			continue
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if err := fsutil.WriteAtomic(dst, data); err != nil {
			return err
		}
	}
	return nil
}

// EntryPolicy says which kinds of entry a node accepts in an image, however
// validly signed: a fleet whose images never carry device nodes or setuid
// programs can say so, and a compromised publishing key cannot add them.
type EntryPolicy struct {
	NoDevices bool // refuse character and block devices
	NoSetuid  bool // refuse setuid and setgid files, and file capabilities
}

// capabilityXattr holds file capabilities, which raise privilege on exec as
// setuid root does (cap_setuid=ep is setuid root by another name).
const capabilityXattr = "security.capability"

func (p EntryPolicy) check(e *manifest.Entry) error {
	if p.NoDevices && (e.Type == manifest.TypeChar || e.Type == manifest.TypeBlock) {
		return fmt.Errorf("entry %q: %w: %s (no device nodes)", e.Path, ErrForbidden, e.Type)
	}
	if p.NoSetuid && e.Type == manifest.TypeFile && e.Mode&0o6000 != 0 {
		return fmt.Errorf("entry %q: %w: mode %04o (no setuid or setgid files)", e.Path, ErrForbidden, e.Mode)
	}
	if p.NoSetuid {
		for _, x := range e.Xattrs {
			if x.Name == capabilityXattr {
				return fmt.Errorf("entry %q: %w: file capabilities (%s; no-setuid refuses them as it refuses setuid)", e.Path, ErrForbidden, capabilityXattr)
			}
		}
	}
	return nil
}
