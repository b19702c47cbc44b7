package blobstore

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/peerup/peerup/manifest"
)

// Rollout is an image's signed list of phased rollouts (SPEC.md §3, §5):
// the versions that go to only a share of the machines for now. A version
// it does not name goes to every machine.
type Rollout struct {
	ListHead
	Versions []RolloutEntry // ascending by version, each once
}

// RolloutEntry is one version's share of machines, in percent (0-99: a
// version at 100 is left out of the list).
type RolloutEntry struct {
	Version uint64
	Percent int
}

// MaxRollout bounds a rollout list; a publisher has a few rollouts in
// flight, not thousands.
const MaxRollout = 96 << 10

// ErrRolloutList is wrapped by errors about a rollout list that does not
// parse.
var ErrRolloutList = errors.New("bad rollout list")

// Kind is ListRollout.
func (*Rollout) Kind() ListKind { return ListRollout }

// Percent is the share of machines version v goes to: 100 unless the list
// names it. A nil list names none.
func (r *Rollout) Percent(v uint64) int {
	if r == nil {
		return 100
	}
	if i, ok := r.find(v); ok {
		return r.Versions[i].Percent
	}
	return 100
}

func (r *Rollout) find(v uint64) (int, bool) {
	return slices.BinarySearchFunc(r.Versions, v, func(e RolloutEntry, v uint64) int {
		switch {
		case e.Version < v:
			return -1
		case e.Version > v:
			return 1
		}
		return 0
	})
}

// set makes v's share percent, leaving v out at 100, and reports whether
// that changed the list.
func (r *Rollout) set(v uint64, percent int) bool {
	i, ok := r.find(v)
	switch {
	case ok && percent >= 100:
		r.Versions = slices.Delete(r.Versions, i, i+1)
	case ok:
		if r.Versions[i].Percent == percent {
			return false
		}
		r.Versions[i].Percent = percent
	case percent >= 100:
		return false
	default:
		r.Versions = slices.Insert(r.Versions, i, RolloutEntry{v, percent})
	}
	return true
}

// Marshal encodes the list.
func (r *Rollout) Marshal() []byte {
	b := r.ListHead.marshal(ListRollout)
	for _, e := range r.Versions {
		fmt.Fprintf(b, "version %d percent %d\n", e.Version, e.Percent)
	}
	return b.Bytes()
}

// ParseRollout reads a rollout list, strictly: the magic, the image, the
// sequence number, then "version V percent P" lines, versions ascending,
// P from 0 to 99.
func ParseRollout(b []byte) (*Rollout, error) {
	h, lines, err := parseHead(ListRollout, b)
	if err != nil {
		return nil, err
	}
	r := &Rollout{ListHead: h}
	for i, l := range lines {
		vs, ps, ok := strings.Cut(l, " percent ")
		v, vok := listNum(vs, "version")
		p, pok := canonNum(ps)
		if !ok || !vok || !pok || v == 0 || p > 99 || (len(r.Versions) > 0 && v <= r.Versions[len(r.Versions)-1].Version) {
			return nil, fmt.Errorf("%w: line %d: want version V percent P (P below 100, V above the last), got %q", ErrRolloutList, i+4, l)
		}
		r.Versions = append(r.Versions, RolloutEntry{v, int(p)})
	}
	return r, nil
}

// RolloutBucket is where a machine stands in version v's rollout, 0-99:
// the machine gets v once v's percent is above it. It is a hash of the
// machine's id and the version, so the same machines go first and stay in
// as the percent rises, and each version picks a different first set.
func RolloutBucket(machineID, image string, v uint64) int {
	h := sha256.Sum256([]byte("peerup-rollout\x00" + machineID + "\x00" + image + "\x00" + strconv.FormatUint(v, 10)))
	return int(binary.BigEndian.Uint64(h[:8]) % 100)
}

// InRollout reports whether a machine in bucket (RolloutBucket) gets a
// version going to percent of machines.
func InRollout(bucket, percent int) bool { return bucket < percent }

// SetRollout sets the share of machines version v of image goes to,
// signed by signer (a fleet key) with the next sequence number; v must be
// listed. It holds the repo's lock.
func (r *Repo) SetRollout(image string, v uint64, percent int, signer *manifest.Signer) (*Rollout, error) {
	if err := checkPercent(percent); err != nil {
		return nil, err
	}
	l, err := r.editListed(ListRollout, image, v, signer, func(l SignedList) bool {
		l.(*Rollout).set(v, percent)
		return true // signed again all the same: the admin's word is current
	})
	if err != nil {
		return nil, err
	}
	return l.(*Rollout), nil
}

// setRolloutLocked is SetRollout during a publish, which holds the lock
// and has checked the signer, before the version is listed: a node must
// never see it listed without its rollout. percent < 0 means none was
// asked for: an entry for v left by an earlier, failed publish is removed.
func (r *Repo) setRolloutLocked(image string, v uint64, percent int, signer *manifest.Signer) error {
	if percent < 0 {
		percent = 100 // none asked for: v goes to every machine
	}
	_, _, err := r.editList(ListRollout, image, signer, func(l SignedList) bool { return l.(*Rollout).set(v, percent) })
	return err
}

func checkPercent(p int) error {
	if p < 0 || p > 100 {
		return fmt.Errorf("rollout: %d%%: want a share of machines from 0 to 100", p)
	}
	return nil
}
