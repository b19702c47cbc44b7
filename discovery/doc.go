// Package discovery finds peers that hold a newer version of the node's
// image, and tells peers when the node itself has one.
//
// Sources of peers are Finders feeding one peer table, the Manager
// (modelled on syncthing's lib/discover: small finders, one manager); a
// Service runs the built-in three and any others it is given:
//
//   - DNS-SD over mDNS: every node advertises _peerup._tcp with its image and
//     version in TXT. github.com/hashicorp/mdns supplies the records, but it
//     answers only by unicast and never announces, so Avahi would not see
//     us; the Responder here owns a socket on port 5353 that answers
//     queries by multicast, sends unsolicited announcements (RFC 6762 §8.3)
//     and its own queries, and hears every response on the link. Names are
//     made unique per node (identical laptops share a host name) and
//     defended by probing and conflict renames.
//   - Per-version multicast wake-ups: a node that moves from version N to a
//     newer one announces it on a group derived from (image, N), which only
//     nodes still at N have joined: they wake, nobody else is disturbed.
//   - Static peers given by the administrator.
//
// Sockets join and send on each link by interface index, as syncthing's
// lib/beacon does, so no route is needed, and the links are scanned again
// every few seconds so a laptop that rejoins its Wi-Fi is heard again.
//
// Everything learnt here is a hint. Only the fleet key's signature on a
// manifest decides what a node installs, so the table is bounded, rate
// limited and forgetful rather than trusting.
package discovery
