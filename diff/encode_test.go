package diff

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// TestPooledEncodersDecodeOnANode: the publisher's pooled encoders (one
// window for all) must make frames a node decodes within the window it
// allows for the content's size, across the sizes where frames change form,
// with and without a dictionary, and with encoders reused between sizes.
func TestPooledEncodersDecodeOnANode(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	text := func(n int) []byte {
		words := []string{"libc ", "security ", "update\n", "0x7f ", "\x00\x01\x02", "laptop "}
		var b bytes.Buffer
		for b.Len() < n {
			b.WriteString(words[rng.IntN(len(words))])
			if rng.IntN(50) == 0 {
				b.WriteByte(byte(rng.Uint32()))
			}
		}
		return b.Bytes()[:n]
	}
	var zs zstdEncoders
	dec := NewDecoder()
	defer dec.Close()
	for _, n := range []int{1, 1000, 1024, 1025, 2048, 4096, 200_000, 3 << 20} {
		for _, withDict := range []bool{false, true} {
			data := text(n)
			var base []byte
			kind := KindZstd
			if withDict {
				base = append(text(n/2+10), data[:n/2]...)
				kind = KindZstdDict
			}
			for _, level := range []zstd.EncoderLevel{zstd.SpeedBestCompression, dictLevel} {
				enc, err := zs.encode(data, base, level)
				if err != nil {
					t.Fatal(err)
				}
				if !withDict {
					one, err := zstdEncodeLevel(data, nil, level)
					if err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(one, enc) {
						t.Errorf("n=%d level %v: pooled frame differs from a right-sized encoder's", n, level)
					}
				}
				var out bytes.Buffer
				var bs *io.SectionReader
				if withDict {
					bs = io.NewSectionReader(bytes.NewReader(base), 0, int64(len(base)))
				}
				err = dec.DecodeTo(context.Background(), kind, bs, io.NewSectionReader(bytes.NewReader(enc), 0, int64(len(enc))), int64(n), &out)
				if err != nil || !bytes.Equal(out.Bytes(), data) {
					t.Fatalf("n=%d dict=%v level %v: decode: %v (equal %v)", n, withDict, level, err, bytes.Equal(out.Bytes(), data))
				}
			}
		}
	}
}

func TestWorthDiffing(t *testing.T) {
	for _, c := range []struct {
		n, dict int
		want    bool
	}{
		{1000, 0, true},                // no dictionary form to beat
		{2_000_000, 540, false},        // a version string changed
		{1_000_000, 9_999, false},      // under 1%
		{1_000_000, 10_001, true},      // over 1%
		{100_000_000, 900_000, true},   // under 1% but large: worth the try
		{100_000_000, 16 << 10, false}, // at the absolute cap
		{100, 1, false},                // a patch's header alone is larger
	} {
		if got := worthDiffing(c.n, c.dict); got != c.want {
			t.Errorf("worthDiffing(%d, %d) = %v, want %v", c.n, c.dict, got, c.want)
		}
	}
}
