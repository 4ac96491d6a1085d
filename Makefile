# isolation: build, install, test, demo. See README.md.
VENV        ?= .venv
PY          := $(VENV)/bin/python
PREFIX      ?= /usr/local
LIBDIR      ?= $(PREFIX)/lib/isolation
CNI_BIN_DIR ?= /opt/cni/bin
SBINDIR     ?= $(PREFIX)/sbin
DESTDIR     ?=
BIN         := dist/isolation/isolation
VERSION     := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' plugin/__init__.py)
# Names the bundle's directory: the same build installs into the same one (idempotent),
# another build into a new one. `make install BUILD_ID=x` overrides it.
BUILD_ID    ?= $(shell find dist/isolation -type f -print0 2>/dev/null | LC_ALL=C sort -z | xargs -0r sha256sum | sha256sum | cut -c1-12)
SOURCES     := $(shell find plugin -name '*.py') build.spec

.PHONY: all deps build install deb image uninstall test unit e2e demo bench bench-latency bench-scale clean

all: build

deps:
	bash hack/install-deps.sh

$(PY):
	@echo "no $(VENV): run 'make deps' (as root) first" >&2; exit 1

$(BIN): $(SOURCES) | $(PY)
	$(VENV)/bin/pyinstaller --noconfirm --clean --log-level WARN build.spec

build: $(BIN)

# The onedir bundle goes to $(LIBDIR)/<version>-<build id>/ and $(LIBDIR)/current links to
# it; $(CNI_BIN_DIR)/isolation and $(SBINDIR)/isolation (the admin commands on root's PATH)
# are relative symlinks to current/isolation, so the same tree works under any DESTDIR.
# An upgrade swaps `current` by rename: a plugin started at any moment finds a whole bundle,
# and the previous one stays until the next upgrade (hack/install-bundle.sh). A file of
# another's in place of a link is never replaced.
install: build
	sh hack/install-bundle.sh dist/isolation $(DESTDIR)$(LIBDIR) $(VERSION)-$(BUILD_ID) \
	  $(DESTDIR)$(CNI_BIN_DIR)/isolation $(DESTDIR)$(SBINDIR)/isolation

# A Debian package of the bundle (hack/build-deb.sh); DEB_VERSION overrides the version.
DEB_VERSION ?= $(VERSION)
DEB_DIR     ?= dist
deb: build
	sh hack/build-deb.sh dist/isolation $(DEB_VERSION) $(DEB_DIR)

# The Kubernetes DaemonSet's image (deploy/Containerfile), built offline with podman.
IMAGE ?= localhost/isolation:$(VERSION)
image: build
	sh hack/build-image.sh dist/isolation $(IMAGE)

uninstall:
	if [ -L $(DESTDIR)$(CNI_BIN_DIR)/isolation ]; then rm -f $(DESTDIR)$(CNI_BIN_DIR)/isolation; fi
	if [ -L $(DESTDIR)$(SBINDIR)/isolation ]; then rm -f $(DESTDIR)$(SBINDIR)/isolation; fi
	rm -rf $(DESTDIR)$(LIBDIR)

# The whole suite: unit tests and end-to-end tests against the frozen binary (root).
# The pristine-root tests run beside the rest (hack/run-tests.sh). TESTS narrows it
# (pytest node ids), e.g. make test TESTS=tests/e2e/test_demo.py
test: build
	PY=$(PY) bash hack/run-tests.sh $(TESTS)

# tests/unit alone: in-process, no kernel, no frozen binary, seconds.
unit: | $(PY)
	$(PY) -m pytest tests/unit

# tests/e2e alone, the pristine-root tests beside the rest as in `make test`.
e2e: build
	PY=$(PY) SUITE=tests/e2e bash hack/run-tests.sh

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
