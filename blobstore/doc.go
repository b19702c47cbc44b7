// Package blobstore keeps file contents by their SHA-256, and the repository
// layout built on top of them.
//
// An object is the bytes of one file, named by the SHA-256 of those bytes. It
// is what peers exchange: whoever holds an object can serve it, and whoever
// receives it checks the hash before keeping it. No unverified byte is ever
// given an object's name.
//
// A file is what a built tree links to: an object's bytes together with the
// metadata the image gives them (mode, owner, xattrs). All hard links to one
// inode share its metadata, so the same bytes with two different owners must
// be two inodes. A file is named by a digest over the object name and the
// metadata (SPEC.md §4), and where possible it is the object's own inode, so
// that a laptop stores each file's bytes once.
//
// Writes go through a Batch: new objects and files are written into a
// staging directory without per-file fsync, then Commit issues one syncfs and
// renames them into place, as OSTree does. A crash before Commit leaves only
// staging debris, which the next Open removes.
//
// A Repo is a store plus the signed manifests of the versions it holds and a
// small index of them: a folder of static files that any web server can serve
// (SPEC.md §5). Layout is the one place that spells the repo's paths, for
// its own writers and for the servers, clients and stick readers that move
// its files; a test keeps every other package from spelling them.
package blobstore
