package apply

import (
	"fmt"
	"net/http"
	"os"
	"regexp"
	"strings"

	"golang.org/x/time/rate"

	"github.com/peerup/peerup/transfer"
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
	// HTTP, if set, is the client for repo URLs (not with Upstream). A
	// daemon shares one across its polls: a client each would leave each
	// poll's connections idle on the peers, and a laptop woken often (by
	// adverts of a version it refuses) would run into their per-address
	// connection caps.
	HTTP *http.Client
}

// OpenSourceWith is OpenSource with options.
func OpenSourceWith(loc string, o SourceOptions) (Source, error) {
	if strings.HasPrefix(loc, "http://") || strings.HasPrefix(loc, "https://") {
		hc := o.HTTP
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
	if _, err := os.Stat(loc); err != nil && hostPort.MatchString(loc) {
		return nil, fmt.Errorf("source %q: no such folder; for a server, give its URL: http://%s", loc, strings.TrimSuffix(loc, "/")+"/")
	}
	return transfer.NewDir(loc)
}

// hostPort matches what an admin types for a server without its scheme:
// school-server:7380, 10.0.0.2:7380/, [fe80::1]:7380.
var hostPort = regexp.MustCompile(`^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}/?$`)
