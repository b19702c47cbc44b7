package diff

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"time"
)

// A security update brings hundreds of small gzip files (man pages,
// changelogs), and starting gzip costs three times what compressing one of
// them does: 1.6 ms of exec, dynamic loading and exit against 0.5 ms of
// deflate. So a pull's gz decodes share gzip processes. A session is one
// `gzip -9n -c -f /dev/fd/3 … /dev/fd/N` whose arguments are pipes: each
// decode takes the next pipe, writes its text into it and closes it, and
// gzip compresses them in order, each into its own member, flushed before
// it reads the next. One reader passes each member to its decode. An
// honest member is exactly the target's size, so the reader takes that
// many bytes and checks that they end in the trailer (CRC-32 and length)
// of the text the decode wrote; a member whose decode gave up before it
// began is inflated to find its end (memberReader). Concatenated members
// are what `gzip -9n` makes of each text alone, byte for byte: a member's
// deflate stream does not depend on those before it.
//
// Whatever fails in a session fails only the decodes it must: a decode
// whose own text fails (cut short, over its size) ends with its error and
// its member is skipped; if gzip's output stops being gzip (it died), the
// decodes still waiting, none of whose output went out, run again with a
// gzip of their own.

// MaxGzipProcesses is how many gzip processes a Decoder runs at once: a
// session taking new decodes, and one finishing those it took. Their memory
// (GzipProcessMemory each) is the decoder's, not any one decode's.
const MaxGzipProcesses = 2

const (
	// gzipSessionSlots is how many texts one gzip process takes.
	gzipSessionSlots = 64
	// gzipSessionIdle ends a session no decode has joined for this long,
	// so no gzip waits on pipes after a pull has moved on.
	gzipSessionIdle = 50 * time.Millisecond
)

// errGzipSession is a decode a session could not finish for reasons not of
// its own: nothing of it was written, and it may run alone.
var errGzipSession = errors.New("the shared gzip's output ended or is not gzip")

// gzipSessions hands out the slots of the current session.
type gzipSessions struct {
	mu      sync.Mutex
	cur     *gzipSession
	procs   chan struct{} // a token per running gzip: MaxGzipProcesses
	started int           // gzip processes, for the tests
}

type gzipSession struct {
	owner  *gzipSessions
	cmd    *exec.Cmd
	out    io.ReadCloser
	slots  []*os.File // write ends, by member; nil once handed out or closed
	next   int
	sealed bool
	jobs   chan *gzipJob // in member order; closed when sealed
}

type gzipJob struct {
	size   int64
	result chan error

	mu   sync.Mutex
	w    io.Writer // nil once the decode gave up: nothing more is written
	done bool      // the text went to gzip, whole or cut short: crc and n are set
	crc  uint32    // CRC-32 of the text, as a member's trailer holds it
	n    int64     // the text's length
}

// wrote records what the decode's text was, just before its pipe closes:
// its end, whole or cut short.
func (j *gzipJob) wrote(crc uint32, n int64) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.done, j.crc, j.n = true, crc, n
}

// text is the CRC-32 and length of the decode's text once its pipe is
// about to close (ok false until then).
func (j *gzipJob) text() (crc uint32, n int64, ok bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.crc, j.n, j.done
}

// write passes p to the decode's writer unless the decode has given up.
func (j *gzipJob) write(p []byte) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.w == nil {
		return errors.New("decode abandoned")
	}
	_, err := j.w.Write(p)
	return err
}

// abandon stops all writes to the decode's writer, once any running one
// has returned, and reports whether the decode had given up before.
func (j *gzipJob) abandon() bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	gone := j.w == nil
	j.w = nil
	return gone
}

// join gives a decode the write end of the next pipe of a session, and the
// job through which the session reports its member. A new session waits
// while MaxGzipProcesses gzips run: sealed ones end once the decodes in
// them have, which never wait for this one.
func (g *gzipSessions) join(ctx context.Context, size int64, w io.Writer) (*os.File, *gzipJob, error) {
	g.mu.Lock()
	if g.procs == nil {
		g.procs = make(chan struct{}, MaxGzipProcesses)
	}
	procs := g.procs
	for g.cur == nil {
		g.mu.Unlock()
		select {
		case procs <- struct{}{}:
		case <-ctx.Done():
			return nil, nil, context.Cause(ctx)
		}
		g.mu.Lock()
		if g.cur != nil { // another decode started one meanwhile
			<-procs
			break
		}
		s, err := startGzipSession(g)
		if err != nil {
			<-procs
			g.mu.Unlock()
			return nil, nil, err
		}
		g.cur = s
		g.started++
	}
	defer g.mu.Unlock()
	s := g.cur
	job := &gzipJob{size: size, w: w, result: make(chan error, 1)}
	pw := s.slots[s.next]
	s.slots[s.next] = nil
	s.next++
	s.jobs <- job // buffered for every slot: never blocks
	if s.next == len(s.slots) {
		s.sealLocked()
	}
	return pw, job, nil
}

// close ends the current session: its unused pipes are closed, so gzip
// finishes once the decodes in it have.
func (g *gzipSessions) close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.cur != nil {
		g.cur.sealLocked()
	}
}

func startGzipSession(owner *gzipSessions) (*gzipSession, error) {
	path, err := exec.LookPath("gzip")
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNoGzip, err)
	}
	s := &gzipSession{owner: owner, jobs: make(chan *gzipJob, gzipSessionSlots)}
	args := []string{"-9n", "-c", "-f"} // -f: gzip reads pipes only when forced
	var reads []*os.File
	closeAll := func() {
		for _, f := range append(reads, s.slots...) {
			if f != nil {
				f.Close()
			}
		}
	}
	for i := range gzipSessionSlots {
		r, w, err := os.Pipe()
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("gzip session: %w", err)
		}
		reads, s.slots = append(reads, r), append(s.slots, w)
		args = append(args, "/dev/fd/"+strconv.Itoa(3+i))
	}
	s.cmd = exec.Command(path, args...)
	s.cmd.ExtraFiles = reads
	if s.out, err = s.cmd.StdoutPipe(); err == nil {
		err = s.cmd.Start()
	}
	for _, r := range reads {
		r.Close() // gzip holds them now
	}
	if err != nil {
		for _, w := range s.slots {
			w.Close()
		}
		return nil, fmt.Errorf("gzip session: %w", err)
	}
	go s.dispatch()
	return s, nil
}

// sealLocked takes no more decodes and closes the unused pipes. The owner's
// lock is held.
func (s *gzipSession) sealLocked() {
	if s.sealed {
		return
	}
	s.sealed = true
	if s.owner.cur == s {
		s.owner.cur = nil
	}
	close(s.jobs)
	for i, w := range s.slots {
		if w != nil {
			w.Close()
			s.slots[i] = nil
		}
	}
}

// dispatch passes each member to its decode, in order, then lets gzip end.
func (s *gzipSession) dispatch() {
	idle := time.NewTimer(gzipSessionIdle)
	defer idle.Stop()
	m := &memberReader{r: s.out}
	aligned := true
	for {
		var job *gzipJob
		select {
		case j, ok := <-s.jobs:
			if !ok {
				io.Copy(io.Discard, s.out) // what is left: the unused pipes' empty members
				s.cmd.Wait()
				<-s.owner.procs
				return
			}
			job = j
		case <-idle.C:
			s.seal()
			continue
		}
		if aligned {
			err, broken := m.member(job)
			if broken != nil {
				// gzip's output is not gzip: it died, or wrote something
				// else. The decodes after this one run alone, and so does
				// this one if none of its output went out.
				aligned = false
				s.seal()
				err = errGzipSession
				if m.sent {
					err = fmt.Errorf("%w: gzip -9n: %w", ErrCorruptEncoding, broken)
				}
			}
			job.result <- err
		} else {
			job.result <- errGzipSession
		}
		idle.Reset(gzipSessionIdle)
	}
}

func (s *gzipSession) seal() {
	s.owner.mu.Lock()
	s.sealLocked()
	s.owner.mu.Unlock()
}

// memberReader reads gzip's output one member at a time and passes each
// to its decode. A member ends in a trailer of its text's CRC-32 and
// length, which the decode recorded (gzipJob.wrote) before closing its
// pipe, so before gzip could write the trailer: the reader finds a
// member's end by looking for that trailer, whatever the member's length,
// without inflating it (inflating took more CPU than the rest of the gz
// decodes). A text cut short or a target of another size therefore cannot
// shift the members after it. Bytes read past a member's end are kept for
// the next.
type memberReader struct {
	r       io.Reader
	buf     []byte // read from r
	pending []byte // read, and the next member's
	look    []byte // the last bytes of a member, and the chunk after them
	n       int64  // bytes of the member passed on or refused
	sent    bool   // some were passed on
	werr    error
}

// trailerLen is a gzip member's trailer: CRC-32 and length mod 2^32.
const trailerLen = 8

// next returns the next bytes of gzip's output, those kept first.
func (m *memberReader) next() ([]byte, error) {
	if len(m.pending) > 0 {
		b := m.pending
		m.pending = nil
		return b, nil
	}
	if m.buf == nil {
		m.buf = make([]byte, 32<<10)
	}
	k, err := m.r.Read(m.buf)
	if k > 0 {
		return m.buf[:k], nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return nil, err
}

// pass gives the decode what of b is within its size; a member over it
// fails the decode, and the rest is still read, to find the next.
func (m *memberReader) pass(job *gzipJob, b []byte) {
	if m.werr == nil && m.n+int64(len(b)) > job.size {
		m.werr = fmt.Errorf("%w: recompressed text is over the declared %d bytes", ErrCorruptEncoding, job.size)
	}
	if m.werr == nil && len(b) > 0 {
		m.werr = job.write(b)
		m.sent = true
	}
	m.n += int64(len(b))
}

// trailerAt is where trailer t first ends a member in b, or -1. A trailer
// that overlaps itself (that of an empty text is 8 zero bytes, after a
// deflate stream ending in a zero byte) can match a few bytes early; of
// overlapping matches the last is the trailer. gzip writes a member's end
// in one write, so the bytes that tell are there.
func trailerAt(b, t []byte) int {
	i := bytes.Index(b, t)
	if i < 0 {
		return -1
	}
	for moved := true; moved; {
		moved = false
		for k := 1; k < len(t) && i+k+len(t) <= len(b); k++ {
			if bytes.Equal(b[i+k:i+k+len(t)], t) {
				i, moved = i+k, true
				break
			}
		}
	}
	return i
}

// member reads the next member for job and returns the job's result, or
// as broken why gzip's output cannot be read any further (gzip died).
func (m *memberReader) member(job *gzipJob) (result, broken error) {
	m.n, m.sent, m.werr = 0, false, nil
	m.look = m.look[:0]
	for {
		b, err := m.next()
		if err != nil {
			return nil, fmt.Errorf("output ends %d bytes into a member: %w", m.n, noEOF(err))
		}
		if crc, n, ok := job.text(); ok {
			var t [trailerLen]byte
			binary.LittleEndian.PutUint32(t[:4], crc)
			binary.LittleEndian.PutUint32(t[4:], uint32(n))
			// The trailer may straddle reads: search the member's last
			// bytes so far with this chunk.
			kept := len(m.look)
			m.look = append(m.look, b...)
			if i := trailerAt(m.look, t[:]); i >= 0 {
				end := i + trailerLen - kept
				m.pass(job, b[:end])
				if end < len(b) {
					m.pending = append([]byte(nil), b[end:]...)
				}
				break
			}
			m.look = append(m.look[:0], m.look[max(0, len(m.look)-(trailerLen-1)):]...)
		} else {
			// No trailer can come before the text has ended; keep the
			// member's last bytes for when it has.
			m.look = append(m.look, b...)
			m.look = append(m.look[:0], m.look[max(0, len(m.look)-(trailerLen-1)):]...)
		}
		m.pass(job, b)
	}
	if job.abandon() {
		return nil, nil // the decode gave up and reports its own error
	}
	if m.werr == nil && m.n != job.size {
		m.werr = fmt.Errorf("%w: recompressed text is %d bytes, want %d", ErrCorruptEncoding, m.n, job.size)
	}
	return m.werr, nil
}

// textWriter passes a decode's text to gzip, taking its CRC-32 and length
// on the way for the member's trailer (memberReader.sized).
type textWriter struct {
	w   io.Writer
	crc uint32
	n   int64
}

func (t *textWriter) Write(p []byte) (int, error) {
	k, err := t.w.Write(p)
	t.crc = crc32.Update(t.crc, crc32.IEEETable, p[:k])
	t.n += int64(k)
	return k, err
}

// gzipInSession writes what text gives to gzip in a session and the member
// it makes to w: at most size bytes. It returns errGzipSession, having
// written nothing, where the session could not tell this decode's output.
func (g *gzipSessions) gzipInSession(ctx context.Context, size int64, w io.Writer, text func(io.Writer) error) error {
	pw, job, err := g.join(ctx, size, w)
	if err != nil {
		return err
	}
	tw := &textWriter{w: pw}
	terr := text(tw)
	if terr == nil {
		terr = ctx.Err()
	}
	if terr != nil {
		// Nothing more reaches w once abandon returns, so the decode can
		// report its own error now; gzip compresses what it got into a
		// member the session skips, found by its trailer like any other.
		job.abandon()
		job.wrote(tw.crc, tw.n)
		pw.Close()
		return terr
	}
	job.wrote(tw.crc, tw.n)
	pw.Close()
	return <-job.result
}
