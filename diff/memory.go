package diff

// DecodeMemory estimates the bytes decoding an encoding of kind holds at
// once, for a base of baseSize bytes and an output of size bytes: what a
// pull's memory budget is charged for it. Today's decoders work in memory:
// the base, the output and the decoder's state are all held.
func DecodeMemory(kind Kind, baseSize, size int64) int64 {
	const state = 8 << 20 // decoder windows and bzip2 blocks
	switch kind {
	case KindGzZstd, KindGzZstdDict:
		return baseSize + 2*size + MaxGunzipped + state
	}
	return baseSize + 2*size + state
}
