// Package daemon is the node's background service: it finds newer versions,
// fetches them politely, tells the desktop, and applies them by policy.
//
// The core is a small state machine (SPEC.md §11) driven by D-Bus method
// calls, by discovery events and by the policy. Operations (poll, fetch,
// apply) run one at a time in the background; methods return at once and
// progress is published as properties, as eos-updater does. The D-Bus layer
// is a thin adapter over the core, so the core is tested without a bus and
// the bus is tested against a real dbus-daemon.
//
// Durable state (peers seen, banned peers, counters, the last poll) lives in
// a bbolt database under the sysroot. bbolt's lock doubles as the guarantee
// that one daemon runs per sysroot.
//
// A laptop reports its status to the school server it is configured with
// (report.go); a seed keeps the latest report per machine, bounded, and
// shows them on its fleet page (fleet.go, SPEC.md §18). Reports are hints
// for people and feed nothing that installs.
package daemon
