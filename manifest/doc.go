// Package manifest defines the signed description of one image version.
//
// A manifest is a line-oriented text file: a header naming the image, its
// version and totals, then one line per path in the image. It is parsed
// strictly, so that every manifest has exactly one spelling, and in a
// streaming fashion, so that a laptop with 256 MB of RAM can check a manifest
// of any image size without holding it in memory.
//
// The bytes of the manifest file are exactly what is signed. A node verifies
// the detached OpenPGP signature over the bytes it received before it parses
// them, and never re-serialises a manifest to check it.
//
// Entries are ordered so that a directory comes before everything inside it
// and everything inside it comes before its next sibling: a depth-first walk.
// That lets both the parser (which checks that every parent is a directory
// listed before its children) and the tree builder work in one pass with
// memory bounded by the depth of the tree.
//
// The format is specified in SPEC.md §1; this package is its reference
// implementation.
package manifest
