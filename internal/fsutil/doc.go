// Package fsutil holds the file-system steps peerup's durability rests on
// that are not about objects: atomic replacement of small files, syncfs,
// fsync of a directory, and a non-blocking exclusive lock file. A write is
// durable when these return: WriteAtomic's file, Syncfs's whole file
// system, FsyncDir's renames and links. LockFile never waits: a held lock
// is ErrBusy at once, so two peerup processes never queue on one repo.
package fsutil
