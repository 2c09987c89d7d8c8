# apiban for Kamailio: build, install, package, test.
#
#   make                  cargo build --release  (-> $(MODULE))
#   make install          build, then install it as $(DESTDIR)$(MODULES_DIR)/apiban.so, and make the
#                         state directory $(DESTDIR)$(STATE_DIR) for the sample config's snapshot_file
#   make uninstall        remove the module (the state directory and its snapshot stay)
#   make deb              a Debian package of the module (scripts/package-deb.sh)
#   make test             set up and run every test (scripts/test.sh)
#
# Overridable: MODULES_DIR (default: Debian's Kamailio module directory), STATE_DIR (default
# /var/lib/kamailio), KAMAILIO_USER (who owns it: the user Debian's kamailio.service runs the server
# as, default kamailio), DESTDIR (staging root), CARGO, CARGO_TARGET_DIR (where cargo builds),
# CARGO_FLAGS (e.g. --offline).
# The module must be built against the source of the Kamailio it is installed for (see README.md,
# "Building and installing"); `make install` does not check that, Kamailio does at load time.

MULTIARCH := $(shell dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
MODULES_DIR ?= /usr/lib/$(MULTIARCH)/kamailio/modules
STATE_DIR ?= /var/lib/kamailio
KAMAILIO_USER ?= kamailio
DESTDIR ?=

# rustup installs cargo in ~/.cargo/bin, which a root shell's PATH may lack.
CARGO ?= $(shell command -v cargo 2>/dev/null || echo $(HOME)/.cargo/bin/cargo)
CARGO_FLAGS ?= --locked
TARGET_DIR := $(if $(CARGO_TARGET_DIR),$(CARGO_TARGET_DIR),target)
MODULE := $(TARGET_DIR)/release/libapiban.so

INSTALL ?= install

.PHONY: all build install uninstall deb test clean

all: build

# cargo decides what is out of date (sources, the shim, the Kamailio tree build.rs reads).
build:
	$(CARGO) build --release $(CARGO_FLAGS)

install: build
	$(INSTALL) -d $(DESTDIR)$(MODULES_DIR)
	$(INSTALL) -m 0644 $(MODULE) $(DESTDIR)$(MODULES_DIR)/apiban.so
	@echo "installed $(DESTDIR)$(MODULES_DIR)/apiban.so: loadmodule \"apiban.so\" now finds it"
	@# The snapshot's directory, writable by the server's user only (an existing one keeps its mode).
	@if [ -d $(DESTDIR)$(STATE_DIR) ]; then :; else $(INSTALL) -d -m 0750 $(DESTDIR)$(STATE_DIR); fi
	@if id -u $(KAMAILIO_USER) >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		chown $(KAMAILIO_USER):$$(id -gn $(KAMAILIO_USER)) $(DESTDIR)$(STATE_DIR) && \
		echo "state directory $(DESTDIR)$(STATE_DIR): owned by $(KAMAILIO_USER), for snapshot_file"; \
	else \
		echo "state directory $(DESTDIR)$(STATE_DIR): make it writable by the user kamailio runs as" \
			"($(KAMAILIO_USER) not found, or not root)"; \
	fi

uninstall:
	rm -f $(DESTDIR)$(MODULES_DIR)/apiban.so
	@echo "kept $(DESTDIR)$(STATE_DIR) and the snapshot in it"

deb:
	bash scripts/package-deb.sh

test:
	bash scripts/test.sh

clean:
	$(CARGO) clean
