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
// Patches arrive from untrusted peers, and the library's patcher trusts its
// input: it panics on a negative length, allocates whatever size a header
// claims, and spins for as long as a stream of empty control triples lasts.
// So Apply checks the header against the size the signed manifest declares
// (never above MaxPatchOutput) and every control triple before the library
// sees the patch, and turns anything left into an error wrapping
// ErrCorruptPatch, never a crash, a hang or a huge allocation.
//
// Apply is not an authenticator. Callers verify the patch's SHA-256 against
// the signed index before applying it, and the output's SHA-256 against the
// manifest after: a patch can be well-formed and still wrong.
package diff
