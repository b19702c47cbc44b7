package diff

import (
	"bytes"
	"context"
	"io"
)

// decodeBytes is DecodeTo with everything in memory, for the tests that
// predate streaming: the output is returned only if the decode succeeded.
func decodeBytes(ctx context.Context, kind Kind, base []byte, enc io.Reader, size int64) ([]byte, error) {
	e, err := io.ReadAll(enc)
	if err != nil {
		return nil, err
	}
	var b *io.SectionReader
	if base != nil {
		b = io.NewSectionReader(bytes.NewReader(base), 0, int64(len(base)))
	}
	d := NewDecoder()
	defer d.Close()
	var out bytes.Buffer
	if err := d.DecodeTo(ctx, kind, b, io.NewSectionReader(bytes.NewReader(e), 0, int64(len(e))), size, &out); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}
