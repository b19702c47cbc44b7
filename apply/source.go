package apply

import (
	"fmt"
	"net/http"
	"strings"

	"golang.org/x/time/rate"

	"peerup/transfer"
)

// OpenSource returns the source at loc: a repo URL (http:// or https://)
// or a folder holding a repo, such as a mounted USB stick. Both are
// untrusted alike; Pull checks what either returns.
// A URL given this way goes through the environment's proxy (see
// SourceOptions.Upstream).
func OpenSource(loc string) (Source, error) {
	return OpenSourceWith(loc, SourceOptions{Upstream: true})
}

// SourceOptions say how OpenSourceWith opens a source.
type SourceOptions struct {
	// DownloadLimit, if set, paces what a repo URL sends (one budget for
	// every source sharing it); a folder needs none.
	DownloadLimit *rate.Limiter
	// Upstream sends requests through the proxy that http_proxy,
	// https_proxy and no_proxy name; off for LAN peers.
	Upstream bool
}

// OpenSourceWith is OpenSource with options.
func OpenSourceWith(loc string, o SourceOptions) (Source, error) {
	if strings.HasPrefix(loc, "http://") || strings.HasPrefix(loc, "https://") {
		var hc *http.Client
		if o.Upstream {
			hc = transfer.UpstreamHTTPClient()
		}
		c, err := transfer.NewClient(loc, hc)
		if err != nil {
			return nil, err
		}
		return c.WithDownloadRate(o.DownloadLimit), nil
	}
	if strings.Contains(loc, "://") || loc == "" {
		return nil, fmt.Errorf("source %q: want an http:// or https:// repo URL, or a folder holding a repo", loc)
	}
	return transfer.NewDir(loc)
}
