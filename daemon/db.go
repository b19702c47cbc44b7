package daemon

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

var (
	bucketPeers = []byte("peers")
	bucketBans  = []byte("bans")
	bucketMeta  = []byte("meta")
)

// ErrRunning is returned when another daemon holds the sysroot's database.
var ErrRunning = errors.New("another peerup daemon is running on this sysroot")

// PeerRecord is what the daemon remembers of a peer.
type PeerRecord struct {
	URL      string    `json:"url"`
	Image    string    `json:"image"`
	Version  uint64    `json:"version"`
	Source   string    `json:"source"`
	LastSeen time.Time `json:"last_seen"`
}

// DB is the daemon's durable state.
type DB struct {
	b *bolt.DB
}

// OpenDB opens the database, failing at once if another daemon has it:
// bbolt's lock is exclusive, and waiting for it would hang a second daemon.
func OpenDB(path string) (*DB, error) {
	b, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 100 * time.Millisecond})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("%w (%s is locked)", ErrRunning, path)
	}
	if err != nil {
		return nil, fmt.Errorf("open state database: %w", err)
	}
	err = b.Update(func(tx *bolt.Tx) error {
		for _, n := range [][]byte{bucketPeers, bucketBans, bucketMeta} {
			if _, err := tx.CreateBucketIfNotExists(n); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		b.Close()
		return nil, fmt.Errorf("open state database: %w", err)
	}
	return &DB{b: b}, nil
}

// Close releases the database and its lock.
func (d *DB) Close() error { return d.b.Close() }

// SavePeers records peers in one transaction (each commit costs two fsyncs,
// so writes are batched by the caller).
func (d *DB) SavePeers(peers []PeerRecord) error {
	return d.b.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketPeers)
		for _, p := range peers {
			v, err := json.Marshal(p)
			if err != nil {
				return err
			}
			if err := bk.Put([]byte(p.URL), v); err != nil {
				return err
			}
		}
		return nil
	})
}

// Peers returns the peers seen since `since`.
func (d *DB) Peers(since time.Time) ([]PeerRecord, error) {
	var out []PeerRecord
	err := d.b.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketPeers).ForEach(func(k, v []byte) error {
			var p PeerRecord
			if json.Unmarshal(v, &p) == nil && p.LastSeen.After(since) {
				out = append(out, p)
			}
			return nil
		})
	})
	return out, err
}

// Ban bars a peer that served bad data until `until`.
func (d *DB) Ban(url string, until time.Time) error {
	return d.b.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketBans).Put([]byte(url), u64(uint64(until.Unix())))
	})
}

// Unban lifts a ban (a volume that now holds another stick).
func (d *DB) Unban(url string) error {
	return d.b.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketBans).Delete([]byte(url))
	})
}

// Banned reports whether url is barred at `now`.
func (d *DB) Banned(url string, now time.Time) bool {
	banned := false
	d.b.View(func(tx *bolt.Tx) error {
		banned = banActive(tx.Bucket(bucketBans).Get([]byte(url)), now)
		return nil
	})
	return banned
}

// banActive reports whether a ban's stored end v is after now.
func banActive(v []byte, now time.Time) bool {
	return len(v) == 8 && now.Unix() < int64(binary.BigEndian.Uint64(v))
}

// AddCounter adds n to a named counter (bytes fetched, objects fetched).
func (d *DB) AddCounter(name string, n uint64) error {
	return d.b.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketMeta)
		var cur uint64
		if v := bk.Get([]byte(name)); len(v) == 8 {
			cur = binary.BigEndian.Uint64(v)
		}
		return bk.Put([]byte(name), u64(cur+n))
	})
}

// Counter reads a named counter.
func (d *DB) Counter(name string) uint64 {
	var n uint64
	d.b.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketMeta).Get([]byte(name)); len(v) == 8 {
			n = binary.BigEndian.Uint64(v)
		}
		return nil
	})
	return n
}

// SetLastPoll records when the daemon last looked for updates.
func (d *DB) SetLastPoll(t time.Time) error {
	return d.b.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put([]byte("last-poll"), u64(uint64(t.Unix())))
	})
}

// LastPoll reads when the daemon last looked for updates (zero if never).
func (d *DB) LastPoll() time.Time {
	var t time.Time
	d.b.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketMeta).Get([]byte("last-poll")); len(v) == 8 {
			t = time.Unix(int64(binary.BigEndian.Uint64(v)), 0)
		}
		return nil
	})
	return t
}

func u64(n uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, n)
	return b
}
