package blobstore

import (
	"bytes"
	"errors"
	"testing"
)

func TestParseWithdrawn(t *testing.T) {
	good := "peerup-withdrawn 1\nimage school-laptop\nseq 3\nversion 2\nversion 5\n"
	for _, tc := range []struct {
		name, in string
		ok       bool
	}{
		{"two versions", good, true},
		{"none", "peerup-withdrawn 1\nimage school-laptop\nseq 1\n", true},
		{"other magic", "peerup-withdrawn 2\nimage school-laptop\nseq 1\n", false},
		{"no final newline", "peerup-withdrawn 1\nimage school-laptop\nseq 1", false},
		{"bad image", "peerup-withdrawn 1\nimage School\nseq 1\n", false},
		{"seq with a leading zero", "peerup-withdrawn 1\nimage a\nseq 01\n", false},
		{"versions out of order", "peerup-withdrawn 1\nimage a\nseq 1\nversion 5\nversion 2\n", false},
		{"a version twice", "peerup-withdrawn 1\nimage a\nseq 1\nversion 5\nversion 5\n", false},
		{"version 0", "peerup-withdrawn 1\nimage a\nseq 1\nversion 0\n", false},
		{"blank line", "peerup-withdrawn 1\nimage a\nseq 1\n\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, err := ParseWithdrawn([]byte(tc.in))
			if tc.ok != (err == nil) {
				t.Fatalf("ParseWithdrawn: %v, want ok=%v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrWithdrawnList) {
				t.Errorf("error does not wrap ErrWithdrawnList: %v", err)
			}
			if err == nil && !bytes.Equal(w.Marshal(), []byte(tc.in)) {
				t.Errorf("Marshal gives %q, not the input", w.Marshal())
			}
		})
	}
}

func FuzzParseWithdrawn(f *testing.F) {
	f.Add([]byte("peerup-withdrawn 1\nimage school-laptop\nseq 3\nversion 2\nversion 5\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		w, err := ParseWithdrawn(b)
		if err != nil {
			return
		}
		// What parses is canonical: it encodes back to the same bytes.
		if !bytes.Equal(w.Marshal(), b) {
			t.Fatalf("Marshal(Parse(%q)) = %q", b, w.Marshal())
		}
	})
}
