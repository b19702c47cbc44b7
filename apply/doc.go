// Package apply turns a node's store into bootable trees and switches between
// them.
//
// A sysroot (SPEC.md §6) holds complete image trees side by side, and three
// symlinks that say which is which: current, previous and staged. A tree is
// built under a temporary name, made durable with one syncfs, and only then
// renamed to its final name; after that it is never modified. Switching
// replaces a symlink with rename(2), so a power cut at any instant leaves
// current pointing at a complete tree: the old one or the new one.
//
// Pull fetches a signed version from a Source into the node's own repo and
// stages its tree; Apply switches to the staged tree; Rollback swaps current
// and previous. All three hold the sysroot's lock, so two peerup processes
// never change one sysroot at once.
//
// Beside pull live the other copies between repos, under the same checks
// (manifest.Accept, diff.AcceptDeltas): Mirror brings a school server's repo
// in step with an upstream Source, and Export writes verified versions to
// USB sticks, reading each object once for every stick.
package apply
