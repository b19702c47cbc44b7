package blobstore

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"

	"github.com/peerup/peerup/internal/fsutil"
)

// fleetKeysName lists, one fingerprint a line, the keys the fleet's
// laptops trust as far as this repo knows: the key of its first publish,
// then every key a publish introduced (--add-key), less those it revoked.
// It is the publisher's guard, never served: laptops decide by their own
// trust (SPEC.md §2).
const fleetKeysName = "fleet-keys"

func (r *Repo) fleetKeysPath() string { return LayoutOf(r.dir).at(fleetKeysName) }

// fleetKeys reads the list; ok is false for a repo that has none yet.
func (r *Repo) fleetKeys() (keys []string, ok bool, err error) {
	b, err := os.ReadFile(r.fleetKeysPath())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("read the repo's fleet keys: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if f := strings.TrimSpace(sc.Text()); f != "" && !strings.HasPrefix(f, "#") {
			keys = append(keys, f)
		}
	}
	return keys, true, nil
}

// checkSigner refuses to sign with a key the fleet does not trust: every
// laptop would refuse the version, and no older one would be offered
// instead. A repo without a list (new, or made before lists) takes the
// signer's key as its first.
func (r *Repo) checkSigner(o PublishOptions) error {
	keys, ok, err := r.fleetKeys()
	if err != nil || !ok || o.AnyKey {
		return err
	}
	fpr := o.Signer.Fingerprint()
	if slices.Contains(keys, fpr) {
		return nil
	}
	return fmt.Errorf("publish: the signing key %s is not one this fleet trusts (%s lists %s); laptops would refuse the version. Sign with a fleet key, introduce this one first (publish with --add-key %s, signed by a fleet key), or pass --any-key if the laptops trust it some other way",
		fpr, fleetKeysName, strings.Join(keys, ", "), fpr)
}

// recordKeys updates the list after a version is listed: the signer's
// key (the first, or one --any-key vouched for), the keys it introduced,
// less those it revoked.
func (r *Repo) recordKeys(o PublishOptions) error {
	keys, _, err := r.fleetKeys()
	if err != nil {
		return err
	}
	for _, k := range append([]string{o.Signer.Fingerprint()}, o.KeysAdd...) {
		if !slices.Contains(keys, k) {
			keys = append(keys, k)
		}
	}
	keys = slices.DeleteFunc(keys, func(k string) bool { return slices.Contains(o.KeysRevoke, k) })
	var b strings.Builder
	b.WriteString("# Keys this fleet's laptops trust, as far as publishing here knows (peerup publish keeps it).\n")
	for _, k := range keys {
		b.WriteString(k + "\n")
	}
	return fsutil.WriteAtomic(r.fleetKeysPath(), []byte(b.String()))
}
