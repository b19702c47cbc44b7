package apply

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/manifest"
)

// DefaultMachineIDFile holds the machine's id (systemd's), which places it
// in phased rollouts (SPEC.md §3).
const DefaultMachineIDFile = "/etc/machine-id"

// ErrNotRolledOut is a version its publisher rolls out to a share of the
// machines that does not include this one yet: it is fetched, staged and
// served to neighbours, but not applied.
var ErrNotRolledOut = errors.New("not yet rolled out to this machine")

// RolloutState is where this machine stands in a version's rollout.
type RolloutState struct {
	Percent int // the share of machines the version goes to (100: all)
	// Bucket is this machine's place, 0-99 (blobstore.RolloutBucket); -1
	// when the version goes to every machine, or this one has no id.
	Bucket int
	In     bool // the version is for this machine
}

func (r RolloutState) String() string {
	switch {
	case r.Percent >= 100:
		return "it goes to every machine"
	case r.Bucket < 0:
		return fmt.Sprintf("it goes to %d%% of machines, and this one has no machine id to place it", r.Percent)
	case r.In:
		return fmt.Sprintf("it goes to %d%% of machines, this one among them (bucket %d)", r.Percent, r.Bucket)
	}
	return fmt.Sprintf("it goes to %d%% of machines so far, and this one is in bucket %d", r.Percent, r.Bucket)
}

// machineIDFile is where the machine's id is read from.
func (s *Sysroot) machineIDFile() string {
	if s.MachineIDFile != "" {
		return s.MachineIDFile
	}
	return DefaultMachineIDFile
}

// MachineID reads the machine's id: the first line of its file, which
// must not be empty.
func (s *Sysroot) MachineID() (string, error) {
	f, err := os.Open(s.machineIDFile())
	if err != nil {
		return "", fmt.Errorf("machine id: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 256))
	if err != nil {
		return "", fmt.Errorf("machine id: %w", err)
	}
	id, _, _ := strings.Cut(string(b), "\n")
	if id = strings.TrimSpace(id); id == "" {
		return "", fmt.Errorf("machine id: %s is empty", f.Name())
	}
	return id, nil
}

// Rollout says whether version v of image is for this machine yet, by the
// signed rollout list its repo holds (which every pull and preview brings
// up to date), checked against given and the keys the node adopted, and
// its machine id. A version at 100% is for every machine,
// with or without an id; below that a machine without one waits, with the
// error saying why.
func (s *Sysroot) Rollout(image string, v uint64, given *manifest.Keyring) (RolloutState, error) {
	// Only read: the pull that kept the list adopted the running
	// version's keys already, and this may run beside another reader.
	trust, err := given.With(s.TrustDir())
	if err != nil {
		return RolloutState{}, fmt.Errorf("rollout: %w", err)
	}
	ro, _ := heldList(s.repo, blobstore.ListRollout, image, trust).(*blobstore.Rollout)
	rs := RolloutState{Percent: ro.Percent(v), Bucket: -1}
	if rs.Percent >= 100 {
		rs.In = true
		return rs, nil
	}
	id, err := s.MachineID()
	if err != nil {
		return rs, fmt.Errorf("%s version %d: %w", image, v, err)
	}
	rs.Bucket = blobstore.RolloutBucket(id, image, v)
	rs.In = blobstore.InRollout(rs.Bucket, rs.Percent)
	return rs, nil
}

// checkRollout is Rollout as an error: nil if v is for this machine,
// otherwise one wrapping ErrNotRolledOut that says where it stands.
func (s *Sysroot) checkRollout(image string, v uint64, trust *manifest.Keyring) error {
	rs, err := s.Rollout(image, v, trust)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrNotRolledOut, err)
	}
	if !rs.In {
		return fmt.Errorf("%s version %d is %w: %s", image, v, ErrNotRolledOut, rs)
	}
	return nil
}
