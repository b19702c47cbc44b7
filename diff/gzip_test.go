package diff

import (
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"testing"
)

// manPage is a man page as Debian ships it: the date in its header changes
// with every upload even when nothing else does.
func manPage(date string) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, ".TH OPENSSL-CMP 1SSL %q \"3.0.22\" \"OpenSSL\"\n", date)
	for i := range 1500 {
		fmt.Fprintf(&b, ".IP \"\\fB\\-option%d\\fR\" 4\nDescribes option %d of the command in some detail.\n", i, i*7%1000)
	}
	return []byte(b.String())
}

func gzip9nOrSkip(t *testing.T, text []byte) []byte {
	t.Helper()
	if _, err := exec.LookPath("gzip"); err != nil {
		t.Skip("needs gzip (apt-get install gzip)")
	}
	out, err := gzip9n(t.Context(), text, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestGzEncodingsCostTheChangeNotTheFile: a man page whose date changed is
// a new compressed file throughout, yet its gz-zstd-dict encoding is a few
// dozen bytes and decodes to the exact gzip file.
func TestGzEncodingsCostTheChangeNotTheFile(t *testing.T) {
	oldText, newText := manPage("2025-01-11"), manPage("2026-05-08")
	oldGz, newGz := gzip9nOrSkip(t, oldText), gzip9nOrSkip(t, newText)
	text, ok := reproducibleGzip(t.Context(), newGz)
	if !ok || !bytes.Equal(text, newText) {
		t.Fatal("a gzip -9n file is not recognised as reproducible")
	}
	enc, err := zstdEncode(text, oldText)
	if err != nil {
		t.Fatal(err)
	}
	patch, err := Make(t.Context(), oldGz, newGz)
	if err != nil {
		t.Fatal(err)
	}
	if len(enc)*20 > len(patch) {
		t.Errorf("gz-zstd-dict is %d bytes, bsdiff of the gzip files %d: the text diff should be far smaller", len(enc), len(patch))
	}
	out, err := decodeBytes(t.Context(), KindGzZstdDict, oldGz, bytes.NewReader(enc), int64(len(newGz)))
	if err != nil || !bytes.Equal(out, newGz) {
		t.Fatalf("gz-zstd-dict does not decode to the gzip file: %v", err)
	}
	whole, err := zstdEncode(text, nil)
	if err != nil {
		t.Fatal(err)
	}
	out, err = decodeBytes(t.Context(), KindGzZstd, nil, bytes.NewReader(whole), int64(len(newGz)))
	if err != nil || !bytes.Equal(out, newGz) {
		t.Fatalf("gz-zstd does not decode to the gzip file: %v", err)
	}
}

// TestGzEncodingsRefuse: the gz kinds are offered only for files gzip -9n
// reproduces, and decoding fails cleanly, never with wrong bytes, when the
// node cannot reproduce the file.
func TestGzEncodingsRefuse(t *testing.T) {
	text := manPage("2026-05-08")
	gz := gzip9nOrSkip(t, text)

	var other bytes.Buffer
	w, _ := gzip.NewWriterLevel(&other, gzip.BestSpeed)
	w.Write(text)
	w.Close()
	if _, ok := reproducibleGzip(t.Context(), other.Bytes()); ok {
		t.Error("a gzip file that gzip -9n does not reproduce was taken as reproducible")
	}
	if _, ok := reproducibleGzip(t.Context(), text); ok {
		t.Error("plain text taken as a gzip file")
	}
	var bomb bytes.Buffer
	w, _ = gzip.NewWriterLevel(&bomb, gzip.BestCompression)
	w.Write(make([]byte, MaxGunzipped+1))
	w.Close()
	if _, ok := gunzip(bomb.Bytes()); ok {
		t.Error("a gzip file whose text is over the cap was unpacked")
	}

	enc, err := zstdEncode(text, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		kind Kind
		base []byte
		enc  []byte
		size int64
		want error
	}{
		{"size smaller than the recompressed file", KindGzZstd, nil, enc, int64(len(gz)) - 1, nil},
		{"size larger than the recompressed file", KindGzZstd, nil, enc, int64(len(gz)) + 1, ErrCorruptEncoding},
		{"truncated encoding", KindGzZstd, nil, enc[:len(enc)/2], int64(len(gz)), ErrCorruptEncoding},
		{"base that is not gzip", KindGzZstdDict, text, enc, int64(len(gz)), ErrCorruptEncoding},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := decodeBytes(t.Context(), tc.kind, tc.base, bytes.NewReader(tc.enc), tc.size)
			if err == nil {
				t.Fatalf("decoded %d bytes", len(out))
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("err = %v, want %v", err, tc.want)
			}
		})
	}

	t.Run("no gzip program", func(t *testing.T) {
		t.Setenv("PATH", t.TempDir())
		if _, err := decodeBytes(t.Context(), KindGzZstd, nil, bytes.NewReader(enc), int64(len(gz))); !errors.Is(err, ErrNoGzip) {
			t.Errorf("err = %v, want ErrNoGzip", err)
		}
	})
}
