package main

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestMeterLine(t *testing.T) {
	start := time.Unix(1_700_000_000, 0)
	for _, c := range []struct {
		name        string
		after       string
		done, total int64
		el          time.Duration
		want        string
	}{
		{"just started: no rate, no guess", "", 0, 20 << 20, 0, "fetching  [--------------------] 0 B / 20.0 MiB  ETA --"},
		{"under a second: no guess yet", "", 1 << 20, 20 << 20, 500 * time.Millisecond, "fetching  [#-------------------] 1.0 MiB / 20.0 MiB  ETA --"},
		{"a quarter in 10s", "", 5 << 20, 20 << 20, 10 * time.Second, "fetching  [#####---------------] 5.0 MiB / 20.0 MiB  512.0 KiB/s  ETA 30s"},
		{"minutes left", "", 1 << 20, 100 << 20, 2 * time.Second, "fetching  [--------------------] 1.0 MiB / 100.0 MiB  512.0 KiB/s  ETA 3m18s"},
		{"hours left", "", 1 << 20, 8 << 30, 5 * time.Second, "fetching  [--------------------] 1.0 MiB / 8.0 GiB  204.8 KiB/s  ETA 11h22m"},
		{"done, nothing after", "", 20 << 20, 20 << 20, 4 * time.Second, "fetching  [####################] 20.0 MiB / 20.0 MiB  5.0 MiB/s  ETA 0s"},
		{"done, still at work", "building the new tree", 20 << 20, 20 << 20, 4 * time.Second, "fetching  20.0 MiB in 4s; building the new tree"},
		{"a peer sent more than the total", "", 30 << 20, 20 << 20, 4 * time.Second, "fetching  [####################] 20.0 MiB / 20.0 MiB  5.0 MiB/s  ETA 0s"},
		{"total not known", "", 3 << 20, 0, time.Second, "fetching  3.0 MiB"},
	} {
		m := meter{what: "fetching", after: c.after, start: start}
		if got := m.line(c.done, c.total, start.Add(c.el)); got != c.want {
			t.Errorf("%s:\n got %q\nwant %q", c.name, got, c.want)
		}
		if len(m.line(c.done, c.total, start.Add(c.el))) > 80 {
			t.Errorf("%s: line longer than 80 columns", c.name)
		}
	}
}

// TestLinesLeaveAClearScreen checks what a terminal is sent: the lines
// are reserved once, each update rewrites its own line in place, and clear
// (on success, failure or Ctrl-C alike) blanks them all and leaves the
// cursor at the first, so that no bar characters stay on the screen.
func TestLinesLeaveAClearScreen(t *testing.T) {
	var out bytes.Buffer
	l := newLines(&out, 2)
	l.set(1, "b one", true)
	l.set(1, "b two", false) // within the redraw interval: not drawn
	l.set(0, "a", true)
	l.clear()
	l.clear()
	want := "\n\n" +
		"\033[1A\rb one\033[K\033[1B\r" +
		"\033[2A\ra\033[K\033[2B\r" +
		"\033[2A\r\033[J"
	if got := out.String(); got != want {
		t.Errorf("terminal got %q\nwant %q", got, want)
	}
	if strings.Contains(out.String(), "b two") {
		t.Error("drew faster than the redraw interval")
	}
}
