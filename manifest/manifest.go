package manifest

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"
)

// FormatVersion is the manifest format this package reads and writes.
const FormatVersion = 1

// MaxVersion is the highest version a manifest may carry. Versions only
// rise (§3), so one signed at 2^64−1, by mistake or by a stolen key before
// its revocation, would block every later update for good; 2^53 leaves a
// daily release room for longer than anyone needs and stays exact as a
// JSON number (D-Bus clients, status --json).
const MaxVersion = 1 << 53

// Limits that bound the work and memory a hostile manifest can cause. They are
// far above any real image (a full desktop OS has about 300k paths).
const (
	MaxSize    = 256 << 20 // bytes in a manifest file
	MaxLine    = 64 << 10  // bytes in one line
	MaxEntries = 4 << 20
	// MaxPath bounds a decoded path or symlink target: "/" and the path
	// must fit Linux's PATH_MAX (4096 with its NUL) on the booted system,
	// with room for the sysroot's "trees/.tmp-<v>-<random>/" while building.
	MaxPath = 3968
	// MaxMajor and MaxMinor are what a Linux dev_t holds (12 and 20 bits);
	// mknod would silently truncate larger numbers.
	MaxMajor = 1<<12 - 1
	MaxMinor = 1<<20 - 1
	// NoID is (uid_t)-1, which chown takes as "leave unchanged": no entry
	// may be owned by it.
	NoID         = 1<<32 - 1
	MaxName      = 255 // bytes in one path component
	MaxLabel     = 1024
	MaxXattrs    = 64 // per entry
	MaxXattrSize = 16 << 10
	MaxFileSize  = 1 << 40
)

// ErrFormat is wrapped by every error about a malformed manifest.
var ErrFormat = errors.New("malformed manifest")

// Type is the kind of filesystem entry.
type Type byte

// Entry types, spelled as they appear in the manifest.
const (
	TypeDir     Type = 'd'
	TypeFile    Type = 'f'
	TypeSymlink Type = 'l'
	TypeFifo    Type = 'p'
	TypeChar    Type = 'c'
	TypeBlock   Type = 'b'
)

func (t Type) String() string {
	switch t {
	case TypeDir:
		return "dir"
	case TypeFile:
		return "file"
	case TypeSymlink:
		return "symlink"
	case TypeFifo:
		return "fifo"
	case TypeChar:
		return "char device"
	case TypeBlock:
		return "block device"
	}
	return fmt.Sprintf("type(%q)", byte(t))
}

// Digest is a SHA-256 digest.
type Digest [sha256.Size]byte

func (d Digest) String() string { return hex.EncodeToString(d[:]) }

// IsZero reports whether d is the zero digest, which no content has.
func (d Digest) IsZero() bool { return d == Digest{} }

// ParseDigest reads 64 lowercase hex digits.
func ParseDigest(s string) (Digest, error) {
	var d Digest
	if len(s) != 2*len(d) {
		return d, fmt.Errorf("%w: digest %q is not 64 hex digits", ErrFormat, s)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return d, fmt.Errorf("%w: digest %q is not lowercase hex", ErrFormat, s)
		}
	}
	hex.Decode(d[:], []byte(s))
	return d, nil
}

// XattrCarried reports whether a manifest may carry the attribute name:
// user.* and security.* (SELinux labels, file capabilities, IMA). The
// system.* namespace holds POSIX ACLs, which grant access the mode does
// not show, and trusted.* belongs to the filesystem that holds the tree
// (overlayfs): neither describes the image.
func XattrCarried(name string) bool {
	return strings.HasPrefix(name, "user.") || strings.HasPrefix(name, "security.")
}

// Xattr is one extended attribute.
type Xattr struct {
	Name  string
	Value []byte
}

// Entry is one path of an image.
type Entry struct {
	Path   string // relative, clean; "." for the image root
	Type   Type
	Mode   uint32 // permission bits, including setuid, setgid and sticky (07777)
	UID    uint32
	GID    uint32
	Size   int64  // files only
	SHA256 Digest // files only
	Target string // symlinks only
	Major  uint32 // devices only
	Minor  uint32 // devices only
	Xattrs []Xattr
}

// Header describes one image version.
type Header struct {
	Format  int
	Image   string
	Version uint64
	Label   string
	Created time.Time
	Entries uint64 // number of entries
	Files   uint64 // number of regular files
	Bytes   uint64 // total size of regular files

	// Optional fields (SPEC.md §1, §17). Zero values are not written, so
	// manifests without them read and re-encode exactly as before.

	// Expires, if set, is when the version stops being installable: a node
	// refuses the manifest after it, so a peer replaying an old but validly
	// signed version cannot hold a laptop back for ever.
	Expires time.Time
	// KeysAdd lists the fingerprints of fleet keys a node adopts once it runs
	// this version (their public keys ship in the tree, TrustedKeysDir).
	KeysAdd []string
	// KeysRevoke lists the fingerprints of keys a node stops trusting once it
	// runs this version, for good.
	KeysRevoke []string
}

// TrustedKeysDir is where an image ships the public keys its KeysAdd names.
const TrustedKeysDir = "etc/peerup/trusted.d"

// MaxHeaderKeys bounds the fingerprints in KeysAdd or KeysRevoke.
const MaxHeaderKeys = 16

// CheckFingerprint accepts a v4 OpenPGP fingerprint as peerup spells it: 40
// uppercase hex digits.
func CheckFingerprint(f string) error {
	if len(f) != 40 {
		return fmt.Errorf("fingerprint %.50q is not 40 hex digits", f)
	}
	for i := 0; i < len(f); i++ {
		if c := f[i]; !('0' <= c && c <= '9' || 'A' <= c && c <= 'F') {
			return fmt.Errorf("fingerprint %q is not uppercase hex", f)
		}
	}
	return nil
}

// checkFingerprints checks a header key list: valid, sorted, unique, bounded.
func checkFingerprints(list []string) error {
	if len(list) > MaxHeaderKeys {
		return fmt.Errorf("more than %d fingerprints", MaxHeaderKeys)
	}
	for i, f := range list {
		if err := CheckFingerprint(f); err != nil {
			return err
		}
		if i > 0 && list[i-1] >= f {
			return fmt.Errorf("fingerprints not sorted and unique at %s", f)
		}
	}
	return nil
}

// Manifest is a parsed manifest held in memory. Large images should be read
// with Reader instead.
type Manifest struct {
	Header
	Entries []Entry
}

var imageRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// ValidImage reports whether id can name an image: it appears in file names,
// URLs and DNS-SD TXT records, so the alphabet is small.
func ValidImage(id string) error {
	if !imageRE.MatchString(id) {
		return fmt.Errorf("image id %q: want 1-63 characters of a-z 0-9 . _ -, starting with a letter or digit", id)
	}
	return nil
}

// CheckPath reports whether p is a clean relative path as the manifest
// requires: no leading slash, no empty, "." or ".." component, no NUL.
func CheckPath(p string) error {
	if p == "." {
		return nil
	}
	if p == "" {
		return errors.New("empty path")
	}
	if len(p) > MaxPath {
		return fmt.Errorf("path longer than %d bytes", MaxPath)
	}
	if strings.IndexByte(p, 0) >= 0 {
		return errors.New("path contains NUL")
	}
	if p[0] == '/' {
		return errors.New("absolute path")
	}
	for _, c := range strings.Split(p, "/") {
		switch {
		case c == "":
			return errors.New("empty path component")
		case c == "." || c == "..":
			return fmt.Errorf("path component %q", c)
		case len(c) > MaxName:
			return fmt.Errorf("path component longer than %d bytes", MaxName)
		}
	}
	return nil
}

// ComparePaths orders paths depth-first: "." first, then byte order with '/'
// sorting before every other byte, so that a directory's contents follow it
// immediately and before any sibling whose name extends the directory's.
func ComparePaths(a, b string) int {
	if a == b {
		return 0
	}
	if a == "." {
		return -1
	}
	if b == "." {
		return 1
	}
	n := min(len(a), len(b))
	for i := 0; i < n; i++ {
		ca, cb := a[i], b[i]
		if ca == cb {
			continue
		}
		if ca == '/' {
			return -1
		}
		if cb == '/' {
			return 1
		}
		if ca < cb {
			return -1
		}
		return 1
	}
	if len(a) < len(b) {
		return -1
	}
	return 1
}

// Parent returns the directory containing p ("." for top-level paths).
func Parent(p string) string {
	i := strings.LastIndexByte(p, '/')
	if i < 0 {
		return "."
	}
	return p[:i]
}

// Validate checks the fields of one entry on their own.
func (e *Entry) Validate() error {
	if err := CheckPath(e.Path); err != nil {
		return err
	}
	if e.Mode&^07777 != 0 {
		return fmt.Errorf("mode %o has bits beyond 07777", e.Mode)
	}
	if e.UID == NoID || e.GID == NoID {
		return fmt.Errorf("owner %d:%d: 4294967295 is (uid_t)-1, which chown takes as \"unchanged\"", e.UID, e.GID)
	}
	if (e.Type == TypeChar || e.Type == TypeBlock) && (e.Major > MaxMajor || e.Minor > MaxMinor) {
		return fmt.Errorf("device %d:%d: Linux device numbers are at most %d:%d", e.Major, e.Minor, MaxMajor, MaxMinor)
	}
	switch e.Type {
	case TypeDir, TypeFifo:
	case TypeFile:
		if e.Size < 0 || e.Size > MaxFileSize {
			return fmt.Errorf("size %d out of range", e.Size)
		}
	case TypeSymlink:
		if e.Target == "" || len(e.Target) > MaxPath || strings.IndexByte(e.Target, 0) >= 0 {
			return errors.New("bad symlink target")
		}
		if e.Mode != 0777 {
			return fmt.Errorf("symlink mode %04o, want 0777", e.Mode)
		}
	case TypeChar, TypeBlock:
	default:
		return fmt.Errorf("unknown type %q", byte(e.Type))
	}
	if e.Path == "." && e.Type != TypeDir {
		return errors.New("image root is not a directory")
	}
	if len(e.Xattrs) > MaxXattrs {
		return fmt.Errorf("more than %d xattrs", MaxXattrs)
	}
	for i, x := range e.Xattrs {
		if x.Name == "" || strings.IndexByte(x.Name, 0) >= 0 || len(x.Name) > 255 {
			return fmt.Errorf("bad xattr name %q", x.Name)
		}
		if !XattrCarried(x.Name) {
			return fmt.Errorf("xattr %q: only user.* and security.* attributes are carried (a POSIX ACL in system.* would widen the entry past its mode)", x.Name)
		}
		if len(x.Value) > MaxXattrSize {
			return fmt.Errorf("xattr %s larger than %d bytes", x.Name, MaxXattrSize)
		}
		if i > 0 && e.Xattrs[i-1].Name >= x.Name {
			return fmt.Errorf("xattrs not sorted and unique at %q", x.Name)
		}
	}
	return nil
}
