package daemon

import (
	"strings"
	"testing"
	"time"
)

// at is a time in the week of Monday 2 March 2026, local to loc.
func at(day time.Weekday, hhmm string, loc *time.Location) time.Time {
	t, err := time.ParseInLocation("15:04", hhmm, loc)
	if err != nil {
		panic(err)
	}
	// 1 March 2026 is a Sunday.
	return time.Date(2026, time.March, 1+int(day), t.Hour(), t.Minute(), 0, 0, loc)
}

func TestWindowsContain(t *testing.T) {
	school := []string{"Mon-Fri 16:00-08:00", "Sat-Sun"}
	tests := []struct {
		specs []string
		day   time.Weekday
		clock string
		want  bool
	}{
		{school, time.Monday, "10:00", false}, // in class
		{school, time.Monday, "16:00", true},
		{school, time.Monday, "23:59", true},
		{school, time.Tuesday, "07:59", true}, // Monday's night
		{school, time.Tuesday, "08:00", false},
		{school, time.Saturday, "07:00", true}, // Friday's night, and Saturday
		{school, time.Sunday, "12:00", true},
		{school, time.Monday, "07:00", false},                          // Sat-Sun ends at midnight
		{[]string{"Mon-Fri 16:00-08:00"}, time.Monday, "07:00", false}, // Sunday opened no night
		{[]string{"12:00-13:00"}, time.Wednesday, "12:30", true},
		{[]string{"12:00-13:00"}, time.Wednesday, "13:00", false},
		{[]string{"Fri-Mon"}, time.Sunday, "03:00", true},
		{[]string{"Fri-Mon"}, time.Tuesday, "03:00", false},
		{[]string{"Mon,Wed 22:00-24:00"}, time.Wednesday, "23:30", true},
		{[]string{"Mon,Wed 22:00-24:00"}, time.Thursday, "00:30", false},
		{nil, time.Tuesday, "10:00", true}, // no windows: any time
	}
	for _, tc := range tests {
		ws, err := ParseWindows(tc.specs)
		if err != nil {
			t.Fatalf("%q: %v", tc.specs, err)
		}
		if got := ws.Contains(at(tc.day, tc.clock, time.Local)); got != tc.want {
			t.Errorf("%q at %s %s: %v, want %v", tc.specs, tc.day, tc.clock, got, tc.want)
		}
	}
}

func TestWindowsNextOpen(t *testing.T) {
	ws, _ := ParseWindows([]string{"Mon-Fri 16:00-08:00", "Sat-Sun"})
	for _, tc := range []struct {
		day         time.Weekday
		clock, want string
	}{
		{time.Monday, "10:00", "Mon 16:00"},
		{time.Friday, "12:00", "Fri 16:00"},
		{time.Tuesday, "17:00", "Tue 17:00"}, // open now
	} {
		if got := ws.NextOpen(at(tc.day, tc.clock, time.UTC)).Format("Mon 15:04"); got != tc.want {
			t.Errorf("from %s %s: opens %s, want %s", tc.day, tc.clock, got, tc.want)
		}
	}
}

func TestParseWindowErrors(t *testing.T) {
	for _, tc := range []struct{ spec, want string }{
		{"", "want DAYS"},
		{"Mon-Fry 16:00-08:00", `unknown day "Fry"`},
		{"Mon 16:00", "want HH:MM-HH:MM"},
		{"Mon 25:00-08:00", "out of range"},
		{"24:00-08:00", "out of range"},
		{"Mon 8:5-9:00", "want HH:MM"},
		{"Mon 08:00-08:00", "same time"},
		{"Mon Tue", "want DAYS"},
		{"16:00-17:00 Mon", "want DAYS"},
		{"Mon +8:00-09:00", "want HH:MM"},
	} {
		_, err := ParseWindows([]string{tc.spec})
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "apply-windows") {
			t.Errorf("%q: err = %v, want one saying %q", tc.spec, err, tc.want)
		}
	}
}

// FuzzWindows: any text parses or is refused without a panic; what
// parses reads back as itself, and the time a window set next opens is in
// it.
func FuzzWindows(f *testing.F) {
	for _, s := range []string{"Mon-Fri 16:00-08:00", "Sat-Sun", "12:00-13:00", "Fri-Mon", "Mon,Wed 22:00-24:00",
		"sun 00:00-24:00", "Mon-Sun", "Tue 23:59-00:00", "Mon-Fry", "25:00-01:00", "Mon 8:00-", "  Thu  ", "Wed,Wed-Tue 01:02-03:04"} {
		f.Add(s, int64(0))
	}
	f.Fuzz(func(t *testing.T, spec string, offset int64) {
		w, err := ParseWindow(spec)
		if err != nil {
			return
		}
		again, err := ParseWindow(w.String())
		if err != nil || again != w {
			t.Fatalf("%q reads as %q, which reads back as %+v (%v), not %+v", spec, w.String(), again, err, w)
		}
		from := time.Date(2026, time.March, 2, 0, 0, 0, 0, time.UTC).Add(time.Duration(offset%(14*24*60)) * time.Minute)
		next := Windows{w}.NextOpen(from)
		if next.Before(from) || !w.Contains(next) || next.Sub(from) > 8*24*time.Hour {
			t.Fatalf("%q from %s: opens %s, outside it or over a week on", spec, from, next)
		}
	})
}
