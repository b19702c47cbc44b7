package diff

import (
	"bufio"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
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
// it reads the next. One reader passes each member to its decode, finding
// where it ends by inflating it (memberReader), so no member's length is
// taken on trust. Concatenated members are what `gzip -9n` makes of each
// text alone, byte for byte: a member's deflate stream does not depend on
// those before it.
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

	mu sync.Mutex
	w  io.Writer // nil once the decode gave up: nothing more is written
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
	m := &memberReader{r: bufio.NewReaderSize(s.out, 32<<10)}
	var zr *gzip.Reader
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
			var err, broken error
			zr, err, broken = m.member(zr, job)
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

// memberReader reads gzip's output for a gzip.Reader, one member at a time,
// and passes on the compressed bytes the reader consumes: inflating the
// member is how its end is found, whatever its length, so a text cut short
// or a target of another size cannot shift the members after it. The
// gzip.Reader reads through ReadByte (this is a flate.Reader), so it takes
// nothing past the member's trailer.
type memberReader struct {
	r    *bufio.Reader
	job  *gzipJob
	buf  []byte // consumed, not yet passed on
	n    int64  // bytes of the member consumed
	sent bool   // some were passed on
	werr error
}

func (m *memberReader) ReadByte() (byte, error) {
	c, err := m.r.ReadByte()
	if err == nil {
		m.buf = append(m.buf, c)
		m.n++
		if len(m.buf) == cap(m.buf) {
			m.flush()
		}
	}
	return c, err
}

func (m *memberReader) Read(p []byte) (int, error) {
	n, err := m.r.Read(p)
	m.buf = append(m.buf, p[:n]...)
	m.n += int64(n)
	if len(m.buf) >= 32<<10 {
		m.flush()
	}
	return n, err
}

// flush passes what was consumed to the decode, at most its size: a member
// over it fails the decode, and the rest is still read, to find the next.
func (m *memberReader) flush() {
	if m.werr == nil && m.n > m.job.size {
		m.werr = fmt.Errorf("%w: recompressed text is over the declared %d bytes", ErrCorruptEncoding, m.job.size)
	}
	if m.werr == nil && len(m.buf) > 0 {
		m.werr = m.job.write(m.buf)
		m.sent = true
	}
	m.buf = m.buf[:0]
}

// member reads the next member for job and returns the job's result, or
// as broken why gzip's output cannot be read any further.
func (m *memberReader) member(zr *gzip.Reader, job *gzipJob) (_ *gzip.Reader, result, broken error) {
	m.job, m.n, m.sent, m.werr = job, 0, false, nil
	if m.buf == nil {
		m.buf = make([]byte, 0, 32<<10)
	}
	var err error
	if zr == nil {
		zr, err = gzip.NewReader(m)
	} else {
		err = zr.Reset(m)
	}
	if err == nil {
		zr.Multistream(false)
		_, err = io.Copy(io.Discard, zr)
	}
	if err != nil {
		m.buf = m.buf[:0]
		return zr, nil, err
	}
	m.flush()
	if job.abandon() {
		return zr, nil, nil // the decode gave up and reports its own error
	}
	if m.werr == nil && m.n != job.size {
		m.werr = fmt.Errorf("%w: recompressed text is %d bytes, want %d", ErrCorruptEncoding, m.n, job.size)
	}
	return zr, m.werr, nil
}

// gzipInSession writes what text gives to gzip in a session and the member
// it makes to w: at most size bytes. It returns errGzipSession, having
// written nothing, where the session could not tell this decode's output.
func (g *gzipSessions) gzipInSession(ctx context.Context, size int64, w io.Writer, text func(io.Writer) error) error {
	pw, job, err := g.join(ctx, size, w)
	if err != nil {
		return err
	}
	terr := text(pw)
	if terr == nil {
		terr = ctx.Err()
	}
	if terr != nil {
		// Nothing more reaches w once abandon returns, so the decode can
		// report its own error now; gzip compresses what it got into a
		// member the session skips.
		job.abandon()
		pw.Close()
		return terr
	}
	pw.Close()
	return <-job.result
}
