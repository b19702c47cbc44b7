// Package transfer moves a repo's files: over HTTP, and on USB sticks for
// schools without a network link (Export writes sticks, Dir reads one).
//
// A repo is a folder of static files (SPEC.md §5), so the server here is a
// small file server that knows the repo's few path shapes and refuses
// everything else, and any web server or CDN can stand in for it. The client
// treats every server as untrusted transport: it bounds what it reads, hashes
// while streaming, and hands bytes to the store only through checks against
// the signed manifest, so a hostile or broken peer can waste a request but
// never place a wrong byte. A stick is treated exactly like a server.
package transfer
