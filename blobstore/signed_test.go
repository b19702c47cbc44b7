package blobstore

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"testing"

	"github.com/peerup/peerup/manifest"
)

// TestReceive: a received file is hashed as it arrives, left nowhere when
// its source fails or it is closed uncommitted, kept from Salvage while
// live, and renamed into place by AddVersion.
func TestReceive(t *testing.T) {
	errPeer := errors.New("peer went away")
	for _, tc := range []struct {
		name    string
		fill    func(w io.Writer) ([]byte, error)
		err     error
		commit  bool
		salvage bool
	}{
		{"committed", func(w io.Writer) ([]byte, error) { _, err := io.WriteString(w, "body"); return []byte("sig"), err }, nil, true, false},
		{"closed uncommitted", func(w io.Writer) ([]byte, error) { _, err := io.WriteString(w, "body"); return []byte("sig"), err }, nil, false, false},
		{"live through a salvage", func(w io.Writer) ([]byte, error) { _, err := io.WriteString(w, "body"); return []byte("sig"), err }, nil, true, true},
		{"source fails", func(w io.Writer) ([]byte, error) { io.WriteString(w, "bo"); return nil, errPeer }, errPeer, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := OpenRepo(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			sf, err := r.Receive(tc.fill)
			if !errors.Is(err, tc.err) {
				t.Fatalf("Receive: err = %v, want %v", err, tc.err)
			}
			if err == nil {
				defer sf.Close()
				if d, _ := sf.Digest(context.Background()); d != Digest(sha256.Sum256([]byte("body"))) || sf.Size() != 4 {
					t.Fatalf("received %d bytes hashed %s", sf.Size(), d)
				}
				if tc.salvage {
					b, err := r.Begin()
					if err != nil {
						t.Fatal(err)
					}
					if _, _, err := b.Salvage(context.Background()); err != nil {
						t.Fatal(err)
					}
					b.Abort()
				}
				if tc.commit {
					h := &manifest.Header{Image: "school-laptop", Version: 1}
					if _, err := r.AddVersion(h, sf); err != nil {
						t.Fatal(err)
					}
					got, err := r.OpenVersion("school-laptop", 1)
					if err != nil {
						t.Fatal(err)
					}
					defer got.Close()
					if b, _ := io.ReadAll(got.Reader()); string(b) != "body" || string(got.Sig()) != "sig" {
						t.Fatalf("stored %q signed %q", b, got.Sig())
					}
				}
				sf.Close()
			}
			if ents, _ := os.ReadDir(r.Layout().Staging()); len(ents) != 0 {
				t.Errorf("staging holds %d entries after the file is done with", len(ents))
			}
		})
	}
}
