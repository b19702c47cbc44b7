package apply

import "sync"

// previewed holds the signed metadata a Preview received and verified, so
// that the pull a desktop asks for next does not receive it again: a
// laptop pays for every byte, and a manifest and delta index are most of
// what a security update costs (SPEC.md §10, "Preview, then pull").
type previewed struct {
	mu sync.Mutex
	m  *pulled // nil: none kept
}

// keep holds m's manifest and delta index in place of any held before.
func (p *previewed) keep(m *pulled) {
	p.mu.Lock()
	old := p.m
	p.m = m
	p.mu.Unlock()
	if old != nil {
		old.close()
	}
}

// take hands over what is held for image version v, if anything; what is
// held for another version is dropped. The caller verifies the manifest
// again (the time or the trusted keys may have changed since) and owns the
// files.
func (p *previewed) take(image string, v uint64) *pulled {
	p.mu.Lock()
	m := p.m
	p.m = nil
	p.mu.Unlock()
	if m != nil && (m.image != image || m.v != v) {
		m.close()
		return nil
	}
	return m
}

// ForgetPreview drops the metadata the last Preview kept, removing its
// files from staging: a daemon calls it as it stops, so that a restart
// does not leave them there.
func (s *Sysroot) ForgetPreview() { s.previewed.keep(nil) }
