package main

import (
	"runtime/debug"
	"testing"
)

func TestDescribeBuild(t *testing.T) {
	for _, c := range []struct {
		name    string
		bi      debug.BuildInfo
		release string
		want    string
	}{
		{"released", debug.BuildInfo{GoVersion: "go1.26", Main: debug.Module{Version: "v1.2.0"}}, "", "v1.2.0 go1.26"},
		{"from a clean clone", debug.BuildInfo{GoVersion: "go1.26", Main: debug.Module{Version: "(devel)"},
			Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "2735e01aabbccddeeff00112233"}, {Key: "vcs.modified", Value: "false"}}}, "", "devel+2735e01aabbc go1.26"},
		{"with local changes", debug.BuildInfo{GoVersion: "go1.26", Main: debug.Module{Version: "(devel)"},
			Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "2735e01"}, {Key: "vcs.modified", Value: "true"}}}, "", "devel+2735e01-dirty go1.26"},
		{"by the Makefile", debug.BuildInfo{GoVersion: "go1.26", Main: debug.Module{Version: "v0.0.0-20261204025910-2735e01aabbc"},
			Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "2735e01aabbccddeeff00112233"}, {Key: "vcs.modified", Value: "false"}}}, "0.19", "0.19+2735e01aabbc go1.26"},
		{"pseudo-version, no release", debug.BuildInfo{GoVersion: "go1.26", Main: debug.Module{Version: "v0.0.0-20261204025910-2735e01aabbc+dirty"},
			Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "2735e01aabbccddeeff00112233"}, {Key: "vcs.modified", Value: "true"}}}, "", "devel+2735e01aabbc-dirty go1.26"},
		{"no vcs", debug.BuildInfo{GoVersion: "go1.26", Main: debug.Module{Version: "(devel)"}}, "", "devel go1.26"},
	} {
		if got := describeBuild(&c.bi, c.release); got != c.want {
			t.Errorf("%s: %q, want %q", c.name, got, c.want)
		}
	}
}
