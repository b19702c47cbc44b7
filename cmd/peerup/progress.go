package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/term"
)

// barWidth is the cells of the bar itself; the whole line stays within 80
// columns so that it never wraps on a small laptop's terminal.
const barWidth = 20

// redraw is how often a line is drawn at most: often enough to look live,
// rarely enough that a fast local copy is not slowed by the terminal.
const redraw = 100 * time.Millisecond

// meter turns a byte count into one line of text: what, how far, how fast
// and how long is left. It draws nothing itself, so that one bar and the
// export's several bars share it.
type meter struct {
	what  string
	after string // shown once done reaches total, while the caller finishes
	start time.Time
}

func (m meter) line(done, total int64, now time.Time) string {
	if total <= 0 {
		return fmt.Sprintf("%-9s %s", m.what, human(done))
	}
	done = min(done, total)
	el := now.Sub(m.start)
	if done == total && m.after != "" {
		return fmt.Sprintf("%-9s %s in %s; %s", m.what, human(total), clock(el), m.after)
	}
	fill := int(int64(barWidth) * done / total)
	bar := strings.Repeat("#", fill) + strings.Repeat("-", barWidth-fill)
	eta := "--"
	// A rate from the first fraction of a second is noise.
	if done == total {
		eta = "0s"
	} else if done > 0 && el >= time.Second {
		eta = clock(time.Duration(float64(el) * float64(total-done) / float64(done)))
	}
	rate := ""
	if el >= time.Second {
		rate = "  " + human(int64(float64(done)/el.Seconds())) + "/s"
	}
	return fmt.Sprintf("%-9s [%s] %s / %s%s  ETA %s", m.what, bar, human(done), human(total), rate, eta)
}

// clock is a duration as a person reads a countdown: 7s, 1m05s, 2h03m.
func clock(d time.Duration) string {
	s := int64(d.Round(time.Second) / time.Second)
	switch {
	case s < 60:
		return fmt.Sprintf("%ds", s)
	case s < 3600:
		return fmt.Sprintf("%dm%02ds", s/60, s%60)
	}
	return fmt.Sprintf("%dh%02dm", s/3600, s%3600/60)
}

// progress returns a byte progress callback that draws a bar on stderr when
// it is a terminal and does nothing otherwise, and a function that blanks
// the bar. after, if not empty, is what the line says once every byte is
// in and the command is still at work (building the tree, say), so that
// the line never goes blank while something happens.
func progress(what, after string) (func(done, total int64), func()) {
	if !term.IsTerminal(int(os.Stderr.Fd())) {
		return nil, func() {}
	}
	l := newLines(os.Stderr, 1)
	m := meter{what: what, after: after, start: time.Now()}
	return func(done, total int64) { l.set(0, m.line(done, total, time.Now()), done >= total) }, l.clear
}

// lines draws n progress lines at the bottom of a terminal, each rewritten
// in place and all blanked at the end. Callers may call from any
// goroutine.
type lines struct {
	mu    sync.Mutex
	out   io.Writer
	n     int
	drawn []time.Time
	live  bool // the lines are on the screen
}

func newLines(out io.Writer, n int) *lines {
	return &lines{out: out, n: n, drawn: make([]time.Time, n)}
}

// set shows text on line i, at most once per redraw interval unless force
// (the last update of a phase must show).
func (l *lines) set(i int, text string, force bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if !force && now.Sub(l.drawn[i]) < redraw {
		return
	}
	l.drawn[i] = now
	if !l.live {
		// Reserve the lines: the cursor rests below the last one.
		fmt.Fprint(l.out, strings.Repeat("\n", l.n))
		l.live = true
	}
	if w, _, err := term.GetSize(int(os.Stderr.Fd())); err == nil && w > 1 && len(text) >= w {
		text = text[:w-1]
	}
	up := l.n - i
	// Up to the line, rewrite it, clear what a longer text left, and back.
	fmt.Fprintf(l.out, "\033[%dA\r%s\033[K\033[%dB\r", up, text, up)
}

// clear blanks every line and leaves the cursor where the first was, so
// that what the command prints next (or the shell's prompt after Ctrl-C)
// starts on a clean line. It is idempotent.
func (l *lines) clear() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.live {
		return
	}
	fmt.Fprintf(l.out, "\033[%dA\r\033[J", l.n)
	l.live = false
}
