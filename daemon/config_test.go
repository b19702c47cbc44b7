package daemon

import (
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

// TestConfigLayers: a flag wins over the file, the file over the default,
// and a setting given nowhere gets Defaults' value.
func TestConfigLayers(t *testing.T) {
	i64 := func(n int64) *int64 { return &n }
	i := func(n int) *int { return &n }
	tests := []struct {
		key, file string   // file: the TOML value
		flag      []string // the flag and its value as given
		get       func(Config) any
		fileWant  any
		flagWant  any
		def       any
	}{
		{"policy", `"download"`, []string{"--policy", "notify"}, func(c Config) any { return c.Policy }, "download", "notify", "auto"},
		{"max-uploads", `3`, []string{"--max-uploads", "5"}, func(c Config) any { return c.MaxUploads }, 3, 5, 8},
		// 0 is a setting of its own here, distinct from unset.
		{"keep-encodings-mib", `0`, []string{"--keep-encodings-mib", "-1"}, func(c Config) any { return c.KeepEncodingsMiB }, i64(0), i64(-1), i64(256)},
		{"peer", `["http://a/"]`, []string{"--peer", "http://b/", "--peer", "http://c/"}, func(c Config) any { return c.Peers }, []string{"http://a/"}, []string{"http://b/", "http://c/"}, []string(nil)},
		{"volumes", `["/media/a"]`, []string{"--volume", "/media/b"}, func(c Config) any { return c.Volumes }, []string{"/media/a"}, []string{"/media/b"}, []string(nil)},
		{"poll-interval", `"1m"`, []string{"--poll-interval", "30s"}, func(c Config) any { return c.PollInterval }, time.Minute, 30 * time.Second, time.Duration(0)},
		{"no-p2p", `true`, []string{"--no-p2p=false"}, func(c Config) any { return c.NoP2P }, true, false, false},
		{"boot-tries", `5`, []string{"--boot-tries", "2"}, func(c Config) any { return c.BootTries }, 5, 2, 3},
		// A window's days hold commas: one per flag, never split.
		{"apply-windows", `["Mon,Wed 16:00-08:00"]`, []string{"--apply-window", "Sat,Sun", "--apply-window", "12:00-13:00"}, func(c Config) any { return c.ApplyWindows }, []string{"Mon,Wed 16:00-08:00"}, []string{"Sat,Sun", "12:00-13:00"}, []string(nil)},
		{"battery-floor-percent", `0`, []string{"--battery-floor-percent", "50"}, func(c Config) any { return c.BatteryFloorPercent }, i(0), i(50), i(30)},
		{"apply-on", `"shutdown"`, []string{"--apply-on", "now"}, func(c Config) any { return c.ApplyOn }, "shutdown", "now", "now"},
	}
	for _, tc := range tests {
		for _, layer := range []struct {
			name       string
			file, flag bool
		}{{"neither", false, false}, {"file", true, false}, {"flag", false, true}, {"both", true, true}} {
			t.Run(tc.key+"/"+layer.name, func(t *testing.T) {
				body := "sysroot = \"/s\"\n"
				if layer.file {
					body += tc.key + " = " + tc.file + "\n"
				}
				path := filepath.Join(t.TempDir(), "peerup.toml")
				if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
					t.Fatal(err)
				}
				c, err := LoadConfig(path)
				if err != nil {
					t.Fatal(err)
				}
				fs := pflag.NewFlagSet("daemon", pflag.ContinueOnError)
				flags := AddConfigFlags(fs)
				var args []string
				if layer.flag {
					args = tc.flag
				}
				if err := fs.Parse(args); err != nil {
					t.Fatal(err)
				}
				flags.Apply(&c)
				c = c.WithDefaults()
				want := tc.def
				switch {
				case layer.flag:
					want = tc.flagWant
				case layer.file:
					want = tc.fileWant
				}
				if got := tc.get(c); !reflect.DeepEqual(got, want) {
					t.Errorf("%s = %v, want %v", tc.key, show(got), show(want))
				}
				if c.Sysroot != "/s" {
					t.Errorf("a flag for %s lost the file's sysroot: %q", tc.key, c.Sysroot)
				}
			})
		}
	}
}

func show(v any) any {
	if p, ok := v.(*int64); ok && p != nil {
		return *p
	}
	return v
}

// TestConfigEveryFieldIsAKeyAndAFlag: a new Config field cannot be left
// out of the file, the flags or the help.
func TestConfigEveryFieldIsAKeyAndAFlag(t *testing.T) {
	fs := pflag.NewFlagSet("daemon", pflag.ContinueOnError)
	AddConfigFlags(fs) // panics on a field type it cannot make a flag of
	ty := reflect.TypeFor[Config]()
	byField := map[int]configKey{}
	for _, k := range configKeys() {
		byField[k.field] = k
	}
	for i := range ty.NumField() {
		sf := ty.Field(i)
		if sf.Tag.Get("toml") == "-" {
			continue // not a setting (a test hook)
		}
		k, ok := byField[i]
		if !ok {
			t.Errorf("Config.%s has no toml key", sf.Name)
			continue
		}
		if k.usage == "" {
			t.Errorf("Config.%s (%s) has no usage text", sf.Name, k.key)
		}
		if fs.Lookup(k.flag) == nil {
			t.Errorf("Config.%s (%s) has no flag", sf.Name, k.key)
		}
	}
	// The zero-means-default rule needs a pointer where 0 is a setting;
	// every pointer must then have a default to fall back to.
	def := reflect.ValueOf(Defaults())
	for i := range ty.NumField() {
		if ty.Field(i).Type.Kind() == reflect.Pointer && def.Field(i).IsNil() {
			t.Errorf("Config.%s is a pointer with no default", ty.Field(i).Name)
		}
	}
}

// TestConfigShippedExamplesParse: every key peerup.toml shows commented out
// is a key the daemon reads.
func TestConfigShippedExamplesParse(t *testing.T) {
	b, err := os.ReadFile("dist/peerup.toml")
	if err != nil {
		t.Fatal(err)
	}
	example := regexp.MustCompile(`(?m)^# ([a-z-]+ = .*)$`)
	var lines []string
	for _, m := range example.FindAllStringSubmatch(string(b), -1) {
		lines = append(lines, m[1])
	}
	if len(lines) == 0 {
		t.Fatal("no commented examples found in dist/peerup.toml")
	}
	path := filepath.Join(t.TempDir(), "peerup.toml")
	if err := os.WriteFile(path, []byte(string(b)+strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadConfig(path); err != nil {
		t.Errorf("uncommented examples: %v", err)
	}
}

// TestConfigFlagsSubset: a command taking a few settings gets only their
// flags, and a flag of its own with a setting's name is not taken for it.
func TestConfigFlagsSubset(t *testing.T) {
	fs := pflag.NewFlagSet("pull", pflag.ContinueOnError)
	var sysroot string
	fs.StringVar(&sysroot, "sysroot", "", "the command's own")
	flags := AddConfigFlags(fs, "memory-mib", "keep-encodings-mib")
	if fs.Lookup("policy") != nil {
		t.Error("a subset registered --policy")
	}
	if err := fs.Parse([]string{"--sysroot", "/s", "--memory-mib", "64"}); err != nil {
		t.Fatal(err)
	}
	var c Config
	flags.Apply(&c)
	if c.Sysroot != "" || c.MemoryMiB != 64 || c.KeepEncodingsMiB != nil {
		t.Errorf("Apply = %+v; want only memory-mib set", c)
	}
}
