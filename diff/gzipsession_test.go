package diff

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"
)

// TestGzDecodesShareGzipAndStayApart: many concurrent gz decodes on one
// Decoder share gzip processes, and each still gets exactly its own target,
// however the decodes around it fail: a truncated encoding, a target size
// one byte short or long, a writer that stops taking output. A failure
// never shifts the output of the decodes after it.
func TestGzDecodesShareGzipAndStayApart(t *testing.T) {
	type job struct {
		name     string
		enc      []byte
		size     int64
		want     []byte // nil: must fail
		stopAt   int    // the writer fails after this many bytes (0: never)
		wantKind error
	}
	var jobs []job
	for i := range 150 {
		text := manPage(fmt.Sprintf("2026-%02d-%02d", i%12+1, i%28+1))
		for k := range i * 5 {
			text = fmt.Appendf(text, "changelog entry %d of upload %d: %x\n", k, i, k*k*2654435761)
		}
		gz := gzip9nOrSkip(t, text)
		enc, err := zstdEncode(text, nil)
		if err != nil {
			t.Fatal(err)
		}
		j := job{name: fmt.Sprint(i), enc: enc, size: int64(len(gz)), want: gz}
		switch i % 10 {
		case 3:
			j.name, j.enc, j.want, j.wantKind = "truncated encoding", enc[:len(enc)/2], nil, ErrCorruptEncoding
		case 5:
			j.name, j.size, j.want, j.wantKind = "size one short", j.size-1, nil, ErrCorruptEncoding
		case 7:
			j.name, j.size, j.want, j.wantKind = "size one over", j.size+1, nil, ErrCorruptEncoding
		case 9:
			j.name, j.stopAt, j.want = "writer stops", len(gz)/3, nil
		}
		jobs = append(jobs, j)
	}
	d := NewDecoder()
	defer d.Close()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for _, j := range jobs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			var out bytes.Buffer
			var w io.Writer = &out
			if j.stopAt > 0 {
				w = &stopWriter{w: &out, left: j.stopAt}
			}
			err := d.DecodeTo(t.Context(), KindGzZstd, nil, io.NewSectionReader(bytes.NewReader(j.enc), 0, int64(len(j.enc))), j.size, w)
			switch {
			case j.want != nil && err != nil:
				t.Errorf("%s: %v", j.name, err)
			case j.want != nil && !bytes.Equal(out.Bytes(), j.want):
				t.Errorf("%s: got %d bytes that are not its target (%d bytes)", j.name, out.Len(), len(j.want))
			case j.want == nil && err == nil:
				t.Errorf("%s: decoded without an error", j.name)
			case j.wantKind != nil && !errors.Is(err, j.wantKind):
				t.Errorf("%s: err = %v, want %v", j.name, err, j.wantKind)
			}
		}()
	}
	wg.Wait()
	d.gz.mu.Lock()
	started := d.gz.started
	d.gz.mu.Unlock()
	if started > len(jobs)/8 {
		t.Errorf("%d gz decodes started %d gzip processes: they should share", len(jobs), started)
	}
}

type stopWriter struct {
	w    io.Writer
	left int
}

func (s *stopWriter) Write(p []byte) (int, error) {
	if len(p) > s.left {
		return 0, errors.New("writer stopped")
	}
	s.left -= len(p)
	return s.w.Write(p)
}

func TestTrailerAt(t *testing.T) {
	empty := []byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 3, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	trailer := []byte{0xde, 0xad, 0xbe, 0xef, 5, 0, 0, 0}
	member := append([]byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 3, 0x55, 0x66}, trailer...)
	zeros := make([]byte, 8)
	for _, tc := range []struct {
		name string
		b, t []byte
		want int
	}{
		{"not there", member[:len(member)-1], trailer, -1},
		{"at the end", member, trailer, len(member) - 8},
		{"before the next member", append(bytes.Clone(member), empty...), trailer, len(member) - 8},
		{"empty text's trailer after a deflate stream ending in zero", empty, zeros, len(empty) - 8},
		{"empty text's member, then another", append(bytes.Clone(empty), member...), zeros, len(empty) - 8},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := trailerAt(tc.b, tc.t); got != tc.want {
				t.Errorf("trailerAt = %d, want %d", got, tc.want)
			}
		})
	}
}
