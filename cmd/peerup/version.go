package main

import (
	"runtime/debug"
	"strings"
)

// release is the package version the Makefile stamps in (-X
// main.release=…, read from debian/changelog, so that the .deb and the
// binary agree); empty for `go install` and `go build`.
var release string

// version says which peerup this is: the Makefile's release, else the
// module version for `go install …@vX`, else "devel"; with the commit it
// was built from (and whether the tree had changes), so that an admin's
// bug report names the build.
func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return strings.TrimSpace(release + " unknown")
	}
	return describeBuild(bi, release)
}

func describeBuild(bi *debug.BuildInfo, release string) string {
	v := bi.Main.Version
	var rev, modified string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			modified = s.Value
		}
	}
	// A build from a checkout has a pseudo-version (v0.0.0-date-commit)
	// that says less than the release and the commit.
	pseudo := strings.HasPrefix(v, "v0.0.0-") || strings.Contains(v, "+dirty")
	if release != "" || v == "" || v == "(devel)" || pseudo {
		v = "devel"
		if release != "" {
			v = release
		}
		if rev != "" {
			v += "+" + rev[:min(12, len(rev))]
			if modified == "true" {
				v += "-dirty"
			}
		}
	}
	return strings.TrimSpace(v + " " + bi.GoVersion)
}
