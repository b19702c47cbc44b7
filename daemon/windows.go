package daemon

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Window is a span of the week in which the daemon may switch to a staged
// version on its own (apply-windows, SPEC.md §11): the days it opens on and
// a time of day range, in local time. A range whose end is not after its
// start runs past midnight into the next day, and belongs to the day it
// opens on: "Fri 16:00-08:00" is Friday 16:00 to Saturday 08:00.
type Window struct {
	days  uint8 // bit d set: opens on time.Weekday d
	start int   // minutes after midnight, 0..1439
	end   int   // minutes after midnight, 1..1440; <= start: the next day
}

// Windows are the spans the daemon may apply in; none means any time.
type Windows []Window

const (
	allDays    = 1<<7 - 1
	minutesDay = 24 * 60
)

// dayNames are the weekdays as windows name them, in time.Weekday's order.
var dayNames = [7]string{"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"}

// ParseWindows parses apply-windows, each as ParseWindow.
func ParseWindows(specs []string) (Windows, error) {
	var ws Windows
	for _, s := range specs {
		w, err := ParseWindow(s)
		if err != nil {
			return nil, fmt.Errorf("apply-windows: %w", err)
		}
		ws = append(ws, w)
	}
	return ws, nil
}

// ParseWindow parses "DAYS HH:MM-HH:MM", "DAYS" (the whole of each day) or
// "HH:MM-HH:MM" (every day). DAYS is a comma-separated list of days (Mon,
// Tue, ... Sun) and ranges of them (Mon-Fri; Fri-Mon wraps round the
// weekend). An end of 24:00 is midnight at the end of the day.
func ParseWindow(s string) (Window, error) {
	fields := strings.Fields(s)
	w := Window{days: allDays, start: 0, end: minutesDay}
	if len(fields) == 0 || len(fields) > 2 {
		return Window{}, fmt.Errorf("window %q: want DAYS, HH:MM-HH:MM or DAYS HH:MM-HH:MM", s)
	}
	times := fields[len(fields)-1]
	if !strings.Contains(times, ":") {
		times = ""
	} else {
		fields = fields[:len(fields)-1]
	}
	if len(fields) == 1 {
		days, err := parseDays(fields[0])
		if err != nil {
			return Window{}, fmt.Errorf("window %q: %w", s, err)
		}
		w.days = days
	} else if times == "" {
		return Window{}, fmt.Errorf("window %q: want DAYS, HH:MM-HH:MM or DAYS HH:MM-HH:MM", s)
	}
	if times != "" {
		from, to, ok := strings.Cut(times, "-")
		if !ok {
			return Window{}, fmt.Errorf("window %q: times %q: want HH:MM-HH:MM", s, times)
		}
		var err error
		if w.start, err = parseClock(from, false); err != nil {
			return Window{}, fmt.Errorf("window %q: %w", s, err)
		}
		if w.end, err = parseClock(to, true); err != nil {
			return Window{}, fmt.Errorf("window %q: %w", s, err)
		}
		if w.start == w.end {
			return Window{}, fmt.Errorf("window %q: it opens and closes at the same time (for whole days, give the days alone)", s)
		}
	}
	return w, nil
}

func parseDays(s string) (uint8, error) {
	var days uint8
	for part := range strings.SplitSeq(s, ",") {
		from, to, isRange := strings.Cut(part, "-")
		a, err := parseDay(from)
		if err != nil {
			return 0, err
		}
		b := a
		if isRange {
			if b, err = parseDay(to); err != nil {
				return 0, err
			}
		}
		for d := a; ; d = (d + 1) % 7 {
			days |= 1 << d
			if d == b {
				break
			}
		}
	}
	return days, nil
}

func parseDay(s string) (int, error) {
	for i, n := range dayNames {
		if strings.EqualFold(s, n) {
			return i, nil
		}
	}
	return 0, fmt.Errorf("unknown day %q (want Mon, Tue, Wed, Thu, Fri, Sat or Sun)", s)
}

// parseClock reads HH:MM as minutes after midnight; 24:00 only as an end.
func parseClock(s string, isEnd bool) (int, error) {
	hh, mm, ok := strings.Cut(s, ":")
	h, herr := strconv.Atoi(hh)
	m, merr := strconv.Atoi(mm)
	if !ok || herr != nil || merr != nil || len(hh) == 0 || len(hh) > 2 || len(mm) != 2 || hh[0] == '+' || hh[0] == '-' || mm[0] == '+' || mm[0] == '-' {
		return 0, fmt.Errorf("time %q: want HH:MM", s)
	}
	if m > 59 || h > 24 || (h == 24 && (m != 0 || !isEnd)) {
		return 0, fmt.Errorf("time %q: out of range (00:00 to 23:59, or 24:00 as an end)", s)
	}
	return h*60 + m, nil
}

func (w Window) on(d time.Weekday) bool { return w.days&(1<<d) != 0 }

// Contains reports whether t (in its own location) falls in the window.
func (w Window) Contains(t time.Time) bool {
	d, m := t.Weekday(), t.Hour()*60+t.Minute()
	if w.start < w.end {
		return w.on(d) && m >= w.start && m < w.end
	}
	return (w.on(d) && m >= w.start) || (w.on((d+6)%7) && m < w.end)
}

// String is the window as ParseWindow reads it.
func (w Window) String() string {
	var parts []string
	if w.days != allDays {
		parts = append(parts, w.dayString())
	}
	if w.start != 0 || w.end != minutesDay {
		parts = append(parts, fmt.Sprintf("%02d:%02d-%02d:%02d", w.start/60, w.start%60, w.end/60, w.end%60))
	}
	if len(parts) == 0 {
		return "Mon-Sun"
	}
	return strings.Join(parts, " ")
}

// dayString writes the days as runs, Monday first: "Mon-Fri", "Sat-Sun".
func (w Window) dayString() string {
	var runs []string
	for i := 0; i < 7; {
		d := time.Weekday((i + 1) % 7) // Monday first
		if !w.on(d) {
			i++
			continue
		}
		j := i
		for j+1 < 7 && w.on(time.Weekday((j+2)%7)) {
			j++
		}
		run := dayNames[d]
		if j > i {
			run += "-" + dayNames[(j+1)%7]
		}
		runs = append(runs, run)
		i = j + 1
	}
	return strings.Join(runs, ",")
}

// Contains reports whether t falls in any of the windows; no windows
// contain every time.
func (ws Windows) Contains(t time.Time) bool {
	if len(ws) == 0 {
		return true
	}
	for _, w := range ws {
		if w.Contains(t) {
			return true
		}
	}
	return false
}

// NextOpen is the first time from t on that falls in a window (t itself
// if it does). Every window opens within a week.
func (ws Windows) NextOpen(t time.Time) time.Time {
	if ws.Contains(t) {
		return t
	}
	var best time.Time
	y, mo, day := t.Date()
	for _, w := range ws {
		for i := 0; i <= 7; i++ {
			open := time.Date(y, mo, day+i, w.start/60, w.start%60, 0, 0, t.Location())
			if open.After(t) && w.on(open.Weekday()) && (best.IsZero() || open.Before(best)) {
				best = open
			}
		}
	}
	return best
}
