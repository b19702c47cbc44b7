package transfer

import (
	"context"
	"io"
	"net/http"
	"time"

	"golang.org/x/time/rate"
)

// Limits bound what a node spends on its neighbours.
type Limits struct {
	// MaxUploads caps concurrent object transfers served; beyond it peers
	// get 503 with Retry-After and go elsewhere (0: no cap).
	MaxUploads int
	// UploadRate and DownloadRate are byte-per-second budgets (0: none).
	UploadRate, DownloadRate int64
	// OncePerObject makes a seed upload each object to one peer at a time:
	// a second asker while it is in flight gets 503 and takes it from the
	// first one's pull moments later (BitTorrent's "super-seeding"). A
	// school server then uploads about one copy of an update, not one per
	// laptop. Off for a server whose clients do not share (--no-p2p).
	OncePerObject bool
	// MaxConnsPerPeer and MaxConns cap open connections from one address
	// and in all (Listen; 0: DefaultMaxConnsPerPeer, DefaultMaxConns;
	// negative: no cap).
	MaxConnsPerPeer, MaxConns int
	// RequestRate caps the requests a second from one address, with a burst
	// of twice that; beyond it the answer is 429 with Retry-After (0:
	// DefaultRequestRate; negative: no cap).
	RequestRate float64
	// WriteStall is the longest one write of a response may block before
	// the connection is dropped (0: DefaultWriteStall; negative: none).
	WriteStall time.Duration
}

func newLimiter(bps int64) *rate.Limiter {
	if bps <= 0 {
		return nil
	}
	// A burst of 64 KiB keeps writes efficient without letting a link
	// exceed its budget for long.
	return rate.NewLimiter(rate.Limit(bps), 64<<10)
}

// waitN takes n bytes from l in chunks no larger than its burst.
func waitN(ctx context.Context, l *rate.Limiter, n int) error {
	for n > 0 {
		k := min(n, l.Burst())
		if err := l.WaitN(ctx, k); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

// limitedWriter paces a response.
type limitedWriter struct {
	http.ResponseWriter
	ctx context.Context
	l   *rate.Limiter
}

func (w limitedWriter) Write(p []byte) (int, error) {
	if err := waitN(w.ctx, w.l, len(p)); err != nil {
		return 0, err
	}
	return w.ResponseWriter.Write(p)
}

// limitedReader paces a download.
type limitedReader struct {
	io.ReadCloser
	ctx context.Context
	l   *rate.Limiter
}

func (r limitedReader) Read(p []byte) (int, error) {
	if len(p) > r.l.Burst() {
		p = p[:r.l.Burst()]
	}
	n, err := r.ReadCloser.Read(p)
	if n > 0 {
		if werr := waitN(r.ctx, r.l, n); werr != nil && err == nil {
			err = werr
		}
	}
	return n, err
}
