package apply

import (
	"fmt"
	"strings"

	"peerup/transfer"
)

// OpenSource returns the source at loc: a repo URL (http:// or https://)
// or a folder holding a repo, such as a mounted USB stick. Both are
// untrusted alike; Pull checks what either returns.
func OpenSource(loc string) (Source, error) {
	if strings.HasPrefix(loc, "http://") || strings.HasPrefix(loc, "https://") {
		return transfer.NewClient(loc, nil)
	}
	if strings.Contains(loc, "://") || loc == "" {
		return nil, fmt.Errorf("source %q: want an http:// or https:// repo URL, or a folder holding a repo", loc)
	}
	return transfer.NewDir(loc)
}
