package manifest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

const magic = "peerup-manifest"

const timeLayout = "2006-01-02T15:04:05Z"

// needsEscape lists the bytes that Escape writes as %XX: everything that is
// not printable ASCII, plus the field separator's neighbours '%' and '='.
func needsEscape(b byte) bool {
	return b <= ' ' || b >= 0x7f || b == '%' || b == '='
}

// Escape spells arbitrary bytes with printable ASCII and no spaces, so that
// any file name fits in one space-separated field. Each value has exactly one
// spelling.
func Escape(s string) string {
	n := 0
	for i := 0; i < len(s); i++ {
		if needsEscape(s[i]) {
			n++
		}
	}
	if n == 0 {
		return s
	}
	const hexdig = "0123456789ABCDEF"
	var b strings.Builder
	b.Grow(len(s) + 2*n)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if needsEscape(c) {
			b.WriteByte('%')
			b.WriteByte(hexdig[c>>4])
			b.WriteByte(hexdig[c&15])
		} else {
			b.WriteByte(c)
		}
	}
	return b.String()
}

// Unescape reverses Escape and rejects every other spelling.
func Unescape(s string) (string, error) {
	if strings.IndexByte(s, '%') < 0 {
		for i := 0; i < len(s); i++ {
			if needsEscape(s[i]) {
				return "", fmt.Errorf("%w: byte %#02x must be escaped", ErrFormat, s[i])
			}
		}
		return s, nil
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '%' {
			if needsEscape(c) {
				return "", fmt.Errorf("%w: byte %#02x must be escaped", ErrFormat, c)
			}
			b.WriteByte(c)
			continue
		}
		if i+2 >= len(s) {
			return "", fmt.Errorf("%w: truncated escape in %q", ErrFormat, s)
		}
		hi, lo := unhex(s[i+1]), unhex(s[i+2])
		if hi < 0 || lo < 0 {
			return "", fmt.Errorf("%w: bad escape %q (want %%XX with uppercase hex)", ErrFormat, s[i:i+3])
		}
		d := byte(hi<<4 | lo)
		if !needsEscape(d) {
			return "", fmt.Errorf("%w: needless escape %q", ErrFormat, s[i:i+3])
		}
		b.WriteByte(d)
		i += 2
	}
	return b.String(), nil
}

func unhex(c byte) int {
	switch {
	case '0' <= c && c <= '9':
		return int(c - '0')
	case 'A' <= c && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}

// parseUint accepts only canonical decimal: digits, no sign, no leading zero.
func parseUint(s string, bits int) (uint64, error) {
	if s == "" || (len(s) > 1 && s[0] == '0') {
		return 0, fmt.Errorf("%w: number %q is not canonical decimal", ErrFormat, s)
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, fmt.Errorf("%w: number %q is not canonical decimal", ErrFormat, s)
		}
	}
	v, err := strconv.ParseUint(s, 10, bits)
	if err != nil {
		return 0, fmt.Errorf("%w: number %q out of range", ErrFormat, s)
	}
	return v, nil
}

// orderChecker enforces the rules that span entries: depth-first order,
// uniqueness, parents listed before children as directories, and the totals.
// It keeps only the chain of open directories, so memory is bounded by depth.
type orderChecker struct {
	prev         string
	dirs         []string
	n            uint64
	files, bytes uint64
}

func (c *orderChecker) add(e *Entry) error {
	if err := e.Validate(); err != nil {
		return err
	}
	if c.n == 0 {
		if e.Path != "." {
			return errors.New("first entry must be the image root \".\"")
		}
	} else {
		if ComparePaths(c.prev, e.Path) >= 0 {
			return fmt.Errorf("not after %q in manifest order (sorted, unique)", c.prev)
		}
		parent := Parent(e.Path)
		for len(c.dirs) > 0 && c.dirs[len(c.dirs)-1] != parent {
			c.dirs = c.dirs[:len(c.dirs)-1]
		}
		if len(c.dirs) == 0 {
			return fmt.Errorf("parent %q is not a directory listed before it", parent)
		}
	}
	if c.n >= MaxEntries {
		return fmt.Errorf("more than %d entries", MaxEntries)
	}
	if e.Type == TypeDir {
		c.dirs = append(c.dirs, e.Path)
	}
	if e.Type == TypeFile {
		c.files++
		c.bytes += uint64(e.Size)
	}
	c.prev = e.Path
	c.n++
	return nil
}

func (c *orderChecker) finish(h *Header) error {
	if c.n != h.Entries || c.files != h.Files || c.bytes != h.Bytes {
		return fmt.Errorf("%w: totals say %d entries, %d files, %d bytes; found %d, %d, %d",
			ErrFormat, h.Entries, h.Files, h.Bytes, c.n, c.files, c.bytes)
	}
	return nil
}

func (h *Header) validate() error {
	if h.Format != FormatVersion {
		return fmt.Errorf("%w: format version %d, this peerup reads %d", ErrFormat, h.Format, FormatVersion)
	}
	if err := ValidImage(h.Image); err != nil {
		return fmt.Errorf("%w: %w", ErrFormat, err)
	}
	if h.Version == 0 {
		return fmt.Errorf("%w: version 0 (versions start at 1)", ErrFormat)
	}
	if h.Version > MaxVersion {
		return fmt.Errorf("%w: version %d is above the ceiling of %d (2^53): a version that high would leave no room for the next", ErrFormat, h.Version, uint64(MaxVersion))
	}
	if len(h.Label) > MaxLabel {
		return fmt.Errorf("%w: label longer than %d bytes", ErrFormat, MaxLabel)
	}
	if h.Entries == 0 {
		return fmt.Errorf("%w: no entries (the image root is required)", ErrFormat)
	}
	if !h.Expires.IsZero() && !h.Expires.After(h.Created) {
		return fmt.Errorf("%w: expires %s is not after created %s", ErrFormat, h.Expires.Format(timeLayout), h.Created.Format(timeLayout))
	}
	if err := checkFingerprints(h.KeysAdd); err != nil {
		return fmt.Errorf("%w: keys-add: %w", ErrFormat, err)
	}
	if err := checkFingerprints(h.KeysRevoke); err != nil {
		return fmt.Errorf("%w: keys-revoke: %w", ErrFormat, err)
	}
	return nil
}

// optionalHeader lists the header lines a manifest may have after "bytes",
// in the only order they may come.
var optionalHeader = []string{"expires", "keys-add", "keys-revoke"}

// AppendHeader appends the header's lines, including the blank line that
// ends it.
func appendHeader(b []byte, h *Header) []byte {
	b = fmt.Appendf(b, "%s %d\nimage %s\nversion %d\nlabel %s\ncreated %s\nentries %d\nfiles %d\nbytes %d\n",
		magic, h.Format, h.Image, h.Version, Escape(h.Label), h.Created.UTC().Format(timeLayout),
		h.Entries, h.Files, h.Bytes)
	if !h.Expires.IsZero() {
		b = fmt.Appendf(b, "expires %s\n", h.Expires.UTC().Format(timeLayout))
	}
	if len(h.KeysAdd) > 0 {
		b = fmt.Appendf(b, "keys-add %s\n", strings.Join(h.KeysAdd, " "))
	}
	if len(h.KeysRevoke) > 0 {
		b = fmt.Appendf(b, "keys-revoke %s\n", strings.Join(h.KeysRevoke, " "))
	}
	return append(b, '\n')
}

// AppendEntry appends one entry line.
// Same reports whether e and o are the same entry as a manifest spells
// them: path, type, metadata, size, hash, target and xattrs.
func (e *Entry) Same(o *Entry) bool {
	return bytes.Equal(appendEntry(nil, e), appendEntry(nil, o))
}

func appendEntry(b []byte, e *Entry) []byte {
	b = append(b, byte(e.Type), ' ')
	b = append(b, Escape(e.Path)...)
	b = fmt.Appendf(b, " %04o %d %d", e.Mode, e.UID, e.GID)
	switch e.Type {
	case TypeFile:
		b = fmt.Appendf(b, " %d %s", e.Size, e.SHA256)
	case TypeSymlink:
		b = append(b, ' ')
		b = append(b, Escape(e.Target)...)
	case TypeChar, TypeBlock:
		b = fmt.Appendf(b, " %d:%d", e.Major, e.Minor)
	}
	for _, x := range e.Xattrs {
		b = append(b, " x="...)
		b = append(b, Escape(x.Name)...)
		b = append(b, '=')
		b = append(b, Escape(string(x.Value))...)
	}
	return append(b, '\n')
}

// Writer writes a manifest entry by entry. The header, with its totals, is
// written first, so the caller knows the totals up front (see Totals).
type Writer struct {
	w   *bufio.Writer
	h   Header
	c   orderChecker
	buf []byte
}

// NewWriter writes h and returns a Writer for the entries.
func NewWriter(w io.Writer, h Header) (*Writer, error) {
	if h.Format == 0 {
		h.Format = FormatVersion
	}
	if err := h.validate(); err != nil {
		return nil, err
	}
	bw := bufio.NewWriterSize(w, 64<<10)
	if _, err := bw.Write(appendHeader(nil, &h)); err != nil {
		return nil, fmt.Errorf("write manifest header: %w", err)
	}
	return &Writer{w: bw, h: h}, nil
}

// Add writes one entry; entries must come in manifest order.
func (w *Writer) Add(e *Entry) error {
	if err := w.c.add(e); err != nil {
		return fmt.Errorf("%w: entry %q: %w", ErrFormat, e.Path, err)
	}
	w.buf = appendEntry(w.buf[:0], e)
	if _, err := w.w.Write(w.buf); err != nil {
		return fmt.Errorf("write manifest: %w", err)
	}
	return nil
}

// Close checks the totals and flushes.
func (w *Writer) Close() error {
	if err := w.c.finish(&w.h); err != nil {
		return err
	}
	if err := w.w.Flush(); err != nil {
		return fmt.Errorf("write manifest: %w", err)
	}
	return nil
}

// Totals fills h's entry, file and byte counts from entries.
func Totals(h *Header, entries []Entry) {
	h.Entries, h.Files, h.Bytes = uint64(len(entries)), 0, 0
	for i := range entries {
		if entries[i].Type == TypeFile {
			h.Files++
			h.Bytes += uint64(entries[i].Size)
		}
	}
}

// Marshal encodes m, computing the totals from its entries.
func (m *Manifest) Marshal() ([]byte, error) {
	h := m.Header
	Totals(&h, m.Entries)
	var buf bytes.Buffer
	w, err := NewWriter(&buf, h)
	if err != nil {
		return nil, err
	}
	for i := range m.Entries {
		if err := w.Add(&m.Entries[i]); err != nil {
			return nil, err
		}
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Reader parses a manifest as a stream. It checks every rule of the format,
// including the totals, before it reports io.EOF; a caller must read to
// io.EOF before trusting that the manifest was whole.
type Reader struct {
	r    *bufio.Reader
	h    Header
	c    orderChecker
	line int
	read int64
	done bool
}

// NewReader reads and checks the header.
func NewReader(r io.Reader) (*Reader, error) {
	mr := &Reader{r: bufio.NewReaderSize(r, MaxLine+1)}
	if err := mr.readHeader(); err != nil {
		return nil, err
	}
	return mr, nil
}

// Header returns the parsed header.
func (r *Reader) Header() Header { return r.h }

func (r *Reader) nextLine() (string, error) {
	b, err := r.r.ReadSlice('\n')
	r.read += int64(len(b))
	if r.read > MaxSize {
		return "", fmt.Errorf("%w: larger than %d bytes", ErrFormat, MaxSize)
	}
	switch {
	case err == bufio.ErrBufferFull:
		return "", fmt.Errorf("%w: line %d longer than %d bytes", ErrFormat, r.line+1, MaxLine)
	case err == io.EOF && len(b) > 0:
		return "", fmt.Errorf("%w: line %d: truncated (no newline)", ErrFormat, r.line+1)
	case err != nil:
		return "", err
	}
	r.line++
	return string(b[:len(b)-1]), nil
}

func (r *Reader) readHeader() error {
	keys := []string{magic, "image", "version", "label", "created", "entries", "files", "bytes"}
	vals := make([]string, len(keys))
	for i, k := range keys {
		line, err := r.nextLine()
		if err == io.EOF {
			return fmt.Errorf("%w: header ends before %q", ErrFormat, k)
		}
		if err != nil {
			return fmt.Errorf("read manifest header: %w", err)
		}
		name, val, ok := strings.Cut(line, " ")
		if !ok || name != k {
			if i == 0 {
				return fmt.Errorf("%w: not a peerup manifest (first line %.40q)", ErrFormat, line)
			}
			return fmt.Errorf("%w: line %d: want %q", ErrFormat, r.line, k)
		}
		vals[i] = val
	}
	h := &r.h
	next := 0 // index into optionalHeader of the first one still allowed
	for {
		line, err := r.nextLine()
		if err != nil {
			return fmt.Errorf("%w: header not followed by a blank line", ErrFormat)
		}
		if line == "" {
			break
		}
		name, val, _ := strings.Cut(line, " ")
		k := next
		for k < len(optionalHeader) && optionalHeader[k] != name {
			k++
		}
		if k == len(optionalHeader) {
			return fmt.Errorf("%w: line %d: %.40q where the header should end (a blank line), or an optional field out of order", ErrFormat, r.line, line)
		}
		next = k + 1
		switch name {
		case "expires":
			if h.Expires, err = time.Parse(timeLayout, val); err != nil || h.Expires.Format(timeLayout) != val {
				return fmt.Errorf("%w: expires %.40q is not YYYY-MM-DDTHH:MM:SSZ", ErrFormat, val)
			}
		case "keys-add":
			h.KeysAdd = strings.Split(val, " ")
		case "keys-revoke":
			h.KeysRevoke = strings.Split(val, " ")
		}
	}
	format, err := parseUint(vals[0], 16)
	if err != nil {
		return fmt.Errorf("format version: %w", err)
	}
	h.Format = int(format)
	if h.Format != FormatVersion {
		return fmt.Errorf("%w: format version %d, this peerup reads %d", ErrFormat, h.Format, FormatVersion)
	}
	h.Image = vals[1]
	if h.Version, err = parseUint(vals[2], 64); err != nil {
		return fmt.Errorf("version: %w", err)
	}
	if h.Label, err = Unescape(vals[3]); err != nil {
		return fmt.Errorf("label: %w", err)
	}
	if h.Created, err = time.Parse(timeLayout, vals[4]); err != nil || h.Created.Format(timeLayout) != vals[4] {
		return fmt.Errorf("%w: created %q is not YYYY-MM-DDTHH:MM:SSZ", ErrFormat, vals[4])
	}
	if h.Entries, err = parseUint(vals[5], 64); err != nil {
		return fmt.Errorf("entries: %w", err)
	}
	if h.Files, err = parseUint(vals[6], 64); err != nil {
		return fmt.Errorf("files: %w", err)
	}
	if h.Bytes, err = parseUint(vals[7], 64); err != nil {
		return fmt.Errorf("bytes: %w", err)
	}
	return h.validate()
}

// Next returns the next entry, or io.EOF after the last one once the totals
// have been checked. The returned Entry is the caller's to keep.
func (r *Reader) Next() (*Entry, error) {
	if r.done {
		return nil, io.EOF
	}
	line, err := r.nextLine()
	if err == io.EOF {
		if err := r.c.finish(&r.h); err != nil {
			return nil, err
		}
		r.done = true
		return nil, io.EOF
	}
	if err != nil {
		return nil, fmt.Errorf("read manifest: %w", err)
	}
	e, err := parseEntry(line)
	if err != nil {
		return nil, fmt.Errorf("line %d: %w", r.line, err)
	}
	if err := r.c.add(e); err != nil {
		return nil, fmt.Errorf("%w: line %d: entry %q: %w", ErrFormat, r.line, e.Path, err)
	}
	return e, nil
}

func parseEntry(line string) (*Entry, error) {
	f := strings.Split(line, " ")
	if len(f) < 5 || len(f[0]) != 1 {
		return nil, fmt.Errorf("%w: entry needs type, path, mode, uid, gid", ErrFormat)
	}
	e := &Entry{Type: Type(f[0][0])}
	var err error
	if e.Path, err = Unescape(f[1]); err != nil {
		return nil, fmt.Errorf("path: %w", err)
	}
	if len(f[2]) != 4 {
		return nil, fmt.Errorf("%w: mode %q is not 4 octal digits", ErrFormat, f[2])
	}
	mode, err := strconv.ParseUint(f[2], 8, 32)
	if err != nil || strings.ContainsAny(f[2], "+-_") {
		return nil, fmt.Errorf("%w: mode %q is not 4 octal digits", ErrFormat, f[2])
	}
	e.Mode = uint32(mode)
	uid, err := parseUint(f[3], 32)
	if err != nil {
		return nil, fmt.Errorf("uid: %w", err)
	}
	gid, err := parseUint(f[4], 32)
	if err != nil {
		return nil, fmt.Errorf("gid: %w", err)
	}
	e.UID, e.GID = uint32(uid), uint32(gid)
	rest := f[5:]
	need := 0
	switch e.Type {
	case TypeFile:
		need = 2
	case TypeSymlink, TypeChar, TypeBlock:
		need = 1
	case TypeDir, TypeFifo:
	default:
		return nil, fmt.Errorf("%w: unknown entry type %q", ErrFormat, f[0])
	}
	if len(rest) < need {
		return nil, fmt.Errorf("%w: %s entry %q lacks fields", ErrFormat, e.Type, e.Path)
	}
	switch e.Type {
	case TypeFile:
		size, err := parseUint(rest[0], 63)
		if err != nil {
			return nil, fmt.Errorf("size: %w", err)
		}
		e.Size = int64(size)
		if e.SHA256, err = ParseDigest(rest[1]); err != nil {
			return nil, err
		}
	case TypeSymlink:
		if e.Target, err = Unescape(rest[0]); err != nil {
			return nil, fmt.Errorf("symlink target: %w", err)
		}
	case TypeChar, TypeBlock:
		maj, min, ok := strings.Cut(rest[0], ":")
		if !ok {
			return nil, fmt.Errorf("%w: device %q is not MAJOR:MINOR", ErrFormat, rest[0])
		}
		a, err := parseUint(maj, 32)
		if err != nil {
			return nil, fmt.Errorf("device major: %w", err)
		}
		b, err := parseUint(min, 32)
		if err != nil {
			return nil, fmt.Errorf("device minor: %w", err)
		}
		e.Major, e.Minor = uint32(a), uint32(b)
	}
	for _, x := range rest[need:] {
		name, val, ok := strings.Cut(strings.TrimPrefix(x, "x="), "=")
		if !strings.HasPrefix(x, "x=") || !ok {
			return nil, fmt.Errorf("%w: unexpected field %.40q", ErrFormat, x)
		}
		var xa Xattr
		if xa.Name, err = Unescape(name); err != nil {
			return nil, fmt.Errorf("xattr name: %w", err)
		}
		v, err := Unescape(val)
		if err != nil {
			return nil, fmt.Errorf("xattr value: %w", err)
		}
		xa.Value = []byte(v)
		e.Xattrs = append(e.Xattrs, xa)
	}
	return e, nil
}

// Parse reads a whole manifest held in memory.
func Parse(b []byte) (*Manifest, error) { return ReadAll(bytes.NewReader(b)) }

// ReadAll reads a whole manifest into memory, for the publisher's tools
// that need every entry at once; a node streams entries with NewReader.
func ReadAll(rd io.Reader) (*Manifest, error) {
	r, err := NewReader(rd)
	if err != nil {
		return nil, err
	}
	m := &Manifest{Header: r.Header()}
	for {
		e, err := r.Next()
		if err == io.EOF {
			return m, nil
		}
		if err != nil {
			return nil, err
		}
		m.Entries = append(m.Entries, *e)
	}
}
