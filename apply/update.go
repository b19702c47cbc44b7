package apply

import (
	"context"
	"errors"
	"fmt"
)

// ErrPrune marks a Switch that switched but could not remove the trees
// pushed out of the links: the new version is current all the same, and the
// next prune tries again.
var ErrPrune = errors.New("switched, but could not remove old trees")

// Switch applies the staged version (Apply; want as there) and then removes
// the trees no link names any more (Prune): what every caller does after a
// switch, the CLI and the daemon alike. from and to are set whenever the
// switch happened, including when the prune then failed (err wraps
// ErrPrune).
func (s *Sysroot) Switch(want uint64) (from, to uint64, err error) {
	from, to, err = s.Apply(want)
	if err != nil {
		return 0, 0, err
	}
	if err := s.Prune(); err != nil {
		return from, to, fmt.Errorf("%w: %w", ErrPrune, err)
	}
	return from, to, nil
}

// Update pulls a version from src (Pull, with o) and switches to it
// (Switch), unless it is not rolled out to this machine yet (an error
// wrapping ErrNotRolledOut, with the version staged; o.IgnoreRollout
// switches all the same). res is set once the pull succeeded, even if the
// switch then failed or did not happen, so that a caller can still say
// what was fetched and which local /etc edits were kept; from is the
// version that was current before.
func (s *Sysroot) Update(ctx context.Context, src Source, o PullOptions) (res *PullResult, from uint64, err error) {
	res, err = s.Pull(ctx, src, o)
	if err != nil {
		return nil, 0, err
	}
	if !o.IgnoreRollout {
		if err := s.checkRollout(res.Image, res.Version, o.Trust); err != nil {
			return res, 0, err
		}
	}
	// Switch's errors say what failed (apply: …, or ErrPrune) already.
	from, _, err = s.Switch(res.Version)
	return res, from, err
}
