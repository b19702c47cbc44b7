package daemon

import (
	"fmt"

	"github.com/peerup/peerup/apply"
)

// rollout is where this machine stands in version v's phased rollout
// (SPEC.md §3), by the signed list the last pull or preview kept. A
// machine that cannot tell (no machine id) waits, as the state says.
func (c *Core) rollout(image string, v uint64) apply.RolloutState {
	rs, err := c.o.Sysroot.Rollout(image, v, c.o.Trust)
	if err != nil {
		c.o.Log.Warn("cannot place this machine in the rollout; waiting for it to reach every machine", "version", v, "err", err)
	}
	return rs
}

// setRollout shows an offer's rollout.
func (p *Props) setRollout(rs apply.RolloutState) {
	p.RolloutPercent, p.RolloutWaiting = uint32(rs.Percent), !rs.In
}

// checkRollout refuses to apply a staged version not rolled out to this
// machine, reading the list again: a poll since may have raised it.
func (c *Core) checkRollout() error {
	p := c.Props()
	if p.State != StateUpdateReady || p.AvailableVersion == 0 {
		return nil // the state check says what is wrong, if anything
	}
	rs := c.rollout(p.Image, p.AvailableVersion)
	c.update(func(p *Props) { p.setRollout(rs) })
	if !rs.In {
		return fmt.Errorf("version %d is %w: %s (peerup update --ignore-rollout applies it all the same)", p.AvailableVersion, apply.ErrNotRolledOut, rs)
	}
	return nil
}
