// Package transfer is transport: it moves a repo's files over HTTP, and
// reads them off USB sticks for schools without a network link (Dir). What
// to copy between repos (mirror, export) is decided beside pull, in apply,
// with the checks a laptop makes.
//
// A repo is a folder of static files (SPEC.md §5), so the server here is a
// small file server that knows the repo's few path shapes and refuses
// everything else, and any web server or CDN can stand in for it. The client
// treats every server as untrusted transport: it bounds what it reads, hashes
// while streaming, and hands bytes to the store only through checks against
// the signed manifest, so a hostile or broken peer can waste a request but
// never place a wrong byte. A stick is treated exactly like a server.
package transfer
