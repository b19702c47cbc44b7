package daemon

import (
	"fmt"

	"github.com/peerup/peerup/apply"
	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/manifest"
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

// rolloutWatch is a seed's view of its image's rollout list: the highest
// seq it has seen verify, so that it announces each change once.
type rolloutWatch struct {
	repo  *blobstore.Repo
	image string
	trust *manifest.Keyring
	seq   uint64
}

func newRolloutWatch(repo *blobstore.Repo, image string, trust *manifest.Keyring) *rolloutWatch {
	r := &rolloutWatch{repo: repo, image: image, trust: trust}
	r.seq = r.read()
	return r
}

// path is the list's file ("" for a seed with no image yet).
func (r *rolloutWatch) path() string {
	if r.image == "" {
		return ""
	}
	return r.repo.Layout().List(blobstore.ListRollout, r.image)
}

// read is the seq of the list the repo holds, if it verifies (0: none).
func (r *rolloutWatch) read() uint64 {
	if r.image == "" {
		return 0
	}
	data, sig, err := r.repo.ReadList(blobstore.ListRollout, r.image)
	if err != nil || data == nil {
		return 0
	}
	l, err := blobstore.VerifyList(r.trust, blobstore.ListRollout, r.image, data, sig)
	if err != nil {
		return 0
	}
	return l.Head().Seq
}

// changed reports, once per new list, the version to announce v to: the
// newest listed below v, which the laptops a rollout of v held back most
// likely run (0: no change, or nothing below v). The announcement wakes
// them to poll, read the new list and apply v if it now reaches them.
func (r *rolloutWatch) changed(v uint64) uint64 {
	seq := r.read()
	if seq <= r.seq {
		return 0
	}
	r.seq = seq
	ix, err := r.repo.ReadIndex()
	if err != nil {
		return 0
	}
	var from uint64
	for _, e := range ix.Entries {
		if e.Image == r.image && e.Version < v {
			from = max(from, e.Version)
		}
	}
	return from
}
