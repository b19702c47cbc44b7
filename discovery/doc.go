// Package discovery finds peers that hold a newer version of the node's
// image, and tells peers when the node itself has one.
//
// Sources of peers are Finders feeding one peer table, the Manager
// (modelled on syncthing's lib/discover: small finders, one manager); a
// Service runs the built-in three and any others it is given:
//
//   - DNS-SD over mDNS: every node advertises _peerup._tcp with its image and
//     version in TXT. github.com/hashicorp/mdns supplies the records and the
//     active browse, but it answers only by unicast and never announces, so
//     Avahi would not see us; the Advertiser here owns a socket on port 5353
//     that answers queries by multicast and sends unsolicited announcements
//     (RFC 6762 §8.3) built from the same records, and the browser also
//     listens passively to every response on the link.
//   - Per-version multicast wake-ups: a node that moves from version N to a
//     newer one announces it on a group derived from (image, N), which only
//     nodes still at N have joined: they wake, nobody else is disturbed.
//   - Static peers given by the administrator.
//
// Everything learnt here is a hint. Only the fleet key's signature on a
// manifest decides what a node installs, so the table is bounded, rate
// limited and forgetful rather than trusting.
package discovery
