// Package diff makes the encodings that let a laptop fetch a changed file
// as a few kilobytes instead of megabytes: BSDIFF40 patches (interoperable
// with Debian's bsdiff and bspatch), zstd, and zstd with the old file as a
// dictionary; the signed delta index that lists them; and the publisher's
// choice of base files (SPEC.md §8, §10).
//
// Patches are made with github.com/gabstv/go-bsdiff. Its patcher trusts its
// input (it panics on negative lengths and allocates whatever a header
// claims), so Apply implements the small BSDIFF40 format itself: it checks
// the header against the size the signed manifest declares and every control
// triple before acting on it, so any input yields an error, never a crash, a
// hang or a huge allocation. The fuzz test holds it to the library's output.
// Callers verify a patch's hash before applying it and the result's after.
package diff
