package manifest

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"testing"
)

func marshal(t testing.TB, m *Manifest) []byte {
	t.Helper()
	Totals(&m.Header, m.Entries)
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// edited is sample() with f applied to a copy of its entries.
func edited(t testing.TB, f func(m *Manifest)) []byte {
	m := sample()
	f(m)
	return marshal(t, m)
}

func TestDeltaRebuildsTheTarget(t *testing.T) {
	base := marshal(t, sample())
	other := Digest{9, 9}
	cases := []struct {
		name string
		edit func(m *Manifest)
	}{
		{"same", func(m *Manifest) {}},
		{"new version and label", func(m *Manifest) { m.Version, m.Label = 8, "Summer" }},
		{"changed file", func(m *Manifest) { m.Entries[6].Size, m.Entries[6].SHA256 = 77, other }},
		{"added file", func(m *Manifest) {
			m.Entries = append(m.Entries[:11:11], append([]Entry{{Path: "usr/bin/new", Type: TypeFile, Mode: 0755, Size: 3, SHA256: other}}, m.Entries[11:]...)...)
		}},
		{"removed entries", func(m *Manifest) { m.Entries = append(m.Entries[:2:2], m.Entries[5:]...) }},
		{"first and last changed", func(m *Manifest) { m.Entries[0].Mode, m.Entries[len(m.Entries)-1].Mode = 0700, 0700 }},
		{"expires added", func(m *Manifest) { m.Expires = m.Created.Add(1e12) }},
		{"type changed", func(m *Manifest) { m.Entries[1] = Entry{Path: "bin", Type: TypeDir, Mode: 0755} }},
		{"everything new", func(m *Manifest) {
			for i := range m.Entries {
				m.Entries[i].UID = 7
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			target := edited(t, c.edit)
			var d bytes.Buffer
			if err := MakeDelta(&d, base, target); err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			h, err := ApplyDelta(bytes.NewReader(base), bytes.NewReader(d.Bytes()), &out, MaxSize)
			if err != nil {
				t.Fatalf("apply: %v\n%s", err, d.Bytes())
			}
			if !bytes.Equal(out.Bytes(), target) || h.TargetSize != int64(len(target)) {
				t.Fatalf("rebuilt manifest differs:\n%s\n---\n%s", out.Bytes(), target)
			}
		})
	}
}

func TestDeltaIsSmallForAFewChangedFiles(t *testing.T) {
	m := sample()
	m.Entries = append(m.Entries, Entry{Path: "usr/share", Type: TypeDir, Mode: 0755}, Entry{Path: "usr/share/doc", Type: TypeDir, Mode: 0755})
	for i := range 2000 {
		m.Entries = append(m.Entries, Entry{Path: fmt.Sprintf("usr/share/doc/p%04d", i), Type: TypeFile, Mode: 0644, Size: int64(i), SHA256: Digest{byte(i), byte(i >> 8)}})
	}
	base := marshal(t, m)
	for i := 100; i < 2000; i += 100 {
		m.Entries[15+i].SHA256[5] = 1
	}
	m.Version++
	target := marshal(t, m)
	var d bytes.Buffer
	if err := MakeDelta(&d, base, target); err != nil {
		t.Fatal(err)
	}
	// 19 changed lines keep their "f usr/share/doc/pNNNN 0644 0 0 ...":
	// each costs about its new hash.
	if d.Len() > 19*90+300 {
		t.Fatalf("delta of %d bytes for 19 changed lines of %d:\n%s", d.Len(), len(target), d.Bytes())
	}
}

func TestDeltaRefusals(t *testing.T) {
	base := marshal(t, sample())
	target := edited(t, func(m *Manifest) { m.Version = 8 })
	var good bytes.Buffer
	if err := MakeDelta(&good, base, target); err != nil {
		t.Fatal(err)
	}
	otherBase := edited(t, func(m *Manifest) { m.Label = "other" })
	cases := []struct {
		name  string
		base  []byte
		delta string
		limit int64
		want  string
	}{
		{"another base", otherBase, good.String(), MaxSize, "another base"},
		{"tampered op", base, strings.Replace(good.String(), "~8 8", "~8 9", 1), MaxSize, "not the one it names"},
		{"over the limit", base, good.String(), int64(len(target)) - 1, "over the limit"},
		{"not a delta", base, "hello\n", MaxSize, "not a manifest delta"},
		{"empty", base, "", MaxSize, "header line 1"},
		{"reads past the base", base, strings.SplitN(good.String(), "\n", 4)[:3][0] + "\n" + strings.SplitN(good.String(), "\n", 4)[1] + "\n" + strings.SplitN(good.String(), "\n", 4)[2] + "\n=100000\n", MaxSize, "past the end"},
		{"unknown op", base, strings.Join(strings.SplitN(good.String(), "\n", 4)[:3], "\n") + "\n?x\n", MaxSize, "unknown op"},
		{"bad count", base, strings.Join(strings.SplitN(good.String(), "\n", 4)[:3], "\n") + "\n=01\n", MaxSize, "bad count"},
		{"prefix too long", base, strings.Join(strings.SplitN(good.String(), "\n", 4)[:3], "\n") + "\n~900 x\n", MaxSize, "prefix of 900"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var out bytes.Buffer
			_, err := ApplyDelta(bytes.NewReader(c.base), strings.NewReader(c.delta), &out, c.limit)
			if !errors.Is(err, ErrDelta) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an ErrDelta saying %q", err, c.want)
			}
		})
	}
}

// FuzzApplyDelta: any delta, over a real base, is refused or rebuilds
// exactly the file it names, and never writes past its limit.
func FuzzApplyDelta(f *testing.F) {
	base := marshal(f, sample())
	target := edited(f, func(m *Manifest) { m.Version, m.Entries[6].Size = 8, 6 })
	var d bytes.Buffer
	if err := MakeDelta(&d, base, target); err != nil {
		f.Fatal(err)
	}
	f.Add(d.Bytes())
	f.Add([]byte(deltaMagic + "\nbase " + Digest{}.String() + "\ntarget " + Digest{}.String() + " 0\n=1\n"))
	f.Fuzz(func(t *testing.T, delta []byte) {
		var out bytes.Buffer
		h, err := ApplyDelta(bytes.NewReader(base), bytes.NewReader(delta), &out, 4096)
		if out.Len() > 4096 {
			t.Fatalf("wrote %d bytes past the limit", out.Len())
		}
		if err == nil && (int64(out.Len()) != h.TargetSize || Digest(sha256Sum(out.Bytes())) != h.Target) {
			t.Fatal("accepted a delta that rebuilt another file")
		}
	})
}

func sha256Sum(b []byte) [32]byte { return sha256.Sum256(b) }
