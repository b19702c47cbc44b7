package main

import (
	"runtime/debug"
	"testing"
)

func TestDescribeBuild(t *testing.T) {
	for _, c := range []struct {
		name string
		bi   debug.BuildInfo
		want string
	}{
		{"released", debug.BuildInfo{GoVersion: "go1.26", Main: debug.Module{Version: "v1.2.0"}}, "v1.2.0 go1.26"},
		{"from a clean clone", debug.BuildInfo{GoVersion: "go1.26", Main: debug.Module{Version: "(devel)"},
			Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "2735e01aabbccddeeff00112233"}, {Key: "vcs.modified", Value: "false"}}}, "devel+2735e01aabbc go1.26"},
		{"with local changes", debug.BuildInfo{GoVersion: "go1.26", Main: debug.Module{Version: "(devel)"},
			Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "2735e01"}, {Key: "vcs.modified", Value: "true"}}}, "devel+2735e01-dirty go1.26"},
		{"no vcs", debug.BuildInfo{GoVersion: "go1.26", Main: debug.Module{Version: "(devel)"}}, "devel go1.26"},
	} {
		if got := describeBuild(&c.bi); got != c.want {
			t.Errorf("%s: %q, want %q", c.name, got, c.want)
		}
	}
}
