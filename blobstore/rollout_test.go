package blobstore

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
)

func TestParseRollout(t *testing.T) {
	good := "peerup-rollout 1\nimage school-laptop\nseq 3\nversion 2 percent 0\nversion 5 percent 20\n"
	for _, tc := range []struct {
		name, in string
		ok       bool
	}{
		{"two versions", good, true},
		{"none", "peerup-rollout 1\nimage school-laptop\nseq 1\n", true},
		{"withdrawn magic", "peerup-withdrawn 1\nimage school-laptop\nseq 1\n", false},
		{"no final newline", "peerup-rollout 1\nimage a\nseq 1\nversion 2 percent 5", false},
		{"percent 100", "peerup-rollout 1\nimage a\nseq 1\nversion 2 percent 100\n", false},
		{"percent with a leading zero", "peerup-rollout 1\nimage a\nseq 1\nversion 2 percent 05\n", false},
		{"negative percent", "peerup-rollout 1\nimage a\nseq 1\nversion 2 percent -5\n", false},
		{"no percent", "peerup-rollout 1\nimage a\nseq 1\nversion 2\n", false},
		{"versions out of order", "peerup-rollout 1\nimage a\nseq 1\nversion 5 percent 1\nversion 2 percent 1\n", false},
		{"a version twice", "peerup-rollout 1\nimage a\nseq 1\nversion 5 percent 1\nversion 5 percent 2\n", false},
		{"version 0", "peerup-rollout 1\nimage a\nseq 1\nversion 0 percent 1\n", false},
		{"extra field", "peerup-rollout 1\nimage a\nseq 1\nversion 2 percent 1 x\n", false},
		{"too large", "peerup-rollout 1\nimage a\nseq 1\n" + string(bytes.Repeat([]byte("\n"), MaxRollout)), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := ParseRollout([]byte(tc.in))
			if tc.ok != (err == nil) {
				t.Fatalf("ParseRollout: %v, want ok=%v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrRolloutList) {
				t.Errorf("error does not wrap ErrRolloutList: %v", err)
			}
			if err == nil && !bytes.Equal(r.Marshal(), []byte(tc.in)) {
				t.Errorf("Marshal gives %q, not the input", r.Marshal())
			}
		})
	}
	r, _ := ParseRollout([]byte(good))
	for v, want := range map[uint64]int{2: 0, 5: 20, 3: 100, 9: 100} {
		if got := r.Percent(v); got != want {
			t.Errorf("Percent(%d) = %d, want %d", v, got, want)
		}
	}
	if (*Rollout)(nil).Percent(5) != 100 {
		t.Error("no list holds a version back")
	}
}

func TestRolloutSet(t *testing.T) {
	r := &Rollout{ListHead: ListHead{Image: "a"}}
	steps := []struct {
		v       uint64
		percent int
		changed bool
		want    string
	}{
		{5, 20, true, "version 5 percent 20\n"},
		{3, 0, true, "version 3 percent 0\nversion 5 percent 20\n"},
		{5, 20, false, "version 3 percent 0\nversion 5 percent 20\n"},
		{5, 100, true, "version 3 percent 0\n"},
		{7, 100, false, "version 3 percent 0\n"},
	}
	for _, s := range steps {
		if got := r.set(s.v, s.percent); got != s.changed {
			t.Errorf("set(%d, %d) changed = %v", s.v, s.percent, got)
		}
		if got := string(r.Marshal()); got != "peerup-rollout 1\nimage a\nseq 0\n"+s.want {
			t.Errorf("after set(%d, %d): %q", s.v, s.percent, got)
		}
	}
}

// TestRolloutBucket: buckets spread over 0-99, and a machine in at one
// percent stays in at every higher one.
func TestRolloutBucket(t *testing.T) {
	in := 0
	for i := range 1000 {
		b := RolloutBucket(fmt.Sprintf("%032x", i), "school-laptop", 7)
		if b < 0 || b > 99 {
			t.Fatalf("bucket %d", b)
		}
		if b != RolloutBucket(fmt.Sprintf("%032x", i), "school-laptop", 7) {
			t.Fatal("a bucket changed")
		}
		for p := 0; p < 100; p++ {
			if InRollout(b, p) && !InRollout(b, p+1) {
				t.Fatalf("bucket %d in at %d%%, out at %d%%", b, p, p+1)
			}
		}
		if InRollout(b, 20) {
			in++
		}
		if !InRollout(b, 100) || InRollout(b, 0) {
			t.Fatalf("bucket %d: 100%% must take every machine, 0%% none", b)
		}
	}
	// 200 expected; a hash far off that is broken.
	if in < 140 || in > 260 {
		t.Errorf("%d of 1000 machines in a 20%% rollout", in)
	}
}

func FuzzParseRollout(f *testing.F) {
	f.Add([]byte("peerup-rollout 1\nimage school-laptop\nseq 3\nversion 2 percent 0\nversion 5 percent 20\n"))
	f.Add([]byte("peerup-rollout 1\nimage a\nseq 1\n"))
	f.Add([]byte("peerup-rollout 1\nimage a\nseq 1\nversion 5 percent 99\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseRollout(b)
		if err != nil {
			return
		}
		// What parses is canonical: it encodes back to the same bytes.
		if !bytes.Equal(r.Marshal(), b) {
			t.Fatalf("Marshal(Parse(%q)) = %q", b, r.Marshal())
		}
		for _, e := range r.Versions {
			if e.Percent < 0 || e.Percent > 99 || r.Percent(e.Version) != e.Percent {
				t.Fatalf("entry %+v", e)
			}
		}
	})
}
