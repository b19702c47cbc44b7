package manifest

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"time"
)

func sample() *Manifest {
	d := Digest{1, 2, 3}
	return &Manifest{
		Header: Header{Format: FormatVersion, Image: "school-laptop", Version: 7, Label: "Spring term = 100% new",
			Created: time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)},
		Entries: []Entry{
			{Path: ".", Type: TypeDir, Mode: 0755},
			{Path: "bin", Type: TypeSymlink, Mode: 0777, Target: "usr/bin"},
			{Path: "dev", Type: TypeDir, Mode: 0755},
			{Path: "dev/null", Type: TypeChar, Mode: 0666, Major: 1, Minor: 3},
			{Path: "dev/sda", Type: TypeBlock, Mode: 0660, GID: 6, Major: 8},
			{Path: "etc", Type: TypeDir, Mode: 0755},
			{Path: "etc/my file=odd%name\n", Type: TypeFile, Mode: 0644, Size: 5, SHA256: d},
			{Path: "run", Type: TypeDir, Mode: 01777},
			{Path: "run/fifo", Type: TypeFifo, Mode: 0600, UID: 1000, GID: 1000},
			{Path: "usr", Type: TypeDir, Mode: 0755},
			{Path: "usr/bin", Type: TypeDir, Mode: 0755},
			{Path: "usr/bin/ping", Type: TypeFile, Mode: 04755, Size: 0, SHA256: d,
				Xattrs: []Xattr{{Name: "security.capability", Value: []byte{1, 0, 0, 2, ' '}}, {Name: "user.x", Value: nil}}},
			{Path: "usr/bin-x", Type: TypeFile, Mode: 0755, Size: 1 << 33, SHA256: d},
		},
	}
}

func TestRoundTrip(t *testing.T) {
	m := sample()
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := Parse(b)
	if err != nil {
		t.Fatalf("parse own output: %v\n%s", err, b)
	}
	b2, err := got.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, b2) {
		t.Fatalf("re-encoding differs:\n%s\n---\n%s", b, b2)
	}
	if got.Label != m.Label || got.Entries[6].Path != m.Entries[6].Path || got.Files != 3 || got.Bytes != 5+(1<<33) {
		t.Fatalf("fields lost: %+v", got.Header)
	}
	if string(got.Entries[11].Xattrs[0].Value) != "\x01\x00\x00\x02 " {
		t.Fatalf("xattr value lost: %q", got.Entries[11].Xattrs[0].Value)
	}
}

func TestComparePathsDepthFirst(t *testing.T) {
	order := []string{".", "a", "a/b", "a/b/c", "a-b", "a.b", "ab", "b"}
	for i := range order {
		for j := range order {
			got := ComparePaths(order[i], order[j])
			want := 0
			if i < j {
				want = -1
			} else if i > j {
				want = 1
			}
			if got != want {
				t.Errorf("ComparePaths(%q, %q) = %d, want %d", order[i], order[j], got, want)
			}
		}
	}
}

// TestRejects edits one line of a valid manifest at a time; each edit must be
// refused with ErrFormat, never accepted or panicking.
func TestRejects(t *testing.T) {
	good, err := sample().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, old, new string
	}{
		{"wrong magic", "peerup-manifest 1", "peerup-manifest 2"},
		{"not a manifest", "peerup-manifest 1", "<html>"},
		{"bad image", "image school-laptop", "image School/Laptop"},
		{"version zero", "version 7", "version 0"},
		{"version above 2^53", "version 7", "version 9007199254740993"},
		{"version 2^64-1", "version 7", "version 18446744073709551615"},
		{"version leading zero", "version 7", "version 07"},
		{"version negative", "version 7", "version -7"},
		{"bad time", "created 2026-11-24T10:00:00Z", "created 2026-11-24 10:00"},
		{"entries miscounted", "entries 13", "entries 12"},
		{"bytes miscounted", "bytes 8589934597", "bytes 8589934598"},
		{"dotdot", "d etc 0755", "d .. 0755"},
		{"absolute", "d etc 0755", "d /etc 0755"},
		{"empty component", "d usr/bin 0755", "d usr//bin 0755"},
		{"NUL in path", "d etc 0755", "d e%00tc 0755"},
		{"lowercase escape", "my%20file", "my%2ofile"},
		{"needless escape", "%3Dodd", "%3D%6Fdd"},
		{"raw equals", "%3Dodd", "=odd"},
		{"unsorted", "d run 1777", "d ab 1777"},
		{"child of symlink", "d usr/bin 0755", "d bin/x 0755"},
		{"parent missing", "f usr/bin-x", "f var/x"},
		{"mode too wide", "d run 1777", "d run 17777"},
		{"mode not octal", "d run 1777", "d run 1787"},
		{"symlink mode", "l bin 0777", "l bin 0755"},
		{"bad digest", "0102030000", "0G02030000"},
		{"unknown type", "p run/fifo", "s run/fifo"},
		{"unknown field", "0 0 1:3", "0 0 1:3 extra"},
		{"device not major:minor", "0 0 1:3", "0 0 259"},
		{"major beyond dev_t", "0 0 1:3", "0 0 4096:3"},
		{"minor beyond dev_t", "0 0 1:3", "0 0 1:1048576"},
		{"uid (uid_t)-1", "p run/fifo 0600 1000 1000", "p run/fifo 0600 4294967295 1000"},
		{"gid (uid_t)-1", "p run/fifo 0600 1000 1000", "p run/fifo 0600 1000 4294967295"},
		{"ACL xattr", "x=user.x=", "x=user.x= x=zsystem.posix_acl_access=%02"},
		{"root not first", "d . 0755 0 0\nl bin", "l bin"},
		{"no blank line", "bytes 8589934597\n\n", "bytes 8589934597\n"},
		{"truncated", "8589934592 0102", "8589934592 01"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := string(good)
			if !strings.Contains(s, tc.old) {
				t.Fatalf("test broken: %q not in manifest:\n%s", tc.old, s)
			}
			bad := strings.Replace(s, tc.old, tc.new, 1)
			if _, err := Parse([]byte(bad)); !errors.Is(err, ErrFormat) {
				t.Fatalf("err = %v, want ErrFormat\n%s", err, bad)
			}
		})
	}
	t.Run("no final newline", func(t *testing.T) {
		if _, err := Parse(good[:len(good)-1]); !errors.Is(err, ErrFormat) {
			t.Fatalf("err = %v, want ErrFormat", err)
		}
	})
	t.Run("cut after a line", func(t *testing.T) {
		cut := good[:bytes.LastIndexByte(good[:len(good)-1], '\n')+1]
		if _, err := Parse(cut); !errors.Is(err, ErrFormat) {
			t.Fatalf("err = %v, want ErrFormat", err)
		}
	})
}

func TestLineTooLong(t *testing.T) {
	m := sample()
	big := bytes.Repeat([]byte{0}, MaxXattrSize)
	m.Entries[6].Xattrs = []Xattr{{Name: "user.a", Value: big}, {Name: "user.b", Value: big}}
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Parse(b); !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), "longer than") {
		t.Fatalf("err = %v, want line too long", err)
	}
}

func TestStreamingReaderStopsAtEOF(t *testing.T) {
	b, _ := sample().Marshal()
	r, err := NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for {
		_, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		n++
	}
	if n != 13 {
		t.Fatalf("read %d entries, want 13", n)
	}
	if _, err := r.Next(); err != io.EOF {
		t.Fatalf("after end: %v", err)
	}
}

func TestWriterRefusesBadOrder(t *testing.T) {
	var buf bytes.Buffer
	w, err := NewWriter(&buf, Header{Image: "x", Version: 1, Entries: 2})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Add(&Entry{Path: "a", Type: TypeDir, Mode: 0755}); err == nil {
		t.Fatal("accepted an entry before the root")
	}
}

func FuzzParse(f *testing.F) {
	good, _ := sample().Marshal()
	f.Add(good)
	f.Add([]byte("peerup-manifest 1\n"))
	f.Add([]byte("peerup-manifest 1\nimage x\nversion 1\nlabel \ncreated 2026-01-01T00:00:00Z\nentries 1\nfiles 0\nbytes 0\n" +
		"expires 2026-04-01T00:00:00Z\nkeys-add 0123456789ABCDEF0123456789ABCDEF01234567\nkeys-revoke 89ABCDEF0123456789ABCDEF0123456789ABCDEF\n\nd . 0755 0 0\n"))
	f.Add([]byte("peerup-manifest 1\nimage x\nversion 1\nlabel \ncreated 2026-01-01T00:00:00Z\nentries 1\nfiles 0\nbytes 0\n\nd . 0755 0 0\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Parse(b)
		if err != nil {
			if !errors.Is(err, ErrFormat) {
				t.Fatalf("error does not wrap ErrFormat: %v", err)
			}
			return
		}
		// Whatever parses must re-encode to the very same bytes: one
		// spelling per manifest.
		out, err := m.Marshal()
		if err != nil {
			t.Fatalf("parsed manifest does not encode: %v", err)
		}
		if !bytes.Equal(out, b) {
			t.Fatalf("re-encoding differs:\n%q\n%q", b, out)
		}
	})
}

func FuzzEscape(f *testing.F) {
	f.Add("a b%c=d\x00\xff")
	f.Fuzz(func(t *testing.T, s string) {
		got, err := Unescape(Escape(s))
		if err != nil || got != s {
			t.Fatalf("Unescape(Escape(%q)) = %q, %v", s, got, err)
		}
		if u, err := Unescape(s); err == nil && Escape(u) != s {
			t.Fatalf("%q unescapes but is not canonical", s)
		}
	})
}
