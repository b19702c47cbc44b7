package daemon

import (
	"context"
	"testing"

	"github.com/peerup/peerup/apply"
	"github.com/peerup/peerup/internal/crashpoint"
)

// TestDaemonReportsAPendingSwitch: a rollback stopped between its renames
// (the D-Bus Rollback of a daemon killed there, say). A core started on
// that sysroot reports the versions the journal will produce, with
// SwitchPending; its Rollback finishes the interrupted one rather than
// swapping back, and asked again leaves the links as they are.
func TestDaemonReportsAPendingSwitch(t *testing.T) {
	f := newTestFleet(t)
	f.publish(t, 1)
	dir := f.sysrootAt(t, 1)
	f.publish(t, 2)
	s, err := apply.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	f.install(t, s, 2)
	crashpoint.Stop(t, s, "rename previous", func() { s.Rollback() })

	db, err := OpenDB(t.TempDir() + "/state.db")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	c, err := NewCore(context.Background(), Options{Sysroot: s, DB: db})
	if err != nil {
		t.Fatal(err)
	}
	if p := c.Props(); p.CurrentVersion != 1 || p.PreviousVersion != 2 || !p.SwitchPending {
		t.Fatalf("props on the interrupted rollback: %+v, want current 1, previous 2, SwitchPending", p)
	}
	for i := range 2 {
		if err := c.Rollback(); err != nil {
			t.Fatalf("rollback %d: %v", i+1, err)
		}
		if p := c.Props(); p.CurrentVersion != 1 || p.PreviousVersion != 2 || p.SwitchPending || p.State != StateIdle {
			t.Fatalf("after rollback %d: %+v, want current 1, previous 2, nothing pending", i+1, p)
		}
	}
}
