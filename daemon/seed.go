package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/internal/fsutil"
	"github.com/peerup/peerup/manifest"
)

// Seed is a school server's daemon: it serves a repo (kept by `peerup
// publish` or `peerup mirror`) to the LAN and advertises its newest signed
// version, announcing each new one within moments of its publication. It
// needs no sysroot and no state of its own beyond a lock beside the repo
// and its fleet table (the laptops' status reports, SPEC.md §18).
type Seed struct {
	Addr  net.Addr
	srv   *http.Server
	disc  Discovery
	fleet *Fleet
	log   *slog.Logger
	wg    sync.WaitGroup
	stop  func()
	// stopFleet ends the fleet table's flushes once the server has stopped
	// taking reports.
	stopFleet func()
}

// StartSeed starts serving and advertising cfg.Repo.
func StartSeed(ctx context.Context, cfg Config, newDisc func(image string, version uint64, port int) (Discovery, error), log *slog.Logger) (*Seed, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg = cfg.WithDefaults()
	kr, err := manifest.LoadKeyring(cfg.Trust...)
	if err != nil {
		return nil, err
	}
	repo, err := blobstore.OpenRepo(cfg.Repo)
	if err != nil {
		return nil, err
	}
	unlock, err := fsutil.LockFile(repo.Layout().SeedLock())
	if err != nil {
		return nil, fmt.Errorf("%w: another peerup daemon seeds %s", ErrRunning, repo.Dir())
	}
	s := &Seed{stop: unlock, log: log}
	ok := false
	defer func() {
		if !ok {
			s.close()
		}
	}()
	image, v, err := seedLatest(repo, cfg.Image, kr)
	if err != nil {
		return nil, err
	}
	metrics := NewMetrics(nil)
	var advertised atomic.Uint64
	advertised.Store(v)
	metrics.watchSeed(image, &advertised)
	if s.fleet, err = OpenFleet(repo.Layout().FleetDB(), DefaultFleetLimits(), log); err != nil {
		return nil, err
	}
	ln, err := serveRepo(ctx, cfg, repo.Dir(), nil, metrics, s.fleet.Handler, &s.srv, &s.wg, log)
	if err != nil {
		return nil, err
	}
	fctx, stopFleet := context.WithCancel(context.WithoutCancel(ctx))
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.fleet.run(fctx)
	}()
	s.stopFleet = stopFleet
	s.Addr = ln.Addr()
	if newDisc != nil {
		if s.disc, err = newDisc(image, v, ln.Addr().(*net.TCPAddr).Port); err != nil {
			return nil, err
		}
	}
	// The rollout list is watched too: laptops waiting for a rollout to
	// reach them are woken when it is raised.
	rollout := newRolloutWatch(repo, image, kr)
	changes, err := watchFiles(ctx, repo.Layout().Index(), rollout.path())
	if err != nil {
		return nil, err
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for range changes {
			img, nv, err := seedLatest(repo, image, kr)
			if err != nil {
				log.Warn("repo changed but its newest version does not verify; still advertising the last good one", "err", err)
				continue
			}
			if nv > v && s.disc != nil {
				log.Info("advertising newly published version", "image", img, "version", nv)
				s.disc.VersionChanged(ctx, img, v, nv)
			} else if from := rollout.changed(v); from > 0 && s.disc != nil {
				log.Info("announcing a changed rollout to the laptops waiting for it", "image", img, "version", v, "from", from)
				s.disc.VersionChanged(ctx, img, from, v)
			}
			v = max(v, nv)
			advertised.Store(v)
		}
	}()
	log.Info("seeding", "repo", repo.Dir(), "image", image, "version", v, "addr", ln.Addr().String())
	ok = true
	return s, nil
}

// seedLatest is the repo's newest version of image whose manifest a trusted
// key signed: a seed never advertises anything unsigned.
func seedLatest(repo *blobstore.Repo, image string, kr *manifest.Keyring) (string, uint64, error) {
	ix, err := repo.ReadIndex()
	if err != nil {
		return "", 0, err
	}
	if image == "" {
		imgs := ix.Images()
		switch len(imgs) {
		case 0:
			return "", 0, nil
		case 1:
			image = imgs[0]
		default:
			return "", 0, fmt.Errorf("repo holds images %v; choose one with --image", imgs)
		}
	}
	for i := len(ix.Entries) - 1; i >= 0; i-- {
		e := ix.Entries[i]
		if e.Image != image {
			continue
		}
		mf, err := repo.OpenVersion(image, e.Version)
		if err != nil {
			return image, 0, err
		}
		// Expiry is left to the laptops, which check it when they install:
		// a seed whose newest version has expired still serves it.
		_, _, err = manifest.Accept(kr, mf.Signed(), manifest.Want{Image: image, Version: e.Version})
		mf.Close()
		if err != nil {
			return image, 0, err
		}
		return image, e.Version, nil
	}
	return image, 0, nil
}

// watchFiles reports when the index, or another of the repo's files, is
// replaced (publish and mirror rename new ones into place), from inotify
// rather than by polling. A file other than the index whose folder does
// not exist yet is not watched.
func watchFiles(ctx context.Context, index string, others ...string) (<-chan struct{}, error) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("watch %s: %w", index, err)
	}
	// The folder is watched, not the file: each publish renames a new
	// index over the old one, which a watch on the file would lose.
	if err := w.Add(filepath.Dir(index)); err != nil {
		w.Close()
		return nil, fmt.Errorf("watch %s: %w", index, err)
	}
	files := map[string]bool{index: true}
	for _, f := range others {
		if f != "" && w.Add(filepath.Dir(f)) == nil {
			files[f] = true
		}
	}
	out := make(chan struct{}, 1)
	go func() {
		defer close(out)
		defer w.Close()
		for {
			select {
			case <-ctx.Done():
				return
			case ev, ok := <-w.Events:
				if !ok {
					return
				}
				if files[ev.Name] && ev.Has(fsnotify.Create|fsnotify.Write) {
					select {
					case out <- struct{}{}:
					default:
					}
				}
			case _, ok := <-w.Errors:
				if !ok {
					return
				}
				// An overflowed queue may have lost the rename: look again.
				select {
				case out <- struct{}{}:
				default:
				}
			}
		}
	}()
	return out, nil
}

// Wait serves until ctx ends, then stops.
func (s *Seed) Wait(ctx context.Context) {
	<-ctx.Done()
	s.close()
}

func (s *Seed) close() {
	if s.srv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		s.srv.Shutdown(sctx)
		cancel()
	}
	if s.disc != nil {
		s.disc.Close()
	}
	if s.stopFleet != nil {
		s.stopFleet()
	}
	s.wg.Wait()
	if s.fleet != nil {
		if err := s.fleet.Close(); err != nil {
			s.log.Warn("fleet table", "err", err)
		}
	}
	s.stop()
}
