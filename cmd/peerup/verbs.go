package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"time"

	"github.com/spf13/cobra"

	"github.com/peerup/peerup/apply"
	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/daemon"
	"github.com/peerup/peerup/diff"
	"github.com/peerup/peerup/discovery"
	"github.com/peerup/peerup/manifest"
	"github.com/peerup/peerup/transfer"
)

func (a *app) newKeygenCmd() *cobra.Command {
	var name, out string
	cmd := &cobra.Command{
		Use:   "keygen --name NAME --out DIR",
		Short: "Make a fleet signing key",
		Long: `Writes DIR/NAME.key (the secret key, mode 0600; keep it on the build
server only) and DIR/NAME.pub (the public key, armored; install it on every
laptop and pass it with --trust). The key is ed25519 in the form GnuPG 2.2
accepts, so gpg can check peerup's signatures.`,
		Example: "  peerup keygen --name fleet --out /etc/peerup/keys",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			e, err := manifest.GenerateKey(name)
			if err != nil {
				return err
			}
			if err := os.MkdirAll(out, 0o755); err != nil {
				return err
			}
			sec, pub, err := manifest.WriteKeyPair(e, out, name)
			if err != nil {
				return err
			}
			fmt.Printf("secret key: %s\npublic key: %s\nfingerprint: %s\n", sec, pub, manifest.NewSigner(e).Fingerprint())
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "name", "fleet", "key name (file names and user id)")
	cmd.Flags().StringVar(&out, "out", ".", "directory to write the key files to")
	return cmd
}

func (a *app) newPublishCmd() *cobra.Command {
	var repoDir, image, key, label string
	var version uint64
	var depth int
	var expires time.Duration
	var addKeys, revokeKeys []string
	var anyKey, newImage, allowSame bool
	var rollout string
	cmd := &cobra.Command{
		Use:   "publish --repo REPO --image ID --key KEYFILE [--label TEXT] [--version N] [--expires D] [--rollout PERCENT] [--add-key FPR]... [--revoke-key FPR]... TREE",
		Short: "Publish a tree as a new signed image version",
		Long: `Stores every file of TREE in REPO by its SHA-256, writes a manifest listing
every path with its type, mode, owner, size and hash, signs it with KEYFILE,
makes patches against earlier versions (--delta-depth), and only then lists
the version in REPO's index: until that last step no laptop or seed sees it,
and an interrupted publish leaves REPO as it was. The version is one above the newest in
REPO unless --version gives a higher one. REPO is created if it does not exist
and can be served by 'peerup serve' or any static web server.`,
		Example: `  peerup publish --repo /srv/peerup --image school-laptop --key fleet.key --label 'Spring term' /build/rootfs

  # Introduce a new fleet key (its .pub shipped in the tree's etc/peerup/trusted.d/),
  # retire an old one, and have laptops refuse this version after 30 days:
  peerup publish --repo /srv/peerup --image school-laptop --key fleet.key \
      --add-key 0123…CDEF --revoke-key 89AB…4567 --expires 720h /build/rootfs

  # Send it to a fifth of the laptops first ('peerup rollout' raises it):
  peerup publish --repo /srv/peerup --image school-laptop --key fleet.key --rollout 20 /build/rootfs`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			signer, err := manifest.LoadSigner(key)
			if err != nil {
				return err
			}
			repo, err := blobstore.OpenRepo(repoDir)
			if err != nil {
				return err
			}
			prog, clear := progress("hashing", "")
			o := diff.PublishOptions{PublishOptions: blobstore.PublishOptions{
				Image: image, Version: version, Label: label, Signer: signer, Progress: prog,
				KeysAdd: addKeys, KeysRevoke: revokeKeys, AnyKey: anyKey, NewImage: newImage, AllowSame: allowSame,
			}}
			if expires > 0 {
				o.Expires = time.Now().Add(expires)
			}
			encProg, encClear := progress("encoding", "signing the delta index")
			defer encClear()
			if cmd.Flags().Changed("rollout") {
				pct, err := parsePercent(rollout)
				if err != nil {
					return err
				}
				o.Rollout = &pct
			}
			if depth != 0 {
				o.Deltas = &diff.GenerateOptions{Depth: depth, Log: a.log, Progress: encProg}
			}
			o.Stored = func(pub *blobstore.Published) {
				clear()
				h := pub.Header
				fmt.Printf("stored %s version %d: %d entries, %d files, %s; %d new objects (%s)\n",
					h.Image, h.Version, h.Entries, h.Files, human(int64(h.Bytes)), pub.NewObjects, human(pub.NewBytes))
			}
			pub, err := diff.Publish(cmd.Context(), repo, args[0], o)
			clear()
			encClear()
			if err != nil {
				return err
			}
			if gen := pub.Deltas; gen != nil {
				fmt.Printf("encodings: %d for %d changed objects (%s) against up to %d earlier versions\n",
					gen.Encodings, gen.Targets, human(gen.TargetBytes), depth)
			}
			fmt.Printf("published %s version %d\n", pub.Header.Image, pub.Header.Version)
			if o.Rollout != nil {
				fmt.Printf("rolled out to %d%% of machines ('peerup rollout %d PERCENT' raises it)\n", *o.Rollout, pub.Header.Version)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&repoDir, "repo", "", "repository directory (required)")
	f.StringVar(&image, "image", "", "image id, e.g. school-laptop (required)")
	f.StringVar(&key, "key", "", "secret signing key file (required)")
	f.StringVar(&label, "label", "", "free-text label shown to users")
	f.DurationVar(&expires, "expires", 0, "laptops refuse this version once this long has passed (e.g. 720h; default: never)")
	f.StringSliceVar(&addKeys, "add-key", nil, "fingerprint of a key laptops adopt with this version; its .pub must be in TREE/"+manifest.TrustedKeysDir+" (SPEC.md §17)")
	f.StringSliceVar(&revokeKeys, "revoke-key", nil, "fingerprint of a key laptops stop trusting with this version")
	f.BoolVar(&newImage, "new-image", false, "start an image the repo does not hold yet, beside those it does")
	f.BoolVar(&allowSame, "allow-same", false, "publish a tree identical to the image's newest version as a new version")
	f.BoolVar(&anyKey, "any-key", false, "sign with a key the repo's fleet keys do not list (laptops must trust it some other way, or they refuse the version)")
	f.Uint64Var(&version, "version", 0, "version number (default: the next one)")
	f.StringVar(&rollout, "rollout", "100", "percent of machines the version goes to at first (SPEC.md §3); 'peerup rollout' raises it")
	f.IntVar(&depth, "delta-depth", 3, "make patches against this many earlier versions (0: none)")
	for _, n := range []string{"repo", "image", "key"} {
		cmd.MarkFlagRequired(n)
	}
	return cmd
}

func (a *app) newWithdrawCmd() *cobra.Command {
	var l listFlags
	cmd := &cobra.Command{
		Use:   "withdraw --repo REPO --image ID --key KEYFILE VERSION",
		Short: "Withdraw a published version, so laptops skip it",
		Long: `Adds VERSION to the image's signed list of withdrawn versions. Laptops that
have not installed it skip it and take the newest version not withdrawn;
laptops pass the list on to each other. Laptops already running it keep it
until a newer version comes. The list is signed with KEYFILE, a fleet key.`,
		Example: "  peerup withdraw --repo /srv/peerup --image school-laptop --key fleet.key 5",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			repo, v, signer, err := l.open("withdraw", args[0])
			if err != nil {
				return err
			}
			w, err := repo.Withdraw(l.image, v, signer)
			if err != nil {
				return err
			}
			fmt.Printf("withdrew %s version %d (withdrawn: %v)\n", l.image, v, w.Versions)
			return nil
		},
	}
	l.register(cmd)
	return cmd
}

func (a *app) newServeCmd() *cobra.Command {
	var repoDir, sysroot, listen string
	cmd := &cobra.Command{
		Use:   "serve (--repo REPO | --sysroot DIR) [--listen ADDR]",
		Short: "Serve a repo over HTTP",
		Long: `Serves the repo's index, signed manifests and objects over HTTP, with Range
support so cut transfers resume. With --sysroot it serves what a node holds,
so laptops can fetch from each other. Only the repo's own paths are served.`,
		Example: "  peerup serve --repo /srv/peerup\n  peerup serve --repo /srv/peerup --listen 10.0.0.5:7380",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			dir := repoDir
			if sysroot != "" {
				s, err := apply.OpenExisting(sysroot)
				if err != nil {
					return err
				}
				dir = s.Repo().Dir()
			}
			if dir == "" {
				return errors.New("give --repo or --sysroot")
			}
			if err := blobstore.CheckRepo(dir); err != nil {
				return err
			}
			lan := func() ([]net.IP, error) { return discovery.LinkAddrs("") }
			ln, err := transfer.ListenOn(cmd.Context(), listen, lan, transfer.Limits{}, a.log)
			if err != nil {
				return err
			}
			srv := transfer.NewServer(listen, transfer.NewHandler(dir, a.log))
			where := "http://" + ln.Addr().String() + "/"
			if _, isLAN, _ := transfer.ParseLAN(listen); isLAN {
				where += fmt.Sprintf(" and port %d of every LAN address (%s)", ln.Addr().(*net.TCPAddr).Port, listen)
			}
			fmt.Printf("serving %s on %s\n", dir, where)
			go func() {
				<-cmd.Context().Done()
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				srv.Shutdown(ctx)
			}()
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&repoDir, "repo", "", "repository directory")
	cmd.Flags().StringVar(&sysroot, "sysroot", "", "serve this node's own repo instead")
	cmd.Flags().StringVar(&listen, "listen", transfer.DefaultListen, "lan:PORT (loopback and the LAN interfaces' addresses, followed as they change) or an address such as :7380 (every address)")
	return cmd
}

// pullFlags are shared by pull and update.
type pullFlags struct {
	sysroot, from, image string
	trust                []string
	version              uint64
	json                 bool
	ignoreRollout        bool
	// settings shares the daemon's boot-tries, keep-encodings-mib and
	// memory-mib, so that each means the same and has one default.
	settings *daemon.ConfigFlags
}

// nothingToDo reports whether a pull's error means there is nothing to
// install, which is no failure: up to date, or the newest version held
// back (asked for by number, a held version is an error).
func (p *pullFlags) nothingToDo(err error) bool {
	return errors.Is(err, apply.ErrUpToDate) || p.version == 0 && errors.Is(err, apply.ErrHeld)
}

func (p *pullFlags) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&p.sysroot, "sysroot", "", "sysroot directory (required)")
	f.StringSliceVar(&p.trust, "trust", nil, "trusted public key file; repeat for several (required)")
	f.StringVar(&p.from, "from", "", "repo URL, e.g. http://server:7380/, or a folder holding one, e.g. a USB stick (required)")
	f.StringVar(&p.image, "image", "", "image id (default: the sysroot's, or the repo's only one)")
	f.Uint64Var(&p.version, "version", 0, "version to fetch (default: the newest)")
	f.BoolVar(&p.json, "json", false, "print the result as JSON")
	p.settings = daemon.AddConfigFlags(f, "boot-tries", "keep-encodings-mib", "memory-mib", "machine-id")
	for _, n := range []string{"sysroot", "trust", "from"} {
		cmd.MarkFlagRequired(n)
	}
}

// open readies a pull or update: the sysroot, the source and the options
// from the flags. Call clear once the pull is over.
func (p *pullFlags) open(log *slog.Logger) (s *apply.Sysroot, src apply.Source, o apply.PullOptions, clear func(), err error) {
	kr, err := manifest.LoadKeyring(p.trust...)
	if err != nil {
		return nil, nil, o, nil, err
	}
	if src, err = apply.OpenSource(p.from); err != nil {
		return nil, nil, o, nil, err
	}
	if s, err = apply.Open(p.sysroot); err != nil {
		return nil, nil, o, nil, err
	}
	var c daemon.Config
	p.settings.Apply(&c)
	c = c.WithDefaults()
	s.BootTries = c.BootTries
	s.MachineIDFile = c.MachineID
	mem := apply.MemoryMiB(c.MemoryMiB)
	debug.SetMemoryLimit(mem.SoftLimit())
	prog, clear := progress("fetching", "building the new tree")
	o = apply.PullOptions{Image: p.image, Version: p.version, Trust: kr, Progress: prog, EncodingBudget: apply.EncodingBudgetMiB(*c.KeepEncodingsMiB), Memory: mem, Log: log, IgnoreRollout: p.ignoreRollout}
	return s, src, o, clear, nil
}

// warnEtcKept says, on stderr and with --json too, which local /etc edits
// a pull kept: the admin should see that an image change did not reach this
// node. res may be nil (no pull happened).
func warnEtcKept(res *apply.PullResult) {
	if res == nil {
		return
	}
	for _, k := range res.EtcKept {
		fmt.Fprintf(os.Stderr, "peerup: kept local /%s; the image's new version was not applied\n", k)
	}
}

func (a *app) newPullCmd() *cobra.Command {
	var p pullFlags
	cmd := &cobra.Command{
		Use:   "pull --sysroot DIR --trust PUBFILE... --from URL|DIR [--version N]",
		Short: "Fetch a version and stage its tree, without switching",
		Long: `Fetches the newest (or the given) version's signed manifest from URL, checks
its signature against the trusted keys and that it is newer than the current
version, fetches only the objects the node lacks, checks each one's hash, and
builds the version's tree beside the running one. 'peerup apply' switches to
it. Nothing changes unless everything checks out.

--from may also name a folder holding a repo, such as a USB stick written by
'peerup export': it is checked exactly as a server is.`,
		Example: "  peerup pull --sysroot /sysroot --trust /etc/peerup/fleet.pub --from http://school-server:7380/",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			s, src, o, clear, err := p.open(a.log)
			if err != nil {
				return err
			}
			res, err := s.Pull(cmd.Context(), src, o)
			clear()
			if err == nil {
				warnEtcKept(res)
			}
			if p.nothingToDo(err) {
				fmt.Println(err)
				return nil
			}
			if err != nil {
				return err
			}
			if p.json {
				return printJSON(res)
			}
			if res.AlreadyStaged {
				fmt.Printf("%s version %d is already staged\n", res.Image, res.Version)
				return nil
			}
			fmt.Printf("staged %s version %d: fetched %d objects in %s (%d as patches, %s; %s raw), reused %d already held\n",
				res.Image, res.Version, res.FetchedObjects, human(res.FetchedBytes), res.PatchObjects, human(res.PatchBytes), human(res.RawBytes), res.ReusedObjects)
			return nil
		},
	}
	p.register(cmd)
	return cmd
}

func (a *app) newApplyCmd() *cobra.Command {
	var sysroot, bus string
	var version uint64
	var tries int
	cmd := &cobra.Command{
		Use:   "apply (--sysroot DIR [--version N] | [--bus BUS])",
		Short: "Switch to the staged version",
		Long: `Makes the staged tree current and keeps the old current as previous. Each
link is replaced with an atomic rename, so a power cut leaves either the old
or the new version current, never neither. Without --sysroot it asks the
running daemon (over D-Bus) to apply the update it has staged.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if sysroot == "" {
				return viaDaemon(cmd, bus, daemon.MethodApply)
			}
			s, err := apply.OpenExisting(sysroot)
			if err != nil {
				return err
			}
			s.BootTries = tries
			from, to, err := s.Switch(version)
			if err != nil && !errors.Is(err, apply.ErrPrune) {
				return err
			}
			fmt.Println(switchLine(from, to))
			return err
		},
	}
	cmd.Flags().StringVar(&sysroot, "sysroot", "", "work on this sysroot directly (no daemon)")
	cmd.Flags().Uint64Var(&version, "version", 0, "apply only if this version is the staged one")
	cmd.Flags().IntVar(&tries, "boot-tries", apply.DefaultBootTries, "boots the new version gets to reach mark-good before falling back")
	cmd.Flags().StringVar(&bus, "bus", "system", "without --sysroot: the daemon's bus (system, session or an address)")
	return cmd
}

func switchLine(from, to uint64) string {
	if from == 0 {
		return fmt.Sprintf("current is now version %d", to)
	}
	return fmt.Sprintf("current is now version %d (previous: %d)", to, from)
}

func (a *app) newUpdateCmd() *cobra.Command {
	var p pullFlags
	cmd := &cobra.Command{
		Use:   "update --sysroot DIR --trust PUBFILE... --from URL|DIR [--version N]",
		Short: "Pull a version, then switch to it",
		Long: `Does 'peerup pull' and then 'peerup apply'. Without --version it takes the newest.
--from is a repo URL or a folder holding a repo (a USB stick from 'peerup export').
A version its publisher has rolled out to only some machines ('peerup rollout')
is staged but not applied on the others, unless --ignore-rollout.`,
		Example: "  peerup update --sysroot /sysroot --trust /etc/peerup/fleet.pub --from http://school-server:7380/\n  peerup update --sysroot /sysroot --trust /etc/peerup/fleet.pub --from /media/stick",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			s, src, o, clear, err := p.open(a.log)
			if err != nil {
				return err
			}
			res, from, err := s.Update(cmd.Context(), src, o)
			clear()
			warnEtcKept(res)
			if errors.Is(err, apply.ErrNotRolledOut) {
				// The publisher's word, not a failure: the version waits
				// staged, and serves the neighbours meanwhile.
				fmt.Printf("%v; it is staged (--ignore-rollout applies it now)\n", err)
				return nil
			}
			if p.nothingToDo(err) {
				fmt.Println(err)
				return nil
			}
			if err != nil {
				return err
			}
			to := res.Version
			if p.json {
				return printJSON(struct {
					*apply.PullResult
					Previous uint64 `json:"previous"`
				}{res, from})
			}
			fmt.Printf("fetched %d objects in %s (%d as patches; %s raw), reused %d; %s\n",
				res.FetchedObjects, human(res.FetchedBytes), res.PatchObjects, human(res.RawBytes), res.ReusedObjects, switchLine(from, to))
			return nil
		},
	}
	p.register(cmd)
	cmd.Flags().BoolVar(&p.ignoreRollout, "ignore-rollout", false, "apply the version even if its rollout has not reached this machine yet (an admin's override)")
	return cmd
}

func (a *app) newStatusCmd() *cobra.Command {
	var sysroot, bus string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status (--sysroot DIR | [--bus BUS]) [--json]",
		Short: "Show the current, previous and staged versions",
		Long: `With --sysroot, reads the sysroot's links directly. Without it, asks the
running daemon over D-Bus for its state and progress.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if sysroot == "" {
				c, err := dialDaemon(bus)
				if err != nil {
					return err
				}
				defer c.Close()
				p, err := c.Props()
				if err != nil {
					return err
				}
				if asJSON {
					return printJSON(propsJSON(p))
				}
				return describeProps(p)
			}
			s, err := apply.OpenExisting(sysroot)
			if err != nil {
				return err
			}
			st, err := s.Status()
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(statusJSON(st))
			}
			show := func(v uint64) string {
				if v == 0 {
					return "none"
				}
				return fmt.Sprint(v)
			}
			img := st.Image
			if img == "" {
				img = "none yet"
			}
			fmt.Printf("image:    %s\ncurrent:  %s\nprevious: %s\nstaged:   %s\n", img, show(st.Current), show(st.Previous), show(st.Staged))
			if st.Pending != nil {
				fmt.Printf("switch:   pending: %s\n", pendingLine(st.Pending))
			}
			if st.Held != 0 {
				fmt.Printf("held:     versions up to %d (peerup unhold)\n", st.Held)
			}
			if len(st.Bad) > 0 {
				fmt.Printf("bad:      %v (failed to boot; peerup unmark-bad)\n", st.Bad)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&sysroot, "sysroot", "", "read this sysroot directly (no daemon)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().StringVar(&bus, "bus", "system", "without --sysroot: the daemon's bus (system, session or an address)")
	return cmd
}

// pendingLine says what a pending switch will do, for status.
func pendingLine(p *apply.PendingSwitch) string {
	what := "the switch to"
	if p.Rollback {
		what = "the rollback to"
	}
	return fmt.Sprintf("%s version %d was interrupted; the next peerup command or boot finishes it (current and previous above are what it makes them)", what, p.Current)
}

// pendingDoc is a pending switch in `status --json`.
type pendingDoc struct {
	Kind     string  `json:"kind"` // "rollback" or "apply"
	Current  uint64  `json:"current"`
	Previous *uint64 `json:"previous"`
}

func newPendingDoc(rollback bool, cur, prev uint64) *pendingDoc {
	kind := "apply"
	if rollback {
		kind = "rollback"
	}
	return &pendingDoc{Kind: kind, Current: cur, Previous: orNull(prev)}
}

// statusDoc is `peerup status --json`: one schema whether the sysroot or
// the daemon answers (SPEC.md §11), so a script reads either the same
// way. What the one that answered cannot know is null: the daemon does not
// say what is staged, the sysroot knows no state, offer or progress.
// Versions of 0 (none) are null too.
type statusDoc struct {
	Image    *string  `json:"image"`
	Current  *uint64  `json:"current"`
	Previous *uint64  `json:"previous"`
	Staged   *uint64  `json:"staged"`
	Held     *uint64  `json:"held"`
	Bad      []uint64 `json:"bad"`
	// Pending: a switch begun and not finished; current and previous are
	// already what it makes them.
	Pending *pendingDoc `json:"pending"`

	State            *string `json:"state"`
	Available        *uint64 `json:"available"`
	UpdateID         *string `json:"update_id"`
	UpdateLabel      *string `json:"update_label"`
	UpdateMessage    *string `json:"update_message"`
	DownloadSize     *uint64 `json:"download_size"`
	DownloadedBytes  *uint64 `json:"downloaded_bytes"`
	UnpackedSize     *uint64 `json:"unpacked_size"`
	FullDownloadSize *uint64 `json:"full_download_size"`
	FullUnpackedSize *uint64 `json:"full_unpacked_size"`
	Peers            *uint32 `json:"peers"`
	ErrorName        *string `json:"error_name"`
	ErrorMessage     *string `json:"error_message"`
	RolloutPercent   *uint32 `json:"rollout_percent"`
	RolloutWaiting   *bool   `json:"rollout_waiting"`
	Waiting          *string `json:"waiting"`
}

// orNull is v, or nil (JSON null) for the zero value.
func orNull[T comparable](v T) *T {
	var zero T
	if v == zero {
		return nil
	}
	return &v
}

// statusJSON is the sysroot's answer.
func statusJSON(st apply.Status) statusDoc {
	bad := st.Bad
	if bad == nil {
		bad = []uint64{}
	}
	doc := statusDoc{Image: orNull(st.Image), Current: orNull(st.Current), Previous: orNull(st.Previous),
		Staged: orNull(st.Staged), Held: orNull(st.Held), Bad: bad}
	if p := st.Pending; p != nil {
		doc.Pending = newPendingDoc(p.Rollback, st.Current, st.Previous)
	}
	return doc
}

// propsJSON is the daemon's answer.
func propsJSON(p daemon.Props) statusDoc {
	bad := []uint64{}
	if p.BadVersion != 0 {
		bad = append(bad, p.BadVersion)
	}
	var pending *pendingDoc
	if p.SwitchPending {
		pending = newPendingDoc(apply.IsRollback(p.CurrentVersion, p.PreviousVersion), p.CurrentVersion, p.PreviousVersion)
	}
	state, peers := string(p.State), p.PeerCount
	size, done := p.DownloadSize, p.DownloadedBytes
	var pct *uint32
	var waiting *bool
	if p.AvailableVersion != 0 {
		pct, waiting = &p.RolloutPercent, &p.RolloutWaiting
	}
	return statusDoc{RolloutPercent: pct, RolloutWaiting: waiting, Image: orNull(p.Image), Current: orNull(p.CurrentVersion), Previous: orNull(p.PreviousVersion),
		Held: orNull(p.HeldVersion), Bad: bad,
		State: &state, Available: orNull(p.AvailableVersion),
		UpdateID: orNull(p.UpdateID), UpdateLabel: orNull(p.UpdateLabel), UpdateMessage: orNull(p.UpdateMessage),
		DownloadSize: &size, DownloadedBytes: &done, UnpackedSize: orNull(p.UnpackedSize),
		FullDownloadSize: orNull(p.FullDownloadSize), FullUnpackedSize: orNull(p.FullUnpackedSize),
		Peers: &peers, ErrorName: orNull(p.ErrorName), ErrorMessage: orNull(p.ErrorMessage), Waiting: orNull(p.Waiting),
		Pending: pending}
}

func (a *app) newRollbackCmd() *cobra.Command {
	var sysroot, bus string
	var nextBoot bool
	cmd := &cobra.Command{
		Use:   "rollback (--sysroot DIR [--next-boot] | [--bus BUS])",
		Short: "Go back to the previous version",
		Long: `Makes the previous tree current again, and the current one previous. The
version rolled back from is held: it is not installed again until a newer
version appears or peerup unhold. Asking again changes nothing: once current
is the older version, rollback says so. To go forward again, peerup unhold
and then update (the kept tree is reused). A rollback an interrupted peerup
left half done is finished first. Without --sysroot it asks the running
daemon.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if sysroot == "" {
				return viaDaemon(cmd, bus, daemon.MethodRollback)
			}
			s, err := apply.OpenExisting(sysroot)
			if err != nil {
				return err
			}
			if nextBoot {
				if err := s.RevertNextBoot(); errors.Is(err, apply.ErrRolledBack) {
					fmt.Printf("%v; nothing changed\n", err)
					return nil
				} else if err != nil {
					return err
				}
				fmt.Println("the next boot starts the previous version")
				return nil
			}
			r, err := s.RollbackDetail()
			if err != nil {
				return err
			}
			st, err := s.Status()
			if err != nil {
				return err
			}
			held := ""
			if st.Held >= r.From {
				held = fmt.Sprintf("; versions up to %d are held until peerup unhold or a newer version", st.Held)
			}
			switch {
			case r.Finished:
				fmt.Printf("finished the interrupted rollback: current is now version %d (previous: %d)%s\n", r.To, r.From, held)
			case r.Already:
				fmt.Printf("already rolled back, nothing changed: current is version %d (previous: %d)%s\n", r.To, r.From, held)
			default:
				fmt.Printf("rolled back: current is now version %d (previous: %d)%s\n", r.To, r.From, held)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&sysroot, "sysroot", "", "work on this sysroot directly (no daemon)")
	cmd.Flags().BoolVar(&nextBoot, "next-boot", false, "leave the links alone and have the next boot start previous")
	cmd.Flags().StringVar(&bus, "bus", "system", "without --sysroot: the daemon's bus (system, session or an address)")
	return cmd
}

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func human(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
