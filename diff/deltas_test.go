package diff

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"strings"
	"testing"

	"github.com/peerup/peerup/manifest"
)

func dg(s string) manifest.Digest { return manifest.Digest(sha256.Sum256([]byte(s))) }

func sampleIndex() *DeltaIndex {
	x := &DeltaIndex{Image: "school-laptop", Version: 4, Manifest: dg("m"), Encodings: []Encoding{
		{Target: dg("t1"), Kind: KindBsdiff, Digest: dg("p1"), Size: 100, Base: dg("b1")},
		{Target: dg("t1"), Kind: KindZstd, Digest: dg("z1"), Size: 900},
		{Target: dg("t2"), Kind: KindZstdDict, Digest: dg("d2"), Size: 50, Base: dg("b2")},
		{Target: dg("t1"), Kind: KindBsdiff, Digest: dg("p1b"), Size: 120, Base: dg("b0")},
	}}
	x.Sort()
	return x
}

func TestDeltaIndexRoundTrip(t *testing.T) {
	x := sampleIndex()
	b, err := x.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	y, err := ParseDeltaIndex(b)
	if err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	b2, _ := y.Marshal()
	if !bytes.Equal(b, b2) {
		t.Fatal("re-encoding differs")
	}
	if got := y.For(dg("t1")); len(got) != 3 {
		t.Fatalf("For(t1) = %d encodings, want 3", len(got))
	}
	if got := y.For(dg("none")); len(got) != 0 {
		t.Fatalf("For(none) = %v", got)
	}
}

func TestDeltaIndexRejects(t *testing.T) {
	good, _ := sampleIndex().Marshal()
	s := string(good)
	p1 := dg("p1").String()
	for name, bad := range map[string]string{
		"magic":         strings.Replace(s, "peerup-deltas 1", "peerup-deltas 2", 1),
		"count":         strings.Replace(s, "encodings 4", "encodings 5", 1),
		"unknown kind":  strings.Replace(s, " zstd-dict ", " xz ", 1),
		"zero size":     strings.Replace(s, p1+" 100", p1+" 0", 1),
		"bsdiff, base?": strings.Replace(s, p1+" 100 "+dg("b1").String(), p1+" 100", 1),
		"truncated":     s[:len(s)-1],
		"version 0":     strings.Replace(s, "version 4", "version 0", 1),
	} {
		if _, err := ParseDeltaIndex([]byte(bad)); !errors.Is(err, ErrDeltaIndex) {
			t.Errorf("%s: err = %v, want ErrDeltaIndex", name, err)
		}
	}
}

func FuzzParseDeltaIndex(f *testing.F) {
	good, _ := sampleIndex().Marshal()
	f.Add(good)
	f.Fuzz(func(t *testing.T, b []byte) {
		x, err := ParseDeltaIndex(b)
		if err != nil {
			return
		}
		out, err := x.Marshal()
		if err != nil || !bytes.Equal(out, b) {
			t.Fatalf("accepted a non-canonical index: %v", err)
		}
	})
}

func TestZstdRoundTripsAndCaps(t *testing.T) {
	base := bytes.Repeat([]byte("shared library code v1 "), 4000)
	next := bytes.Replace(base, []byte("v1"), []byte("v2"), 7)
	for _, tc := range []struct {
		kind Kind
		base []byte
		enc  func() ([]byte, error)
	}{
		{KindZstd, nil, func() ([]byte, error) { return EncodeZstd(next) }},
		{KindZstdDict, base, func() ([]byte, error) { return EncodeZstdDict(base, next) }},
	} {
		enc, err := tc.enc()
		if err != nil {
			t.Fatal(err)
		}
		out, err := decodeBytes(t.Context(), tc.kind, tc.base, bytes.NewReader(enc), int64(len(next)))
		if err != nil || !bytes.Equal(out, next) {
			t.Fatalf("%s: round trip failed: %v", tc.kind, err)
		}
		if _, err := decodeBytes(t.Context(), tc.kind, tc.base, bytes.NewReader(enc), int64(len(next))-1); !errors.Is(err, ErrCorruptEncoding) {
			t.Errorf("%s: output over the declared size: err = %v", tc.kind, err)
		}
		if _, err := decodeBytes(t.Context(), tc.kind, tc.base, bytes.NewReader(enc[:len(enc)/2]), int64(len(next))); !errors.Is(err, ErrCorruptEncoding) {
			t.Errorf("%s: truncated: err = %v", tc.kind, err)
		}
	}
	dict, _ := EncodeZstdDict(base, next)
	whole, _ := EncodeZstd(next)
	if len(dict) >= len(whole) {
		t.Errorf("zstd-dict (%d bytes) no smaller than zstd (%d) for a near-identical file", len(dict), len(whole))
	}
}
