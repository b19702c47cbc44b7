package discovery

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/peerup/peerup/manifest"
)

// The DNS-SD service and TXT keys (SPEC.md §9).
const (
	ServiceType = "_peerup._tcp"
	txtVersion  = "1"
	maxTXT      = 16   // strings
	maxTXTBytes = 1024 // in all
)

// ErrTXT is wrapped by errors about malformed TXT records.
var ErrTXT = errors.New("malformed peerup TXT record")

// Advert is what a node's TXT record says.
type Advert struct {
	Image   string
	Version uint64
}

// TXT spells an advert as DNS-SD TXT strings.
func (a Advert) TXT() []string {
	return []string{"txtvers=" + txtVersion, "image=" + a.Image, "version=" + strconv.FormatUint(a.Version, 10)}
}

// ParseTXT reads a peerup TXT record, ignoring keys it does not know (a newer
// peer may add some) but refusing oversized or malformed ones.
func ParseTXT(fields []string) (Advert, error) {
	var a Advert
	if len(fields) > maxTXT {
		return a, fmt.Errorf("%w: %d strings", ErrTXT, len(fields))
	}
	total := 0
	seen := map[string]bool{}
	for _, f := range fields {
		total += len(f)
		if total > maxTXTBytes {
			return a, fmt.Errorf("%w: longer than %d bytes", ErrTXT, maxTXTBytes)
		}
		k, v, _ := strings.Cut(f, "=")
		if seen[k] {
			return a, fmt.Errorf("%w: key %q twice", ErrTXT, k)
		}
		seen[k] = true
		switch k {
		case "txtvers":
			if v != txtVersion {
				return a, fmt.Errorf("%w: txtvers %q", ErrTXT, v)
			}
		case "image":
			if err := manifest.ValidImage(v); err != nil {
				return a, fmt.Errorf("%w: %w", ErrTXT, err)
			}
			a.Image = v
		case "version":
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil || strconv.FormatUint(n, 10) != v {
				return a, fmt.Errorf("%w: version %q", ErrTXT, v)
			}
			a.Version = n
		}
	}
	if a.Image == "" {
		return a, fmt.Errorf("%w: no image", ErrTXT)
	}
	return a, nil
}
