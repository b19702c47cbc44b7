package diff

import (
	"bytes"
	"encoding/binary"
	"io"

	"github.com/dsnet/compress/bzip2"
)

// A bzip2 stream's level is its block size in units of 100 kB, and a
// decoder holds one block (with its inverse-BWT permutation) whatever the
// data. go-bsdiff writes all three streams of a patch at level 9, so
// applying even a patch of a few bytes would hold three 900 kB blocks; a
// publisher therefore rewrites each stream at the smallest level that holds
// its data in one block (no ratio is lost: a level above that changes
// nothing), and a node reads the levels back to know what the patch it is
// about to apply holds (PatchMemory).

const bzip2BlockUnit = 100_000

// bzip2LevelMemory is one decoder of a stream at level: bzip2Memory scaled
// to the block, plus the tables every decoder has.
func bzip2LevelMemory(level int) int64 {
	return int64(level)*(bzip2Memory-bzip2Tables)/9 + bzip2Tables
}

// fitLevels rewrites a BSDIFF40 patch's streams at fitted levels. The
// patch is the library's own, just made, so a failure is a bug and the
// patch is returned unchanged.
func fitLevels(patch []byte) []byte {
	h, err := readHeader(bytes.NewReader(patch), int64(len(patch)))
	if err != nil {
		return patch
	}
	streams := [][]byte{
		patch[headerLen : headerLen+h.ctrlLen],
		patch[headerLen+h.ctrlLen : headerLen+h.ctrlLen+h.diffLen],
		patch[headerLen+h.ctrlLen+h.diffLen:],
	}
	out := make([]byte, headerLen, len(patch))
	copy(out, patch[:headerLen])
	var lens [3]int64
	for i, s := range streams {
		re, err := refit(s)
		if err != nil {
			return patch
		}
		lens[i] = int64(len(re))
		out = append(out, re...)
	}
	binary.LittleEndian.PutUint64(out[8:], uint64(lens[0]))
	binary.LittleEndian.PutUint64(out[16:], uint64(lens[1]))
	return out
}

// bunzip2 decodes a whole bzip2 stream of a patch the publisher just made.
func bunzip2(stream []byte) ([]byte, error) {
	zr, err := bzip2.NewReader(bytes.NewReader(stream), nil)
	if err != nil {
		return nil, err
	}
	return io.ReadAll(zr)
}

func refit(stream []byte) ([]byte, error) {
	data, err := bunzip2(stream)
	if err != nil {
		return nil, err
	}
	// Run-length coding may grow the data by a quarter before the block
	// is cut, so leave room for it in one block.
	level := min(max(1, (len(data)+len(data)/4+bzip2BlockUnit-1)/bzip2BlockUnit), 9)
	var b bytes.Buffer
	zw, err := bzip2.NewWriter(&b, &bzip2.WriterConfig{Level: level})
	if err != nil {
		return nil, err
	}
	if _, err := zw.Write(data); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// PatchMemory is what applying the BSDIFF40 patch in enc holds: three
// bzip2 decoders at the levels its streams declare (a decoder refuses a
// block over its level), and the applier's chunks. A patch it cannot read
// is charged as if at level 9; applying it will fail anyway.
func PatchMemory(enc io.ReaderAt, size int64) int64 {
	worst := DecodeMemory(KindBsdiff, 0, 0)
	h, err := readHeader(enc, size)
	if err != nil {
		return worst
	}
	total := int64(chunkMemory)
	for _, off := range []int64{headerLen, headerLen + h.ctrlLen, headerLen + h.ctrlLen + h.diffLen} {
		var magic [4]byte
		if _, err := enc.ReadAt(magic[:], off); err != nil || string(magic[:3]) != "BZh" || magic[3] < '1' || magic[3] > '9' {
			return worst
		}
		total += bzip2LevelMemory(int(magic[3] - '0'))
	}
	return total
}
