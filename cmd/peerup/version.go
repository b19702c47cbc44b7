package main

import (
	"runtime/debug"
	"strings"
)

// version says which peerup this is, from what the Go toolchain recorded
// in the binary: the module version for `go install …@vX`, else the commit
// it was built from (and whether the tree had changes), so that an admin's
// bug report names the build.
func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	return describeBuild(bi)
}

func describeBuild(bi *debug.BuildInfo) string {
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
	if v == "" || v == "(devel)" {
		v = "devel"
		if rev != "" {
			v += "+" + rev[:min(12, len(rev))]
			if modified == "true" {
				v += "-dirty"
			}
		}
	}
	return strings.TrimSpace(v + " " + bi.GoVersion)
}
