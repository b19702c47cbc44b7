// Package crashpoint stops a sysroot operation at a named change to the
// disk, in the test's own process, leaving the disk as a kill there does:
// the tests of what status, rollback and the daemon make of a switch that
// was cut off use it (the crash harness in apply re-runs a process
// instead, to count every point).
package crashpoint

import (
	"testing"

	"github.com/peerup/peerup/apply"
)

type stopped struct{}

// Stop runs op on s and stops it just before the change named point (the
// name apply's Fault hook is given, "rename previous"), by a panic the
// deferred unlock runs under and nothing else catches. The test fails if
// op never reaches point.
func Stop(t testing.TB, s *apply.Sysroot, point string, op func()) {
	t.Helper()
	s.Fault = func(p string) {
		if p == point {
			panic(stopped{})
		}
	}
	defer func() {
		s.Fault = nil
		if r := recover(); r == nil {
			t.Fatalf("the operation never reached %q", point)
		} else if _, ok := r.(stopped); !ok {
			panic(r)
		}
	}()
	op()
}
