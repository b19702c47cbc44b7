package apply_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/peerup/peerup/apply"
	"github.com/peerup/peerup/diff"
	"github.com/peerup/peerup/internal/hostile"
	"github.com/peerup/peerup/manifest"
	"github.com/peerup/peerup/transfer"
)

// maxPeakRSS is the memory a laptop's pull may reach under attack: a quarter
// of a 256 MiB laptop that also runs a desktop (SPEC.md §17).
const maxPeakRSS = 64 << 20

// childEnv names the pull a re-executed test binary runs (TestMemoryChild).
const childEnv = "PEERUP_MEMORY_CHILD"

// childPull is what the parent asks of the child, and childResult what it
// hears back on the child's last line of output.
type childPull struct {
	Sysroot, Source, Helper, Trust string
}

type childResult struct {
	Err string
	// PeakRSS is the child's VmHWM in bytes, read from /proc/self/status as
	// the pull ends. Not getrusage: a child's ru_maxrss carries the high
	// water mark of every process it was exec'd from (go test, its
	// compiler) and so says nothing about the pull.
	PeakRSS int64
}

// TestAttackBoundedMemory asserts that no byte from a peer is held or
// inflated beyond its cap: an endless manifest, delta index, signature or
// index — each also as a gzip bomb (Content-Encoding: gzip, a few hundred
// KiB that inflate to 256 MiB) — fail the pull with an error naming the
// peer and the limit; an endless or bombed /have, a /have over its size
// and a neighbour claiming 4096 new objects a second for the whole pull
// cost only that neighbour, and the update completes from the honest
// source. The pull runs in a child process and its peak RSS (VmHWM: the
// kernel's count, not the Go heap's) stays at most 64 MiB in every case.
func TestAttackBoundedMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("builds 256 MiB gzip bombs and runs a pull per case in a child process")
	}
	const inflated = 256 << 20
	endless := func(prefix string) http.Handler { return hostile.Endless([]byte(prefix)) }
	bomb := func(prefix string) http.Handler { return hostile.GzipBomb([]byte(prefix), inflated) }
	const have = "/have/"
	// zstd bombs: a few hundred KiB that inflate to 256 MiB, as a manifest
	// delta that names a small target and as a packed delta index.
	zbomb := func(prefix string, line string) http.Handler {
		data := append([]byte(prefix), bytes.Repeat([]byte(line), inflated/len(line))...)
		z, err := diff.EncodeZstd(data)
		if err != nil {
			t.Fatal(err)
		}
		return hostile.Bytes(z)
	}
	deltaHeader := "peerup-manifest-delta 1\nbase " + manifest.Digest{}.String() + "\ntarget " + manifest.Digest{}.String() + " 4096\n"
	for _, tc := range []struct {
		name    string
		path    string // the primary source's file that is hostile, or
		have    bool   // the neighbour's /have that is hostile
		derived bool   // the primary serves manifest deltas and packed indexes
		body    http.Handler
		text    string // the refusal says it (with the peer), or "" if the update completes
	}{
		{"endless manifest delta", manifestDeltaURL(3, 2), false, true, endless("\x28\xb5\x2f\xfd"), "manifest delta from v2"},
		{"gzip-bombed manifest delta", manifestDeltaURL(3, 2), false, true, bomb("\x28\xb5\x2f\xfd"), `Content-Encoding "gzip"`},
		{"zstd-bombed manifest delta", manifestDeltaURL(3, 2), false, true, zbomb(deltaHeader, "+"+strings.Repeat("x", 60)+"\n"), "rebuilds more than the 4096 bytes"},
		{"zstd-bombed delta index", packedDeltasURL(3), false, true, zbomb("peerup-deltas 1\n", strings.Repeat("0", 63)+"\n"), "over the declared"},
		{"endless manifest", manifestURL(3), false, false, endless("peerup-manifest 1\n"), "larger than the limit of"},
		{"gzip-bombed manifest", manifestURL(3), false, false, bomb("peerup-manifest 1\n"), `Content-Encoding "gzip"`},
		{"endless delta index", deltasURL(3), false, false, endless("peerup-deltas 1\n"), "larger than the limit of"},
		{"gzip-bombed delta index", deltasURL(3), false, false, bomb("peerup-deltas 1\n"), `Content-Encoding "gzip"`},
		{"endless signature", manifestURL(3) + ".sig", false, false, endless(""), "larger than the limit of"},
		{"gzip-bombed signature", manifestURL(3) + ".sig", false, false, bomb(""), `Content-Encoding "gzip"`},
		{"endless index", "/index", false, false, endless("peerup-index 1\n"), "larger than the limit of"},
		{"gzip-bombed index", "/index", false, false, bomb("peerup-index 1\n"), `Content-Encoding "gzip"`},
		{"endless have", have, true, false, endless("peerup-have 1\ntotal 4096\n"), ""},
		{"gzip-bombed have", have, true, false, bomb("peerup-have 1\ntotal 4096\n"), ""},
		{"have of 65,536 fresh digests", have, true, false, hostile.HaveFlood(1 << 16), ""},
		{"have flood, 4096 fresh digests a poll", have, true, false, hostile.HaveFlood(transfer.MaxHave), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sc := newScene(t)
			primary := sc.peer()
			if tc.derived {
				primary = sc.peerWithDerived()
			}
			req := childPull{Sysroot: sc.s.Dir(), Source: primary.URL(), Trust: sc.f.pub}
			var attacker *hostile.Peer
			if tc.have {
				// The honest source is slow, so the pull lasts several
				// of the neighbour's one-second polls.
				primary.On("/objects/", "", hostile.Delayed(sc.honest(), 2*time.Second))
				attacker = hostile.New(t, nil)
				attacker.On(have, "", tc.body)
				req.Helper = attacker.URL()
			} else {
				primary.OnPath(tc.path, tc.body)
				attacker = primary
			}
			res, peak := runChildPull(t, req)
			t.Logf("peak RSS of the pulling process: %.1f MiB; err: %s", float64(peak)/(1<<20), res.Err)
			if peak > maxPeakRSS {
				t.Errorf("peak RSS %.1f MiB, bound %d MiB", float64(peak)/(1<<20), maxPeakRSS>>20)
			}
			if tc.text == "" {
				if res.Err != "" {
					t.Fatalf("the update did not complete despite an honest source: %s", res.Err)
				}
				if n := attacker.Hits(have, ""); n == 0 {
					t.Fatal("the neighbour was never polled: the test proves nothing")
				} else {
					t.Logf("the hostile neighbour was polled %d times", n)
				}
				return
			}
			if res.Err == "" {
				t.Fatal("the attack succeeded: the pull accepted it")
			}
			if !strings.Contains(res.Err, tc.text) || !strings.Contains(res.Err, attacker.Addr()) {
				t.Errorf("error %q does not name the peer %s and say %q", res.Err, attacker.Addr(), tc.text)
			}
			if st, _ := sc.s.Status(); st.Current != 2 || st.Staged != 0 {
				t.Errorf("status after the attack: %+v", st)
			}
		})
	}
}

// runChildPull re-executes this test binary to run one pull as its own
// process and returns the child's answer and peak resident set size in
// bytes, as the kernel counted it.
func runChildPull(t *testing.T, req childPull) (childResult, int64) {
	t.Helper()
	b, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	ctx := hostile.Context(t, attackDeadline+30*time.Second)
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestMemoryChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), childEnv+"="+string(b))
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child pull: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	var res childResult
	for _, l := range lines {
		if j, ok := strings.CutPrefix(l, "RESULT "); ok {
			if err := json.Unmarshal([]byte(j), &res); err != nil {
				t.Fatal(err)
			}
		}
	}
	if res.PeakRSS <= 0 {
		t.Fatalf("the child reported no peak RSS:\n%s", out)
	}
	return res, res.PeakRSS
}

// TestMemoryChild is the pulling side of TestAttackBoundedMemory; it does
// nothing unless re-executed by it.
func TestMemoryChild(t *testing.T) {
	spec := os.Getenv(childEnv)
	if spec == "" {
		t.Skip("run by TestAttackBoundedMemory in a child process")
	}
	var req childPull
	if err := json.Unmarshal([]byte(spec), &req); err != nil {
		t.Fatal(err)
	}
	err := childRun(req)
	res := childResult{PeakRSS: vmHWM()}
	if err != nil {
		res.Err = err.Error()
	}
	b, _ := json.Marshal(res)
	fmt.Printf("\nRESULT %s\n", b)
}

func childRun(req childPull) error {
	kr, err := manifest.LoadKeyring(req.Trust)
	if err != nil {
		return fmt.Errorf("trust: %w", err)
	}
	s, err := apply.Open(req.Sysroot)
	if err != nil {
		return fmt.Errorf("sysroot: %w", err)
	}
	src, err := apply.OpenSource(req.Source)
	if err != nil {
		return err
	}
	o := apply.PullOptions{Version: 3, Trust: kr, Parallel: 1}
	if req.Helper != "" {
		c, err := transfer.NewClient(req.Helper, nil)
		if err != nil {
			return err
		}
		o.Helpers = func() []apply.Haver { return []apply.Haver{c} }
	}
	ctx, cancel := context.WithTimeout(context.Background(), attackDeadline)
	defer cancel()
	_, err = s.Pull(ctx, src, o)
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("the pull ran into its deadline: %w", err)
	}
	return err
}

// vmHWM is this process's peak resident set size in bytes (-1: unknown).
func vmHWM() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				return -1
			}
			return kb << 10
		}
	}
	return -1
}
