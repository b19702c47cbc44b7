package manifest

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// A manifest delta rebuilds one manifest file from another, line by line
// (SPEC.md §10 "Manifest deltas"). A laptop's next manifest differs from the
// one it runs in the lines of the files an update changed, so the delta is a
// few percent of the manifest. It is applied in one pass over the base, the
// delta and the output, holding one line of each: a 45 MiB desktop manifest
// costs no more memory than a small one. The delta is unsigned; the rebuilt
// file is checked against the digest and size the delta names, and then
// against the manifest's own detached signature like a manifest fetched
// whole.

// ErrDelta is wrapped by every error about a malformed or mismatched
// manifest delta.
var ErrDelta = errors.New("bad manifest delta")

const deltaMagic = "peerup-manifest-delta 1"

// maxDeltaLine bounds one line of a delta: an op and a manifest line.
const maxDeltaLine = MaxLine + 32

// DeltaHeader is what a delta names: the exact base file it applies to and
// the exact file it rebuilds.
type DeltaHeader struct {
	Base       Digest
	Target     Digest
	TargetSize int64
}

// MakeDelta writes the delta that rebuilds target from base. Both are whole
// manifest files (a publisher holds them); the output is correct for any
// two files of lines, and small when they are manifests, whose entries are
// sorted by path: it pairs lines by path and keeps the common prefix of a
// changed line ("f usr/bin/x 0755 0 0 " before a new size and hash).
func MakeDelta(w io.Writer, base, target []byte) error {
	if len(base) > 0 && base[len(base)-1] != '\n' || len(target) > 0 && target[len(target)-1] != '\n' {
		return fmt.Errorf("%w: make: a manifest ends in a newline", ErrDelta)
	}
	bw := bufio.NewWriter(w)
	fmt.Fprintf(bw, "%s\nbase %s\ntarget %s %d\n", deltaMagic, Digest(sha256.Sum256(base)), Digest(sha256.Sum256(target)), len(target))
	e := &deltaEmitter{w: bw}
	bh, be := splitHeader(lines(base))
	th, te := splitHeader(lines(target))
	merge(e, bh, th, headerKey, strings.Compare)
	merge(e, be, te, entryKey, ComparePaths)
	e.flush()
	return bw.Flush()
}

func lines(b []byte) []string {
	if len(b) == 0 {
		return nil
	}
	return strings.Split(string(b[:len(b)-1]), "\n")
}

// splitHeader cuts after the header's empty line.
func splitHeader(ls []string) (header, entries []string) {
	for i, l := range ls {
		if l == "" {
			return ls[:i+1], ls[i+1:]
		}
	}
	return ls, nil
}

func headerKey(l string) string {
	k, _, _ := strings.Cut(l, " ")
	return k
}

// entryKey is an entry's path, unescaped so that it sorts as the manifest
// does; a line that is no entry sorts by itself, which only costs size.
func entryKey(l string) string {
	f := strings.SplitN(l, " ", 3)
	if len(f) < 2 {
		return l
	}
	p, err := Unescape(f[1])
	if err != nil {
		return f[1]
	}
	return p
}

// merge walks two runs of lines that are sorted by key (the header's keys
// in their fixed order, compared for equality only), pairing lines of
// equal key. Lines out of order still rebuild exactly.
func merge(e *deltaEmitter, base, target []string, key func(string) string, cmp func(a, b string) int) {
	i, j := 0, 0
	for i < len(base) || j < len(target) {
		switch {
		case i == len(base):
			e.insert(target[j])
			j++
		case j == len(target):
			e.skip()
			i++
		case base[i] == target[j]:
			e.copy()
			i, j = i+1, j+1
		default:
			kb, kt := key(base[i]), key(target[j])
			c := cmp(kb, kt)
			if c == 0 {
				e.change(base[i], target[j])
				i, j = i+1, j+1
			} else if c < 0 {
				e.skip()
				i++
			} else {
				e.insert(target[j])
				j++
			}
		}
	}
}

// deltaEmitter writes ops, folding runs of copies and skips into one line.
type deltaEmitter struct {
	w      *bufio.Writer
	run    byte // '=' or '-' while a run is open
	runLen int
}

func (e *deltaEmitter) flush() {
	if e.runLen > 0 {
		fmt.Fprintf(e.w, "%c%d\n", e.run, e.runLen)
	}
	e.run, e.runLen = 0, 0
}

func (e *deltaEmitter) count(op byte) {
	if e.run != op {
		e.flush()
		e.run = op
	}
	e.runLen++
}

func (e *deltaEmitter) copy() { e.count('=') }
func (e *deltaEmitter) skip() { e.count('-') }

func (e *deltaEmitter) insert(l string) {
	e.flush()
	e.w.WriteString("+" + l + "\n")
}

func (e *deltaEmitter) change(from, to string) {
	k := 0
	for k < len(from) && k < len(to) && from[k] == to[k] {
		k++
	}
	if k < 8 { // "~k " costs more than the prefix it saves
		e.skip()
		e.insert(to)
		return
	}
	e.flush()
	e.w.WriteString("~" + strconv.Itoa(k) + " " + to[k:] + "\n")
}

// ApplyDelta rebuilds a manifest from base and delta and streams it to w. It
// refuses, with an error wrapping ErrDelta, a delta whose base is not
// base's exact bytes, whose output would pass limit bytes, or whose output
// is not the file it names; w may then hold part of a wrong file, which the
// caller discards.
func ApplyDelta(base, delta io.Reader, w io.Writer, limit int64) (DeltaHeader, error) {
	d := bufio.NewReaderSize(delta, maxDeltaLine+1)
	h, err := readDeltaHeader(d)
	if err != nil {
		return h, err
	}
	if h.TargetSize > limit {
		return h, fmt.Errorf("%w: it rebuilds a manifest of %d bytes, over the limit of %d", ErrDelta, h.TargetSize, limit)
	}
	bh := sha256.New()
	b := bufio.NewReaderSize(io.TeeReader(base, bh), MaxLine+1)
	th := sha256.New()
	out := &limitWriter{w: io.MultiWriter(w, th), left: h.TargetSize}
	bw := bufio.NewWriter(out)
	nextBase := func() ([]byte, error) {
		l, err := b.ReadSlice('\n')
		if err == io.EOF && len(l) == 0 {
			return nil, fmt.Errorf("%w: it reads past the end of the base manifest", ErrDelta)
		}
		if err != nil {
			return nil, fmt.Errorf("%w: base manifest: %v", ErrDelta, err)
		}
		return l, nil
	}
	for n := 1; ; n++ {
		op, err := d.ReadSlice('\n')
		if err == io.EOF && len(op) == 0 {
			break
		}
		if err != nil {
			return h, fmt.Errorf("%w: op %d: %v", ErrDelta, n, err)
		}
		op = op[:len(op)-1]
		if len(op) == 0 {
			return h, fmt.Errorf("%w: op %d is empty", ErrDelta, n)
		}
		switch op[0] {
		case '=', '-':
			k, err := strconv.ParseUint(string(op[1:]), 10, 31)
			if err != nil || k == 0 || strconv.FormatUint(k, 10) != string(op[1:]) {
				return h, fmt.Errorf("%w: op %d: bad count %q", ErrDelta, n, op[1:])
			}
			for range k {
				l, err := nextBase()
				if err != nil {
					return h, err
				}
				if op[0] == '=' {
					bw.Write(l)
				}
			}
		case '+':
			bw.Write(op[1:])
			bw.WriteByte('\n')
		case '~':
			ks, rest, ok := bytes.Cut(op[1:], []byte(" "))
			k, err := strconv.ParseUint(string(ks), 10, 31)
			if !ok || err != nil || strconv.FormatUint(k, 10) != string(ks) {
				return h, fmt.Errorf("%w: op %d: bad prefix %q", ErrDelta, n, ks)
			}
			l, err := nextBase()
			if err != nil {
				return h, err
			}
			if k > uint64(len(l)-1) {
				return h, fmt.Errorf("%w: op %d: prefix of %d bytes from a line of %d", ErrDelta, n, k, len(l)-1)
			}
			bw.Write(l[:k])
			bw.Write(rest)
			bw.WriteByte('\n')
		default:
			return h, fmt.Errorf("%w: op %d: unknown op %q", ErrDelta, n, op[0])
		}
		if out.over {
			break
		}
	}
	if err := bw.Flush(); err != nil && !out.over {
		return h, err
	}
	if out.over {
		return h, fmt.Errorf("%w: it rebuilds more than the %d bytes it names", ErrDelta, h.TargetSize)
	}
	// The whole base is hashed, so a delta made from another file is
	// refused even where the lines it reads agree.
	if _, err := io.Copy(io.Discard, b); err != nil {
		return h, fmt.Errorf("%w: base manifest: %v", ErrDelta, err)
	}
	if Digest(bh.Sum(nil)) != h.Base {
		return h, fmt.Errorf("%w: it was made from another base manifest than this node's", ErrDelta)
	}
	if h.TargetSize != out.written || Digest(th.Sum(nil)) != h.Target {
		return h, fmt.Errorf("%w: the rebuilt manifest is not the one it names (%d bytes of %d)", ErrDelta, out.written, h.TargetSize)
	}
	return h, nil
}

func readDeltaHeader(d *bufio.Reader) (DeltaHeader, error) {
	var h DeltaHeader
	var ls [3]string
	for i := range ls {
		l, err := d.ReadSlice('\n')
		if err != nil || len(l) > 200 {
			return h, fmt.Errorf("%w: header line %d", ErrDelta, i+1)
		}
		ls[i] = string(l[:len(l)-1])
		if i == 0 && ls[0] != deltaMagic {
			return h, fmt.Errorf("%w: not a manifest delta", ErrDelta)
		}
	}
	base, ok := strings.CutPrefix(ls[1], "base ")
	if !ok {
		return h, fmt.Errorf("%w: no base", ErrDelta)
	}
	var err error
	if h.Base, err = ParseDigest(base); err != nil {
		return h, fmt.Errorf("%w: base: %v", ErrDelta, err)
	}
	f := strings.Split(ls[2], " ")
	if len(f) != 3 || f[0] != "target" {
		return h, fmt.Errorf("%w: no target", ErrDelta)
	}
	if h.Target, err = ParseDigest(f[1]); err != nil {
		return h, fmt.Errorf("%w: target: %v", ErrDelta, err)
	}
	size, err := parseUint(f[2], 63)
	if err != nil || size > MaxSize {
		return h, fmt.Errorf("%w: target size %q", ErrDelta, f[2])
	}
	h.TargetSize = int64(size)
	return h, nil
}

// limitWriter passes at most left bytes and notes an attempt at more.
type limitWriter struct {
	w       io.Writer
	left    int64
	written int64
	over    bool
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > l.left {
		l.over = true
		p = p[:l.left]
	}
	n, err := l.w.Write(p)
	l.left -= int64(n)
	l.written += int64(n)
	if err == nil && l.over {
		err = errors.New("manifest delta output over its size")
	}
	return n, err
}
