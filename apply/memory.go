package apply

import (
	"context"
	"fmt"
	"os"

	"golang.org/x/sync/semaphore"

	"github.com/peerup/peerup/diff"
	"github.com/peerup/peerup/manifest"
)

// DefaultMemoryMiB is the memory an update may use (config memory-mib): a
// 256 MB laptop runs a desktop beside it.
const DefaultMemoryMiB = 48

// Memory is a node's memory budget for an update, in bytes: the whole
// process, not only the data. It is split between what the Go runtime needs
// whatever the update (code, the manifest and plan, connections, GC
// headroom) and the data in flight, which is the part an update's size
// changes.
type Memory int64

// MemoryMiB returns the budget of mib MiB (0 or less: DefaultMemoryMiB).
func MemoryMiB(mib int) Memory {
	if mib <= 0 {
		mib = DefaultMemoryMiB
	}
	return Memory(int64(mib) << 20)
}

// InFlight is what the objects being fetched and decoded may hold at once:
// half the budget. The other half is the runtime's baseline and the garbage
// collector's headroom over the live heap.
func (m Memory) InFlight() int64 { return int64(m) / 2 }

// SoftLimit is the Go runtime's memory limit (debug.SetMemoryLimit) for the
// budget: the budget less what the runtime does not count and cannot
// return to the kernel at once (the binary's code and data, about 12 MiB
// resident, and pages freed since the last scavenge).
func (m Memory) SoftLimit() int64 {
	const unmanaged = 16 << 20
	if int64(m) < 2*unmanaged {
		return int64(m) / 2
	}
	return int64(m) - unmanaged
}

// wholeCost is what fetching an object whole holds: the transport's and the
// store's copy buffers, whatever the object's size (both stream).
const wholeCost = 1 << 20

// inFlight is a pull's share of its memory budget, taken by each fetch for
// as long as it holds data: big decodes wait their turn rather than run
// side by side.
type inFlight struct {
	sem   *semaphore.Weighted
	limit int64
}

func newInFlight(m Memory) *inFlight {
	if m <= 0 {
		m = MemoryMiB(0)
	}
	n := m.InFlight()
	// The pull's gz decodes share its gzip processes, so those are held
	// back once for all rather than counted with each decode.
	if gz := int64(diff.MaxGzipProcesses * diff.GzipProcessMemory); n > 2*gz {
		n -= gz
	}
	return &inFlight{sem: semaphore.NewWeighted(n), limit: n}
}

// acquire takes n bytes of the budget, waiting while others hold it.
func (f *inFlight) acquire(ctx context.Context, n int64) (release func(), err error) {
	n = min(n, f.limit)
	if err := f.sem.Acquire(ctx, n); err != nil {
		return nil, fmt.Errorf("waiting for memory: %w", err)
	}
	return func() { f.sem.Release(n) }, nil
}

// decodeCost is what decoding enc into an object of size bytes holds.
func (s *Sysroot) decodeCost(enc diff.Encoding, size int64) int64 {
	base, _ := s.objectSize(enc.Base)
	return decodeCost(enc, base, size)
}

func decodeCost(enc diff.Encoding, baseSize, size int64) int64 {
	return diff.DecodeMemory(enc.Kind, baseSize, size) + wholeCost
}

// objectSize is the size of the node's object d, and whether it holds it.
func (s *Sysroot) objectSize(d manifest.Digest) (int64, bool) {
	fi, err := os.Stat(s.repo.Path(d))
	if err != nil {
		return 0, false
	}
	return fi.Size(), true
}

// usableEncoding is the planner's rule (SPEC.md §10) for whether a node
// takes enc to get an object of size bytes: it must be smaller than the
// object, its base one the node holds (baseSize says whether, and how
// large), and its decoding within the pull's in-flight memory, limit. An
// export choosing what a stick carries asks the same of the laptops it is
// for.
func usableEncoding(enc diff.Encoding, size int64, baseSize func(manifest.Digest) (int64, bool), limit int64) bool {
	var base int64
	if !enc.Base.IsZero() {
		var ok bool
		if base, ok = baseSize(enc.Base); !ok {
			return false
		}
	}
	return enc.Size < size && decodeCost(enc, base, size) <= limit
}

// fetchWithin runs fetch holding cost bytes of the pull's memory budget.
func (s *Sysroot) fetchWithin(ctx context.Context, mem *inFlight, cost int64, fetch func() error) error {
	release, err := mem.acquire(ctx, cost)
	if err != nil {
		return err
	}
	defer release()
	return fetch()
}
