package apply

import (
	"context"
	"fmt"
	"strings"
)

// Preview is what pulling a version would cost and bring, learnt from its
// signed metadata alone: what a desktop shows beside an offer, before it
// asks for the download (eos-updater's properties of an available update).
type Preview struct {
	Image   string `json:"image"`
	Version uint64 `json:"version"`
	// UpdateID names this update exactly: the SHA-256 of the version's
	// signed manifest.
	UpdateID string `json:"update_id"`
	// Label and Message are the manifest's label: its first line, and the
	// rest.
	Label   string `json:"label"`
	Message string `json:"message"`
	// DownloadSize is what the pull after this preview will receive: the
	// index again (the manifest and delta index the preview received are
	// kept for it), and for each object the node lacks the cheapest way it
	// has. FullDownloadSize is what a node holding nothing would receive,
	// all the metadata and every file whole.
	DownloadSize     int64 `json:"download_size"`
	FullDownloadSize int64 `json:"full_download_size"`
	// UnpackedSize is the bytes of the files the node lacks, as they will
	// be on disk; FullUnpackedSize those of every file of the tree.
	UnpackedSize     int64 `json:"unpacked_size"`
	FullUnpackedSize int64 `json:"full_unpacked_size"`
}

// Preview fetches and verifies the metadata of the version o asks for (the
// newest by default) and plans its pull without fetching any object. What
// it received is verified as a pull's is, and kept in staging for the pull
// of that version that usually follows, which then receives only the
// index. A preview finishes an interrupted switch first, as every
// operation does (SPEC.md §7), and keeps the newest withdrawn list it
// verified; it fetches, stages and switches nothing.
func (s *Sysroot) Preview(ctx context.Context, src Source, o PullOptions) (*Preview, error) {
	m, end, err := s.begin(ctx, src, &o, true)
	if err != nil {
		return nil, err
	}
	defer end()
	b, err := s.repo.Begin()
	if err != nil {
		return nil, err
	}
	defer b.Abort()
	needs, _, err := s.plan(b, m.mf, m.deltas, o.Policy, newInFlight(o.Memory), m.res)
	if err != nil {
		return nil, fmt.Errorf("preview %s v%d: %w", m.image, m.v, err)
	}
	d, err := m.mf.Digest(ctx)
	if err != nil {
		return nil, fmt.Errorf("preview %s v%d: %w", m.image, m.v, err)
	}
	label, message, _ := strings.Cut(m.h.Label, "\n")
	p := &Preview{
		Image: m.image, Version: m.v, UpdateID: d.String(),
		Label: label, Message: message,
		DownloadSize:     m.indexBytes,
		FullUnpackedSize: int64(m.h.Bytes),
	}
	for i := range needs {
		p.DownloadSize += needs[i].cost()
		p.UnpackedSize += needs[i].size
	}
	p.FullDownloadSize = m.res.MetadataBytes + p.FullUnpackedSize
	m.kept = true
	s.previewed.keep(m)
	return p, nil
}
