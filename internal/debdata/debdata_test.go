package debdata

import (
	"slices"
	"testing"
)

func TestParseMadison(t *testing.T) {
	for _, tc := range []struct {
		name, out string
		want      []string
	}{
		{"none", "", nil},
		{"two suites", "     libc6 | 2.36-9+deb12u14 | http://deb.debian.org/debian bookworm/main amd64 Packages\n     libc6 | 2.36-9+deb12u7 | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages\n",
			[]string{"2.36-9+deb12u14", "2.36-9+deb12u7"}},
		{"one version in two suites, and a source line", "  git | 1:2.39.5-0+deb12u3 | http://a bookworm/main amd64 Packages\n  git | 1:2.39.5-0+deb12u3 | http://b bookworm-updates/main amd64 Packages\n  git | 1:2.39.5-0+deb12u3 | http://a bookworm/main Sources\n",
			[]string{"1:2.39.5-0+deb12u3"}},
		{"garbage", "N: Unable to locate package nosuch\n|\n", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := parseMadison(tc.out); !slices.Equal(got, tc.want) {
				t.Errorf("parseMadison = %q, want %q", got, tc.want)
			}
		})
	}
}

func FuzzParseMadison(f *testing.F) {
	f.Add("  libc6 | 2.36-9+deb12u14 | http://deb.debian.org/debian bookworm/main amd64 Packages\n")
	f.Fuzz(func(t *testing.T, out string) {
		vers := parseMadison(out)
		for i, v := range vers {
			if slices.Contains(vers[i+1:], v) {
				t.Fatalf("version %q listed twice", v)
			}
		}
	})
}
