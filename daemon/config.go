package daemon

import (
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/spf13/pflag"

	"github.com/peerup/peerup/apply"
	"github.com/peerup/peerup/transfer"
)

// Config is everything `peerup daemon` can be told, by flags or by the TOML
// file (/etc/peerup/peerup.toml); flags override the file. It is the one
// list of settings: each field's toml tag is its file key and its flag name
// (a flag tag renames the flag), its usage tag the flag's help, and
// Defaults its default. A list's flag splits its values at commas, unless
// the field has a repeat tag (values that hold commas: one per flag). AddConfigFlags makes the flags from it.
//
// A field's zero value means its default, so a file or a literal that
// leaves it out gets Defaults' value. A setting whose 0 means something of
// its own (not the default) is a pointer, nil meaning the default.
type Config struct {
	Sysroot string `toml:"sysroot" usage:"sysroot directory (a laptop)"`
	// Repo, instead of Sysroot, makes the daemon a seed: it serves and
	// advertises a repo (a school server's), with no sysroot of its own.
	Repo  string   `toml:"repo" usage:"seed this repo instead: serve and advertise it, announce each new version (a school server)"`
	Image string   `toml:"image" usage:"with --repo: the image to advertise, if the repo holds several"`
	Trust []string `toml:"trust" usage:"trusted public key file; repeat for several"`
	// Listen is lan:PORT by default: the addresses of the interfaces
	// discovery uses (Iface, or every multicast one), followed as they
	// come and go, and loopback (SPEC.md §5).
	Listen string `toml:"listen" usage:"where to serve this node's repo: lan:PORT for the LAN interfaces discovery uses and loopback, or an address such as 10.0.0.5:7380 (:7380 is every address, public ones included)"`
	// Iface limits discovery to one interface; NoMDNS and NoMulticast turn
	// its sources off (SPEC.md §9).
	Iface  string   `toml:"iface" usage:"discover and advertise on this interface only (default: all)"`
	Bus    string   `toml:"bus" usage:"D-Bus to export the API on: system, session, none, or an address"`
	Policy string   `toml:"policy" usage:"what to do with an update: auto, download or notify"`
	Peers  []string `toml:"peer" usage:"repo URL to ask for updates (e.g. the school server); repeat for several"`
	// Volumes are folders where a USB stick holding an exported repo may
	// be mounted (SPEC.md §16); ScanMounts also looks at every mount under
	// /media, /run/media and /mnt. The flag is singular because it is
	// given once per folder.
	Volumes    []string `toml:"volumes" flag:"volume" usage:"folder where a USB stick from 'peerup export' may be mounted; watched, and updated from like a peer; repeat for several"`
	ScanMounts bool     `toml:"scan-mounts" usage:"also look for exported repos on every mount under /media, /run/media and /mnt"`
	// PollInterval, if set, also polls the peers on a timer. Off by default:
	// discovery events wake the daemon, so it makes no traffic when there is
	// nothing to do.
	PollInterval time.Duration `toml:"poll-interval" usage:"also ask the peers on this interval (default: only when discovery says so)"`
	// BootTries is how many boots an applied version gets to reach
	// mark-good.
	BootTries   int  `toml:"boot-tries" usage:"boots an applied version gets to reach mark-good"`
	NoMDNS      bool `toml:"no-mdns" usage:"do not advertise or browse with mDNS/DNS-SD"`
	NoMulticast bool `toml:"no-multicast" usage:"do not send or hear per-version multicast announcements"`
	// KeepEncodingsMiB bounds the patches kept for neighbours, read by
	// apply.EncodingBudgetMiB: 0 keeps none and -1 sets no limit, so it is
	// a pointer (nil: the default).
	KeepEncodingsMiB *int64 `toml:"keep-encodings-mib" usage:"MiB of fetched patches to keep for neighbours (0: none; -1: no limit)"`
	// Fault is the sysroot's fault-injection hook (crash tests only).
	Fault func(point string) `toml:"-"`
	// Now is the clock the update windows are read on (tests; nil:
	// time.Now).
	Now func() time.Time `toml:"-"`
	// LANAddrs lists the LAN addresses a lan:PORT listen serves on; the
	// CLI sets it from discovery's links (nil: loopback only).
	LANAddrs transfer.Addrs `toml:"-"`
	// MaxUploads caps concurrent object uploads to neighbours;
	// MaxUploadRate and MaxDownloadRate are bytes per second (0, their
	// default: none).
	MaxUploads      int   `toml:"max-uploads" usage:"concurrent uploads to neighbours; more get 503 and go elsewhere"`
	MaxUploadRate   int64 `toml:"max-upload-rate" usage:"upload budget in bytes per second (0: none)"`
	MaxDownloadRate int64 `toml:"max-download-rate" usage:"download budget in bytes per second (0: none)"`
	// MaxConnsPerPeer caps the connections open at once from one address
	// (negative: no cap). Nodes sharing one address (several on one
	// machine) need it higher.
	MaxConnsPerPeer int `toml:"max-conns-per-peer" usage:"connections open at once from one address (-1: no cap); raise it when many nodes share an address"`
	// NoP2P makes a laptop a plain client of its configured peers (the
	// school server): it ignores discovered neighbours as sources and lends
	// nothing from a pull in progress. Discovery still wakes it. This is
	// the client-server baseline the fleet benchmark compares against.
	NoP2P bool `toml:"no-p2p" usage:"client-server mode: fetch only from --peer (the school server), never from or for neighbours"`
	// MemoryMiB is the memory an update may use (apply.MemoryMiB). The
	// daemon sets the Go runtime's soft limit from it.
	MemoryMiB int `toml:"memory-mib" usage:"memory an update may use, in MiB (SPEC.md §10, memory budget)"`
	// NoDevices and NoSetuid refuse images with device nodes, or with
	// setuid or setgid files, however validly signed (SPEC.md §17).
	NoDevices bool `toml:"no-devices" usage:"refuse images holding device nodes, however validly signed"`
	NoSetuid  bool `toml:"no-setuid" usage:"refuse images holding setuid or setgid files or file capabilities, however validly signed"`
	// MachineID places the machine in phased rollouts (SPEC.md §3).
	MachineID string `toml:"machine-id" usage:"file holding this machine's id, which places it in phased rollouts (peerup rollout)"`
	// The laptop's own rules (SPEC.md §11, "Respecting the laptop"): when
	// policy auto may switch, and what a metered connection may fetch.
	// BatteryFloorPercent's 0 means no floor, so it is a pointer.
	ApplyOn             string   `toml:"apply-on" usage:"with policy auto, when to switch to a staged version: now (within apply-windows, above battery-floor-percent) or shutdown (by peerup-apply-on-shutdown.service)"`
	ApplyWindows        []string `toml:"apply-windows" flag:"apply-window" repeat:"" usage:"local times policy auto may switch in, as \"Mon-Fri 16:00-08:00\", \"Sat-Sun\" or \"12:00-13:00\" (a range past midnight ends the next day); repeat for several (default: any time)"`
	BatteryFloorPercent *int     `toml:"battery-floor-percent" usage:"on battery below this charge (UPower), fetch but do not switch until on AC or above it (0: no floor)"`
	// SystemBus is where UPower and NetworkManager answer.
	SystemBus string `toml:"system-bus" usage:"bus of UPower (battery) and NetworkManager (metered connections): system, an address, or none to ignore them"`
	// NoReport stops the status reports a laptop sends its --peer servers
	// (SPEC.md §18).
	NoReport bool `toml:"no-report" usage:"do not send status reports to the --peer servers (for their fleet page)"`
}

// Defaults is the value of every setting a config leaves unset.
func Defaults() Config {
	keep := int64(apply.DefaultEncodingBudget >> 20)
	floor := 30
	return Config{
		Listen:           transfer.DefaultListen,
		Bus:              "system",
		Policy:           string(PolicyAuto),
		BootTries:        apply.DefaultBootTries,
		KeepEncodingsMiB: &keep,
		MaxUploads:       8,
		MaxConnsPerPeer:  transfer.DefaultMaxConnsPerPeer,
		MemoryMiB:        apply.DefaultMemoryMiB,
		MachineID:        apply.DefaultMachineIDFile,
		ApplyOn:          string(ApplyOnNow),
		// A new version's first boot should not come on the last of the
		// charge.
		BatteryFloorPercent: &floor,
		SystemBus:           "system",
	}
}

// WithDefaults fills every unset field from Defaults.
func (c Config) WithDefaults() Config {
	def := reflect.ValueOf(Defaults())
	v := reflect.ValueOf(&c).Elem()
	for i := range v.NumField() {
		if f := v.Field(i); f.IsZero() && f.CanSet() {
			f.Set(def.Field(i))
		}
	}
	return c
}

func (c Config) limits() transfer.Limits {
	// A seed uploads each object once at a time unless its laptops do not
	// share (then every laptop must get everything from it).
	return transfer.Limits{MaxUploads: c.MaxUploads, UploadRate: c.MaxUploadRate, DownloadRate: c.MaxDownloadRate, OncePerObject: c.Repo != "" && !c.NoP2P, MaxConnsPerPeer: c.MaxConnsPerPeer}
}

// LoadConfig reads a TOML config file, refusing unknown keys so that a typo
// does not silently change nothing. Keys it leaves out stay unset.
func LoadConfig(path string) (Config, error) {
	var c Config
	md, err := toml.DecodeFile(path, &c)
	if err != nil {
		return c, fmt.Errorf("config %s: %w", path, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		return c, fmt.Errorf("config %s: unknown key %q", path, und[0].String())
	}
	return c, nil
}

// configKey is one Config field as a file key and a flag.
type configKey struct {
	field     int
	key, flag string
	usage     string
	repeat    bool // a list flag given once per value, not split at commas
}

// configKeys lists Config's settings: every field with a toml key.
func configKeys() []configKey {
	t := reflect.TypeFor[Config]()
	var keys []configKey
	for i := range t.NumField() {
		sf := t.Field(i)
		key := sf.Tag.Get("toml")
		if key == "" || key == "-" {
			continue
		}
		flag := sf.Tag.Get("flag")
		if flag == "" {
			flag = key
		}
		_, repeat := sf.Tag.Lookup("repeat")
		keys = append(keys, configKey{field: i, key: key, flag: flag, usage: sf.Tag.Get("usage"), repeat: repeat})
	}
	return keys
}

// ConfigFlags are Config's settings as command-line flags.
type ConfigFlags struct {
	fs     *pflag.FlagSet
	keys   []configKey // the settings given flags
	parsed Config      // what the flags parse into
}

// AddConfigFlags registers a flag on fs for every Config setting, or only
// for the keys named (commands other than the daemon that take a few of its
// settings), with its default from Defaults.
func AddConfigFlags(fs *pflag.FlagSet, only ...string) *ConfigFlags {
	f := &ConfigFlags{fs: fs, parsed: Defaults()}
	v := reflect.ValueOf(&f.parsed).Elem()
	for _, k := range configKeys() {
		if len(only) > 0 && !slices.Contains(only, k.key) {
			continue
		}
		addFlag(fs, k, v.Field(k.field))
		f.keys = append(f.keys, k)
	}
	if len(only) > 0 && len(f.keys) != len(only) {
		panic(fmt.Sprintf("AddConfigFlags(%q): not all are config keys", only))
	}
	return f
}

func addFlag(fs *pflag.FlagSet, k configKey, v reflect.Value) {
	if v.Kind() == reflect.Pointer {
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		v = v.Elem()
	}
	switch p := v.Addr().Interface().(type) {
	case *string:
		fs.StringVar(p, k.flag, *p, k.usage)
	case *[]string:
		if k.repeat {
			fs.StringArrayVar(p, k.flag, *p, k.usage)
		} else {
			fs.StringSliceVar(p, k.flag, *p, k.usage)
		}
	case *bool:
		fs.BoolVar(p, k.flag, *p, k.usage)
	case *int:
		fs.IntVar(p, k.flag, *p, k.usage)
	case *int64:
		fs.Int64Var(p, k.flag, *p, k.usage)
	case *time.Duration:
		fs.DurationVar(p, k.flag, *p, k.usage)
	default:
		// A new kind of field needs a case here; TestConfigEveryFieldIsAKeyAndAFlag
		// finds it before anyone runs the daemon.
		panic(fmt.Sprintf("config key %s: no flag for type %s", k.key, v.Type()))
	}
}

// Apply sets on c the settings whose flags were given, leaving the rest
// (the file's, or unset) alone.
func (f *ConfigFlags) Apply(c *Config) {
	dst := reflect.ValueOf(c).Elem()
	src := reflect.ValueOf(&f.parsed).Elem()
	for _, k := range f.keys {
		if !f.fs.Changed(k.flag) {
			continue
		}
		val := src.Field(k.field)
		if val.Kind() == reflect.Pointer {
			// A copy, so that c does not share the flag's variable.
			p := reflect.New(val.Type().Elem())
			p.Elem().Set(val.Elem())
			val = p
		}
		dst.Field(k.field).Set(val)
	}
}

// ExampleConfig is the shipped /etc/peerup/peerup.toml: every setting,
// with its help and default, commented out except those a laptop must
// have (laptop, each a key and its value). It is generated from Config, so
// it lists every key the daemon reads; a test keeps the shipped file the
// same.
func ExampleConfig(laptop [][2]string) []byte {
	var b strings.Builder
	b.WriteString(`# /etc/peerup/peerup.toml: the settings of peerup daemon (peerup-daemon(1)).
# Every key is also a flag of the same name (volumes is --volume); flags
# given on the command line win. A key left out, or commented out as most
# are below, takes the default shown. An unknown key is refused, so a typo
# never silently changes nothing.
`)
	set := map[string]string{}
	for _, kv := range laptop {
		set[kv[0]] = kv[1]
	}
	def := reflect.ValueOf(Defaults())
	for _, k := range configKeys() {
		fmt.Fprintf(&b, "\n# %s\n", k.usage)
		if v, ok := set[k.key]; ok {
			fmt.Fprintf(&b, "%s = %s\n", k.key, v)
			continue
		}
		fmt.Fprintf(&b, "# %s = %s\n", k.key, tomlValue(def.Field(k.field)))
	}
	return []byte(b.String())
}

// tomlValue writes a default as TOML.
func tomlValue(v reflect.Value) string {
	if v.Kind() == reflect.Pointer {
		if v.IsNil() {
			return `""`
		}
		v = v.Elem()
	}
	switch x := v.Interface().(type) {
	case string:
		return strconv.Quote(x)
	case []string:
		q := make([]string, len(x))
		for i, s := range x {
			q[i] = strconv.Quote(s)
		}
		return "[" + strings.Join(q, ", ") + "]"
	case time.Duration:
		return strconv.Quote(x.String())
	}
	return fmt.Sprint(v.Interface())
}

// LaptopConfig is what the shipped config sets: a laptop's sysroot, the
// fleet's key, and a policy that waits for the desktop to apply.
func LaptopConfig() [][2]string {
	return [][2]string{
		{"sysroot", `"/sysroot"`},
		{"trust", `["/etc/peerup/fleet.pub"]`},
		{"policy", `"download"`},
	}
}
