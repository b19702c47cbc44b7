package daemon

import "fmt"

// State is where the daemon is in the update cycle.
type State string

// States, as D-Bus clients see them.
const (
	StateIdle            State = "idle"
	StatePolling         State = "polling"
	StateUpdateAvailable State = "update-available"
	StateFetching        State = "fetching"
	StateUpdateReady     State = "update-ready"
	StateApplying        State = "applying"
	StateUpdateApplied   State = "update-applied"
	StateError           State = "error"
)

// Method names the operations a client can ask for.
type Method string

// Methods of the D-Bus API.
const (
	MethodPoll     Method = "Poll"
	MethodFetch    Method = "Fetch"
	MethodApply    Method = "Apply"
	MethodRollback Method = "Rollback"
	MethodCancel   Method = "Cancel"
	// Boot-state edits (SPEC.md §12): quick, and they leave the state as
	// it is.
	MethodMarkGood  Method = "MarkGood"
	MethodHold      Method = "Hold"
	MethodUnhold    Method = "Unhold"
	MethodUnmarkBad Method = "UnmarkBad"
)

// allowed says in which states each method may be called. Busy states
// (polling, fetching, applying) admit only Cancel, and Cancel only the two
// that can be interrupted safely: an apply is a few renames and finishes.
func allowed(m Method) []State {
	switch m {
	case MethodPoll, MethodRollback, MethodMarkGood, MethodHold, MethodUnhold, MethodUnmarkBad:
		return []State{StateIdle, StateUpdateAvailable, StateUpdateReady, StateUpdateApplied, StateError}
	case MethodFetch:
		return []State{StateUpdateAvailable}
	case MethodApply:
		return []State{StateUpdateReady}
	case MethodCancel:
		return []State{StatePolling, StateFetching}
	}
	return nil
}

// WrongStateError is returned when a method is called in a state that does
// not admit it.
type WrongStateError struct {
	Method Method
	State  State
}

func (e *WrongStateError) Error() string {
	return fmt.Sprintf("%s is not allowed while the updater is %s", e.Method, e.State)
}

func check(m Method, s State) error {
	for _, ok := range allowed(m) {
		if ok == s {
			return nil
		}
	}
	return &WrongStateError{Method: m, State: s}
}
