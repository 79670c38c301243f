# balloond: the commands a user and CI run. Each target installs what it needs first:
# system packages with apt-get (sudo when not root), Python packages into .venv, and the
# lab's guest image into .cache/lab.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMPS := .stamps
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Commands the lab and the tests need, and the Debian package that brings each.
SYSTEM_CMDS := qemu-system-x86_64:qemu-system-x86 busybox:busybox-static mosquitto:mosquitto \
               mosquitto_pub:mosquitto-clients cpio:cpio gcc:gcc systemd-analyze:systemd \
               stress-ng:stress-ng mkfs.ext4:e2fsprogs promtool:prometheus tmux:tmux \
               virsh:libvirt-clients pkg-config:pkg-config
DURATION ?= 60
# make soak: how long the soak runs, in minutes.
MINUTES ?= 10

.PHONY: help system venv image demo test test-fast test-stress soak lint bench bench-quick \
        bench-guests clean distclean

help:
	@echo "make demo    run balloond against three real lab guests (ends by itself, DURATION=$(DURATION)s)"
	@echo "make test    install what is missing, then run the whole test suite"
	@echo "make test-stress  the suite three times in a row with every core kept busy (stress-ng)"
	@echo "make soak    the daemon under injected faults for MINUTES=$(MINUTES) min -> a table"
	@echo "make lint    ruff, mypy (strict) and the import contracts (import-linter)"
	@echo "make bench   scale and policy-quality benchmarks -> benchmarks/RESULTS.md"
	@echo "make bench-guests  page cache and surges on real lab guests (about 30 min)"
	@echo "make clean   remove caches; distclean also removes .venv and the lab image"

# --- system packages -------------------------------------------------------------------
system: $(STAMPS)/system
$(STAMPS)/system:
	@missing=""; for pair in $(SYSTEM_CMDS); do cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$cmd >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
	[ -f /usr/include/stdlib.h ] || missing="$$missing libc6-dev"; \
	[ -f /usr/include/libvirt/libvirt.h ] || missing="$$missing libvirt-dev"; \
	[ -x /usr/sbin/libvirtd ] || missing="$$missing libvirt-daemon-system"; \
	$(PYTHON) -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"))' \
	  || missing="$$missing python3-dev"; \
	$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  echo "==> installing system packages:$$missing"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing \
	    || { echo "apt-get failed: install$$missing by hand" >&2; exit 1; }; \
	else echo "==> system packages present"; fi
	@mkdir -p $(STAMPS) && touch $@

# --- Python environment ----------------------------------------------------------------
venv: $(STAMPS)/venv
$(STAMPS)/venv: pyproject.toml | $(STAMPS)/system
	@echo "==> creating $(VENV) and installing balloond with its dev tools"
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[dev,bench,libvirt]'
	@# The test kit (testkit/: the lab, the QMP simulator, the demo) is not in the wheel;
	@# for development the checkout goes on the venv's path, so that it imports anywhere.
	@$(PY) -c 'import pathlib, sysconfig; pathlib.Path(sysconfig.get_paths()["purelib"], "balloond-testkit.pth").write_text("$(CURDIR)\n")'
	@mkdir -p $(STAMPS) && touch $@

# --- lab guest image (kernel + busybox initramfs + memhog), cached by its inputs --------
image: venv
	@$(PY) -m testkit.lab build

# --- the two commands ------------------------------------------------------------------
demo: image
	$(PY) -m testkit.demo --duration $(DURATION)

test: image
	@$(PY) -m pytest -q -p no:cacheprovider -m "not soak" $(PYTEST_ARGS)

# The tests that need no QEMU and no broker.
test-fast: venv
	@$(PY) -m pytest -q -p no:cacheprovider -m "not lab and not broker and not soak" $(PYTEST_ARGS)

# The suite must pass on a busy machine too: RUNS (3) runs while stress-ng loads every core.
test-stress: image
	@RUNS=$${RUNS:-3} PYTEST_ARGS="$(PYTEST_ARGS)" bash tools/test-stress.sh

# The daemon as its own process under injected faults; prints a table of its invariants.
soak: image
	@$(PY) -m pytest -q -p no:cacheprovider -s -m soak tests/test_soak.py --soak-minutes $(MINUTES) $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check balloond testkit tests benchmarks
	$(VENV)/bin/ruff format --check balloond testkit tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: venv
	$(PY) -m benchmarks.run

bench-quick: venv
	$(PY) -m benchmarks.run --quick

# Real lab guests (page cache, surges): too long for every `make bench`; RESULTS.md keeps
# the latest as its "Real guests" section.
bench-guests: image
	$(PY) -m benchmarks.guests

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) $(STAMPS) .cache
