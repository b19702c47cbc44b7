// Package diff makes the encodings that let a laptop fetch a changed file
// as a few kilobytes instead of megabytes: BSDIFF40 patches, zstd, and zstd
// with the old file as a dictionary; the signed delta index that lists them;
// and the publisher's choice of base files (SPEC.md §8, §10).
//
// Patches are plain BSDIFF40 so that Debian's bsdiff and bspatch 4.3 can
// make and check them: an administrator can debug a patch without peerup.
// They are made with github.com/gabstv/go-bsdiff, which cannot be
// interrupted and turns quadratic on long runs of equal bytes, so Make
// gives up when its context ends and lets the work finish in the
// background, and planners budget its memory with MemoryNeeded.
//
// Patches arrive from untrusted peers, so peerup applies them with its own
// streaming applier (Patch; Apply is the same in memory), not the library's,
// which trusts its input: Patch checks the header against the size the
// signed manifest declares (never above MaxPatchOutput) and every control
// triple before acting on it, and turns anything wrong into an error
// wrapping ErrCorruptPatch, never a crash, a hang or a large allocation.
//
// A laptop has 256 MB, so Decoder.DecodeTo decodes every kind streaming:
// the base and the encoding are read in place through ReadAt, the target
// goes to a writer in chunks, and DecodeMemory tells a puller beforehand
// what a decode will hold, so it can budget concurrent ones.
//
// Neither Patch nor DecodeTo is an authenticator. Callers verify the
// encoding's SHA-256 against the signed index before decoding it, and the
// output's SHA-256 against the manifest after: a patch can be well-formed
// and still wrong, and a failed decode may have written a prefix.
package diff
