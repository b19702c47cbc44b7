package testlan

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// Runner is a T for programs (the fleet benchmark, the demo): Fatalf and
// Skip end Run with an error, and the cleanups (the namespaces and the
// bridge among them) run when Run returns, even when it fails.
type Runner struct{ cleanups []func() }

type abort struct{ err error }

func (r *Runner) Helper()                        {}
func (r *Runner) Cleanup(f func())               { r.cleanups = append(r.cleanups, f) }
func (r *Runner) Skip(args ...any)               { panic(abort{errors.New(fmt.Sprint(args...))}) }
func (r *Runner) Fatalf(format string, a ...any) { panic(abort{fmt.Errorf(format, a...)}) }

// Run calls f, then the cleanups registered, last first.
func (r *Runner) Run(f func() error) (err error) {
	defer func() {
		for i := len(r.cleanups) - 1; i >= 0; i-- {
			r.cleanups[i]()
		}
		r.cleanups = nil
	}()
	defer func() {
		if v := recover(); v != nil {
			a, ok := v.(abort)
			if !ok {
				panic(v)
			}
			err = a.err
		}
	}()
	return f()
}

// WaitListening waits until process pid listens on TCP port, read from its
// own network namespace's /proc/PID/net/tcp and tcp6.
func WaitListening(ctx context.Context, pid, port int) error {
	v4 := fmt.Sprintf(":%04X 00000000:0000 0A", port)
	v6 := fmt.Sprintf(":%04X 00000000000000000000000000000000:0000 0A", port)
	for range 600 {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/net/tcp", pid))
		b6, _ := os.ReadFile(fmt.Sprintf("/proc/%d/net/tcp6", pid))
		if strings.Contains(string(b), v4) || strings.Contains(string(b6), v6) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("process %d did not start listening on port %d", pid, port)
}

// Serve starts cmd (made by Command), stops it with SIGTERM when the test
// ends, and waits until it listens on TCP port; log, if not nil, is
// shown on failure.
func (l *LAN) Serve(cmd *exec.Cmd, port int, log fmt.Stringer) {
	l.t.Helper()
	if err := cmd.Start(); err != nil {
		l.t.Fatalf("start %s: %v", cmd.Path, err)
	}
	l.t.Cleanup(func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := WaitListening(ctx, cmd.Process.Pid, port); err != nil {
		out := ""
		if log != nil {
			out = log.String()
		}
		l.t.Fatalf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, out)
	}
}
