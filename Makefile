# Slim: per-connection container overlay networking. See README.md.
CARGO ?= cargo
PROFILE ?= release
TARGET := target/$(PROFILE)
LAB := $(TARGET)/slim-lab

.PHONY: all build deps test check unit e2e demo lab-up lab-down clean
.PHONY: bench bench-quick kmod vm-test vm-bench k8s-validate

all: build

## Debian packages the lab, tests and demo use (idempotent).
deps:
	./scripts/install-deps.sh

## Everything: router, preload library, lab, test programs.
build:
	$(CARGO) build --$(PROFILE) --workspace --all-targets

## Formatting and lints, as CI runs them.
check:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## Unit tests (no root, no lab).
unit:
	$(CARGO) test --$(PROFILE) --workspace --lib --bins

## Integration tests on the lab (root: network namespaces), one at a time; slim-oci under podman.
e2e: build
	$(CARGO) test --$(PROFILE) -p slim-lab --tests -- --test-threads=1
	$(CARGO) test --$(PROFILE) -p slim-oci --tests -- --test-threads=1

## The test command (README, CI): dependencies, build, lints, unit and lab tests, then secure
## mode in a QEMU guest (vm-test; the first run on a machine builds the test kernel, ~20 min).
test: deps build check unit e2e k8s-validate
	$(LAB) down
	./vm-tests/run.sh

## Build everything and run the main job on the local lab: iperf3 over host network,
## VXLAN overlay and Slim, side by side.
demo: deps build
	./scripts/demo.sh $(TARGET)

## Benchmark (root): host network, VXLAN overlay and Slim side by side on the lab, interleaved;
## a table on stdout, bench/results/latest.json and latest.png. Method: bench/README.md.
## BENCH_ARGS="--runtime podman": overlay and Slim inside podman containers (bench/README.md),
## with this checkout's root filesystem (built if needed).
BENCH_ROOTFS = $(if $(findstring podman,$(BENCH_ARGS)),r=$$(scripts/rootfs/build-rootfs.sh | tail -n1) && SLIM_ROOTFS=$$r)
bench: deps build
	$(BENCH_ROOTFS) $(TARGET)/slim-bench --restart-routers $(BENCH_ARGS)

## The same in under 3 minutes: 3 runs of about 1 s per cell, 4 modes.
bench-quick: deps build
	$(BENCH_ROOTFS) $(TARGET)/slim-bench --quick --restart-routers $(BENCH_ARGS)

## Secure mode: the cached CONFIG_RUST test kernel, slim_kern.ko against it, and the secure-mode
## tests inside a QEMU guest (TCG): the module, a stress test, the lab with --secure routers and
## real programs, the attack suite. The first run installs the toolchain and builds
## the kernel (~20 min on 2 cores); later runs reuse /var/cache/slim-kernel.
kmod:
	./scripts/kernel/build-kernel.sh
	$(MAKE) -C kmod-rs

vm-test:
	./vm-tests/run.sh

## Secure mode measured in the QEMU guest (about 25 min under TCG): slim-bench there with host
## network, overlay, Slim and Slim with the routers in secure mode, interleaved (one-client
## connection rate, nginx Connection: close, 1-byte request/response); writes
## bench/results/vm-latest.json and prints its table (bench/README.md, "In the QEMU guest").
vm-bench:
	./vm-tests/bench-run.sh

lab-up: build
	$(LAB) up

lab-down:
	$(LAB) down

clean:
	-$(LAB) down
	$(CARGO) clean

## Kubernetes manifests (deploy/kubernetes/) against the API schemas, offline (the tools are
## installed once into /var/cache/slim-venv), and routers run with the DaemonSet's capabilities.
k8s-validate: build
	./scripts/k8s-validate.sh --router-caps $(TARGET)

## The podman lab's root filesystem (slim-lab up --runtime podman): Debian packages via mmdebstrap,
## cached in /var/cache/slim-rootfs (~2 min the first time; the podman tests run it themselves).
.PHONY: rootfs
rootfs:
	./scripts/rootfs/build-rootfs.sh

## Install on this host (root): slim-router, slim-oci, the library, the systemd unit, and example
## configurations in /etc/slim (never overwritten). DESTDIR and PREFIX as usual. Then: edit
## /etc/slim/router.toml, create the cluster key, `systemctl enable --now slim-router`
## (docs/operations.md), and name slim-oci as a runtime of your engine (docs/containers.md).
PREFIX ?= /usr/local
SYSTEMD_DIR ?= /etc/systemd/system
.PHONY: install uninstall
install: build
	install -D -m 755 $(TARGET)/slim-router $(DESTDIR)$(PREFIX)/bin/slim-router
	install -D -m 755 $(TARGET)/slim-oci $(DESTDIR)$(PREFIX)/bin/slim-oci
	install -D -m 644 $(TARGET)/libslim_preload.so $(DESTDIR)$(PREFIX)/lib/slim/libslim_preload.so
	install -D -m 644 deploy/systemd/slim-router.service $(DESTDIR)$(SYSTEMD_DIR)/slim-router.service
	install -d -m 755 $(DESTDIR)/etc/slim
	[ -e $(DESTDIR)/etc/slim/router.toml ] || install -m 644 deploy/systemd/router.toml $(DESTDIR)/etc/slim/router.toml
	[ -e $(DESTDIR)/etc/slim/oci.toml ] || install -m 644 deploy/systemd/oci.toml $(DESTDIR)/etc/slim/oci.toml

## Remove what install put there; /etc/slim (your configuration and the cluster key) stays
## unless PURGE=1. Stop the service first (`systemctl disable --now slim-router`).
uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/slim-router $(DESTDIR)$(PREFIX)/bin/slim-oci
	rm -f $(DESTDIR)$(PREFIX)/lib/slim/libslim_preload.so
	-rmdir $(DESTDIR)$(PREFIX)/lib/slim 2>/dev/null
	rm -f $(DESTDIR)$(SYSTEMD_DIR)/slim-router.service
	if [ "$(PURGE)" = 1 ]; then rm -rf $(DESTDIR)/etc/slim; else echo "kept $(DESTDIR)/etc/slim (PURGE=1 removes it)"; fi
