package memcg

import (
	"context"
	"path/filepath"
	"testing"
)

// TestPeakRSSIsTheCommandsOwn: a command that holds 32 MiB reports about
// that much, and one that touches little reports little, whatever the test
// process holds.
func TestPeakRSSIsTheCommandsOwn(t *testing.T) {
	if why := Available(); why != "" {
		t.Skip(why)
	}
	ballast := make([]byte, 128<<20) // the test's own high-water mark
	for i := range ballast {
		ballast[i] = 1
	}
	g, err := New("self-test", 256<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Remove()
	cases := []struct {
		name     string
		args     []string
		min, max int64
	}{
		{"true", []string{"/bin/true"}, 0, 8 << 20},
		{"32 MiB", []string{"/bin/sh", "-c", `x=$(head -c 33554432 /dev/zero | tr '\0' a); echo ${#x}`}, 30 << 20, 100 << 20},
	}
	for _, tc := range cases {
		rss := filepath.Join(t.TempDir(), "rss")
		cmd := g.Command(context.Background(), rss, tc.args[0], tc.args[1:]...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", tc.name, err, out)
		}
		n, err := PeakRSS(rss)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: peak RSS %.1f MiB", tc.name, float64(n)/(1<<20))
		if n < tc.min || n > tc.max {
			t.Errorf("%s: peak RSS %d, want %d..%d", tc.name, n, tc.min, tc.max)
		}
	}
	_ = ballast[len(ballast)-1]
}
