# isolation: build, install, test, demo. See README.md.
VENV        ?= .venv
PY          := $(VENV)/bin/python
PREFIX      ?= /usr/local
LIBDIR      ?= $(PREFIX)/lib/isolation
CNI_BIN_DIR ?= /opt/cni/bin
SBINDIR     ?= $(PREFIX)/sbin
DESTDIR     ?=
BIN         := dist/isolation/isolation
SOURCES     := $(shell find plugin -name '*.py') build.spec

.PHONY: all deps build install uninstall test unit e2e demo bench bench-latency bench-scale clean

all: build

deps:
	bash hack/install-deps.sh

$(PY):
	@echo "no $(VENV): run 'make deps' (as root) first" >&2; exit 1

$(BIN): $(SOURCES) | $(PY)
	$(VENV)/bin/pyinstaller --noconfirm --clean --log-level WARN build.spec

build: $(BIN)

# The onedir bundle goes to $(LIBDIR); $(CNI_BIN_DIR)/isolation is a relative symlink
# to it, so the same tree works under any DESTDIR. The bundle is swapped in by rename
# so a plugin run during an upgrade never sees a half-copied bundle.
install: build
	install -d $(DESTDIR)$(dir $(LIBDIR)) $(DESTDIR)$(CNI_BIN_DIR)
	rm -rf $(DESTDIR)$(LIBDIR).new $(DESTDIR)$(LIBDIR).old
	cp -a dist/isolation $(DESTDIR)$(LIBDIR).new
	if [ -e $(DESTDIR)$(LIBDIR) ]; then mv $(DESTDIR)$(LIBDIR) $(DESTDIR)$(LIBDIR).old; fi
	mv $(DESTDIR)$(LIBDIR).new $(DESTDIR)$(LIBDIR)
	rm -rf $(DESTDIR)$(LIBDIR).old
	ln -sfnr $(DESTDIR)$(LIBDIR)/isolation $(DESTDIR)$(CNI_BIN_DIR)/isolation
	@# the admin commands (`isolation status`, ...) on root's PATH; never over a file of another's
	install -d $(DESTDIR)$(SBINDIR)
	@if [ -e $(DESTDIR)$(SBINDIR)/isolation ] && [ ! -L $(DESTDIR)$(SBINDIR)/isolation ]; then \
	  echo "install: $(DESTDIR)$(SBINDIR)/isolation exists and is not our link; left as it is" >&2; exit 1; fi
	ln -sfnr $(DESTDIR)$(LIBDIR)/isolation $(DESTDIR)$(SBINDIR)/isolation

uninstall:
	rm -f $(DESTDIR)$(CNI_BIN_DIR)/isolation
	if [ -L $(DESTDIR)$(SBINDIR)/isolation ]; then rm -f $(DESTDIR)$(SBINDIR)/isolation; fi
	rm -rf $(DESTDIR)$(LIBDIR)

# The whole suite: unit tests and end-to-end tests against the frozen binary (root).
# TESTS narrows it (pytest node ids), e.g. make test TESTS=tests/test_demo.py
test: build
	$(PY) -m pytest $(TESTS)

unit: | $(PY)
	$(PY) -m pytest -m "not e2e"

demo: deps
	$(MAKE) install
	bash hack/demo.sh

# The performance targets in one table (bench/targets.py runs cni_latency.py and
# scale.py); bench-latency and bench-scale run one each. iperf3 is a benchmark tool
# only, so not in `make deps`.
bench: build
	command -v iperf3 >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iperf3
	$(PY) bench/targets.py

bench-latency: build
	$(PY) bench/cni_latency.py

bench-scale: build
	command -v iperf3 >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iperf3
	$(PY) bench/scale.py

clean:
	rm -rf build dist .pytest_cache
