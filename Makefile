# peerup — the two commands a newcomer needs are `make demo` and `make test`.
GO      ?= go
BIN     := bin/peerup
# The boot step lives in the initramfs: static, stripped, on its own.
BOOTBIN := bin/peerup-boot
# Each fuzz target runs this long in `make test`; `make fuzz` runs them longer.
FUZZTIME ?= 5s
FUZZLONG ?= 10m

.PHONY: all build man install test unit crash vm test-vm fuzz-short fuzz demo bench deps vet clean

all: build

# -trimpath: two clones build the same binary. The commit is stamped into
# it (peerup --version) when built from a git checkout.
VCS := $(shell git rev-parse --git-dir >/dev/null 2>&1 && echo true || echo false)
# The release is debian/changelog's, one place for the package and the binary.
RELEASE := $(shell sed -n '1s/^[^(]*(\([^)]*\)).*/\1/p' debian/changelog)
build:
	$(GO) build -trimpath -buildvcs=$(VCS) -ldflags='-X main.release=$(RELEASE)' -o $(BIN) ./cmd/peerup
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w' -o $(BOOTBIN) ./cmd/peerup-boot

# Installs peerup as a Debian package would lay it out, under DESTDIR (a
# staging folder for packaging; empty: this machine). The units name
# /usr/bin/peerup, so the prefix is fixed. The config file is installed only
# if none is there, so a reinstall keeps an admin's settings.
DIST    := daemon/dist
# Manual pages from the commands' own help, dated by the last commit so that
# two builds of one commit make the same pages.
MANDIR := bin/man
EPOCH  := $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
man: build
	rm -rf $(MANDIR)
	SOURCE_DATE_EPOCH=$(EPOCH) $(BIN) man $(MANDIR)

install: build man
	install -Dm755 $(BIN) $(DESTDIR)/usr/bin/peerup
	install -Dm755 $(BOOTBIN) $(DESTDIR)/usr/bin/peerup-boot
	install -Dm644 $(DIST)/peerup.service $(DESTDIR)/usr/lib/systemd/system/peerup.service
	install -Dm644 $(DIST)/peerup-mark-good.service $(DESTDIR)/usr/lib/systemd/system/peerup-mark-good.service
	install -Dm644 $(DIST)/peerup-apply-on-shutdown.service $(DESTDIR)/usr/lib/systemd/system/peerup-apply-on-shutdown.service
	install -Dm644 $(DIST)/org.peerup.Updater1.conf $(DESTDIR)/usr/share/dbus-1/system.d/org.peerup.Updater1.conf
	install -Dm644 $(DIST)/org.peerup.Updater1.xml $(DESTDIR)/usr/share/dbus-1/interfaces/org.peerup.Updater1.xml
	install -Dm755 $(DIST)/initramfs-tools/hooks/peerup $(DESTDIR)/usr/share/initramfs-tools/hooks/peerup
	install -Dm755 $(DIST)/initramfs-tools/scripts/local-bottom/peerup $(DESTDIR)/usr/share/initramfs-tools/scripts/local-bottom/peerup
	test -e $(DESTDIR)/etc/peerup/peerup.toml || install -Dm644 $(DIST)/peerup.toml $(DESTDIR)/etc/peerup/peerup.toml
	install -d $(DESTDIR)/usr/share/man/man1
	install -m644 $(MANDIR)/*.1 $(DESTDIR)/usr/share/man/man1/

# Installs the real tools the tests drive (gpg, bsdiff, nginx, avahi, ...)
# from Debian's packages when run as root; tests that need a missing tool skip
# with a message saying which.
deps:
	@sh .ci/deps

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || { echo "gofmt needed on:"; gofmt -l .; exit 1; }
	$(GO) vet ./...

# Every package but the VM tests, which run on their own (below), and the
# power-loss model, which make crash runs (two minutes of loop mounts).
unit:
	$(GO) test -count=1 -timeout 15m -skip '^TestPowerLoss$$' $$($(GO) list ./... | grep -v /internal/vmtest$$)

# Real boots of peerup's boot pieces in a 256 MB QEMU guest made from
# Debian's packages (about 35 s a boot under TCG): the short set, with its
# figures (initramfs size, in-guest update memory, power cuts) in the log;
# the whole log is kept when it fails.
vm:
	@$(GO) test -count=1 -timeout 60m -v ./internal/vmtest > .vm.log 2>&1; st=$$?; \
	if [ $$st -ne 0 ]; then cat .vm.log; else grep -E 'initramfs:|in-guest update|power cuts:|boot time|round [0-9]+:|SKIP|^(ok|FAIL|--- )' .vm.log; fi; rm -f .vm.log; exit $$st

# The long set: 100 power cuts in two chains of 50 side by side (about
# 100 minutes on an idle 2-core machine), three probation boots.
test-vm: deps
	PEERUP_VM_LONG=1 $(GO) test -count=1 -timeout 240m -v ./internal/vmtest

# The crash-injection harness and the power-loss model (root: loop devices;
# ext4, and XFS with xfsprogs), run on their own so that their counts of
# crash and cut points show in the log; the whole log is kept when it fails.
crash:
	@$(GO) test -count=1 -run '^(TestCrashAtEveryStep|TestPowerLoss)$$' -v ./apply > .crash.log 2>&1; st=$$?; \
	if [ $$st -ne 0 ]; then cat .crash.log; else grep -E 'crash points|cut points|SKIP|^(ok|FAIL|---)' .crash.log; fi; rm -f .crash.log; exit $$st

# Runs every fuzz target briefly on top of its committed corpus.
fuzz-short:
	@sh .ci/fuzz $(FUZZTIME)

fuzz:
	@sh .ci/fuzz $(FUZZLONG)

# Unit tests last, so that go test's summary closes the log.
test: deps vet fuzz-short crash vm unit

demo: build
	$(GO) run ./cmd/peerup-demo --peerup $(BIN)

bench: deps build
	$(GO) run ./bench

clean:
	rm -rf bin
