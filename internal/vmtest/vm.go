package vmtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// DefaultAccel is QEMU's accelerator unless Options.Accel or PEERUP_VM_ACCEL
// says otherwise. TCG because the nested KVM on the build machines does not
// start stock kernels (the guest hangs after "Probing EDD").
const DefaultAccel = "tcg,thread=multi"

// DefaultMemoryMiB is the guest's RAM: that of the fleet's laptops.
const DefaultMemoryMiB = 256

// baseAppend comes first on the kernel command line. panic=5 with
// -no-reboot turns a failed boot into qemu exiting instead of a hang.
const baseAppend = "root=/dev/vda console=ttyS0 panic=5"

// Disk is one virtio drive. The first is /dev/vda, the next /dev/vdb, ...
type Disk struct {
	Path     string // a raw image
	ReadOnly bool   // the guest cannot write it (readonly=on)
}

// Options describe a VM to Start.
type Options struct {
	Kernel, Initrd string // host paths, as Kernel returns
	// Append is added to the kernel command line after
	// "root=/dev/vda console=ttyS0 panic=5"; a later root= wins.
	Append string
	Disks  []Disk
	// MemoryMiB defaults to DefaultMemoryMiB, CPUs to 2.
	MemoryMiB, CPUs int
	// Accel defaults to $PEERUP_VM_ACCEL, else DefaultAccel.
	Accel string
	// LogPath, if set, receives the raw serial console as it arrives.
	LogPath string
	// ExtraArgs are appended to qemu's arguments (say, "-cpu", "max").
	ExtraArgs []string
}

// Marker is a line "VMTEST <key> <rest>" the guest wrote on its console.
type Marker struct {
	Key, Rest string
	At        time.Duration // since Start
}

// VM is a running qemu. Its methods are safe for concurrent use.
type VM struct {
	cancel  context.CancelFunc
	proc    *os.Process
	args    []string
	started time.Time

	mu      sync.Mutex
	lines   []string
	markers []Marker
	partial []byte
	changed chan struct{} // closed and replaced on every new line
	stderr  bytes.Buffer

	exited  chan struct{} // closed once qemu is reaped and its output read
	exitErr error         // set before exited is closed
}

// Start boots a VM with no network (-nic none) and no display, its serial
// console read live. The VM lives until it powers off (-no-reboot makes a
// reboot or a panic end it too), Kill, or the end of ctx.
func Start(ctx context.Context, o Options) (*VM, error) {
	if o.Kernel == "" || o.Initrd == "" {
		return nil, errors.New("vmtest: start: Kernel and Initrd are required")
	}
	mem := o.MemoryMiB
	if mem == 0 {
		mem = DefaultMemoryMiB
	}
	cpus := o.CPUs
	if cpus == 0 {
		cpus = 2
	}
	accel := o.Accel
	if accel == "" {
		accel = os.Getenv("PEERUP_VM_ACCEL")
	}
	if accel == "" {
		accel = DefaultAccel
	}
	appendLine := baseAppend
	if o.Append != "" {
		appendLine += " " + o.Append
	}
	args := []string{
		"-name", "peerup-vmtest", "-no-user-config", "-nodefaults",
		"-accel", accel, "-m", strconv.Itoa(mem), "-smp", strconv.Itoa(cpus),
		"-nic", "none", "-display", "none", "-monitor", "none", "-no-reboot",
		"-kernel", o.Kernel, "-initrd", o.Initrd, "-append", appendLine,
		"-serial", "stdio",
	}
	for _, d := range o.Disks {
		// cache=directsync: what the guest has not flushed is really lost
		// when qemu is killed, as on a power cut.
		spec := "file=" + strings.ReplaceAll(d.Path, ",", ",,") + ",format=raw,if=virtio,cache=directsync"
		if d.ReadOnly {
			spec += ",readonly=on"
		}
		args = append(args, "-drive", spec)
	}
	args = append(args, o.ExtraArgs...)

	path, err := lookTool("qemu-system-x86_64")
	if err != nil {
		return nil, fmt.Errorf("vmtest: start: %w", err)
	}
	var logFile *os.File
	if o.LogPath != "" {
		if logFile, err = os.Create(o.LogPath); err != nil {
			return nil, fmt.Errorf("vmtest: start: %w", err)
		}
	}
	vctx, cancel := context.WithCancel(ctx)
	v := &VM{cancel: cancel, args: args, changed: make(chan struct{}), exited: make(chan struct{})}
	cmd := execCommand(vctx, path, args...)
	// A test binary that dies must not leave a qemu running.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.Stderr = &lockedWriter{mu: &v.mu, w: &v.stderr}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		cancel()
		return nil, fmt.Errorf("vmtest: start: %w", err)
	}
	if err := cmd.Start(); err != nil {
		cancel()
		if logFile != nil {
			logFile.Close()
		}
		return nil, fmt.Errorf("vmtest: start qemu: %w", err)
	}
	v.proc = cmd.Process
	v.started = time.Now()
	go func() {
		buf := make([]byte, 4096)
		for {
			n, rerr := stdout.Read(buf)
			if n > 0 {
				if logFile != nil {
					logFile.Write(buf[:n])
				}
				v.feed(buf[:n])
			}
			if rerr != nil {
				break
			}
		}
		werr := cmd.Wait()
		if logFile != nil {
			logFile.Close()
		}
		v.mu.Lock()
		if len(v.partial) > 0 {
			v.addLine(v.partial)
			v.partial = nil
		}
		v.exitErr = werr
		v.mu.Unlock()
		cancel()
		close(v.exited)
	}()
	return v, nil
}

// lockedWriter serialises qemu's stderr with the VM's readers.
type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// feed splits console output into lines.
func (v *VM) feed(b []byte) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			v.partial = append(v.partial, b...)
			return
		}
		v.addLine(append(v.partial, b[:i]...))
		v.partial = nil
		b = b[i+1:]
	}
}

// ansiEscape matches the terminal escapes systemd and the kernel print
// (colours, cursor moves, OSC titles).
var ansiEscape = regexp.MustCompile(`\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)?|\x1b[@-_]`)

// addLine records one console line, cleaned, and any marker in it. The
// marker may sit after other text: the kernel or systemd can print onto the
// same line just before the guest's write. Called with v.mu held.
func (v *VM) addLine(raw []byte) {
	line := ansiEscape.ReplaceAllString(string(raw), "")
	line = strings.Map(func(r rune) rune {
		if r < 0x20 && r != '\t' || r == 0x7f {
			return -1
		}
		return r
	}, line)
	v.lines = append(v.lines, line)
	if _, m, ok := strings.Cut(line, "VMTEST "); ok {
		key, rest, _ := strings.Cut(strings.TrimLeft(m, " "), " ")
		if key != "" {
			v.markers = append(v.markers, Marker{Key: key, Rest: strings.TrimSpace(rest), At: time.Since(v.started)})
		}
	}
	close(v.changed)
	v.changed = make(chan struct{})
}

// waitFor calls check with v.mu held until it reports a result, qemu
// exits, or ctx ends.
func (v *VM) waitFor(ctx context.Context, what string, check func() (string, bool)) (string, error) {
	for {
		v.mu.Lock()
		s, ok := check()
		changed := v.changed
		v.mu.Unlock()
		if ok {
			return s, nil
		}
		select {
		case <-changed:
		case <-v.exited:
			// Output is complete now: look one last time.
			v.mu.Lock()
			s, ok := check()
			v.mu.Unlock()
			if ok {
				return s, nil
			}
			return "", fmt.Errorf("vmtest: qemu exited (%v) before %s%s", v.exitErr, what, v.tails())
		case <-ctx.Done():
			return "", fmt.Errorf("vmtest: waiting for %s: %w%s", what, ctx.Err(), v.tails())
		}
	}
}

// tails is the end of qemu's stderr and of the console, for errors.
func (v *VM) tails() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	var b strings.Builder
	if v.stderr.Len() > 0 {
		fmt.Fprintf(&b, "\nqemu stderr:\n%s", tail(v.stderr.String(), 2000))
	}
	lines := v.lines
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	fmt.Fprintf(&b, "\nconsole (last %d lines):\n%s", len(lines), strings.Join(lines, "\n"))
	return b.String()
}

// WaitLine returns the first console line since Start for which match is
// true, waiting for it. It fails if qemu exits or ctx ends first; the error
// holds the end of the console log.
func (v *VM) WaitLine(ctx context.Context, match func(string) bool) (string, error) {
	next := 0
	return v.waitFor(ctx, "a matching console line", func() (string, bool) {
		for ; next < len(v.lines); next++ {
			if match(v.lines[next]) {
				return v.lines[next], true
			}
		}
		return "", false
	})
}

// Marker waits for the guest's first marker with key and returns the rest
// of its line.
func (v *VM) Marker(ctx context.Context, key string) (string, error) {
	next := 0
	return v.waitFor(ctx, "marker "+key, func() (string, bool) {
		for ; next < len(v.markers); next++ {
			if v.markers[next].Key == key {
				return v.markers[next].Rest, true
			}
		}
		return "", false
	})
}

// Markers returns the markers seen so far, in order.
func (v *VM) Markers() []Marker {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]Marker(nil), v.markers...)
}

// Log returns the console so far, cleaned of \r and terminal escapes.
func (v *VM) Log() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	s := strings.Join(v.lines, "\n")
	if len(v.partial) > 0 {
		s += "\n" + string(v.partial)
	}
	return s
}

// Args returns qemu's arguments, for logs.
func (v *VM) Args() []string { return append([]string(nil), v.args...) }

// Kill cuts the power: SIGKILL to qemu, then waits for it. Writes the guest
// has not flushed are lost (cache=directsync). Killing a VM that has
// already exited is not an error.
func (v *VM) Kill() error {
	select {
	case <-v.exited:
		return nil
	default:
	}
	if err := v.proc.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("vmtest: kill qemu: %w", err)
	}
	<-v.exited
	return nil
}

// Wait waits for qemu to exit: the guest powered off, rebooted or
// panicked (see the console for which). It returns qemu's exit error, if
// any. If ctx ends first it kills qemu and returns an error.
func (v *VM) Wait(ctx context.Context) error {
	select {
	case <-v.exited:
		if v.exitErr != nil {
			return fmt.Errorf("vmtest: qemu: %w%s", v.exitErr, v.tails())
		}
		return nil
	case <-ctx.Done():
		v.Kill()
		return fmt.Errorf("vmtest: waiting for the guest to power off: %w%s", ctx.Err(), v.tails())
	}
}
