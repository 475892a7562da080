# obd: see README.md. Every target works on a fresh clone (as root for the device tests).
GO        ?= go
BIN       := bin
GOFLAGS_STATIC := CGO_ENABLED=0
FUZZTIME  ?= 10s
PKGS      := ./...

.PHONY: all build test unit vet fuzz e2e bench bench-zfile bench-ublk bench-ublk-unstable ublk-suite-unstable demo clean

all: build

# The reference tools' names run obd with their command lines (see docs/usage.md).
REFTOOLS  := overlaybd-create overlaybd-commit overlaybd-zfile overlaybd-merge

build:
	$(GOFLAGS_STATIC) $(GO) build -trimpath -o $(BIN)/ ./cmd/...
	for t in $(REFTOOLS); do ln -sf obd $(BIN)/$$t; done

vet:
	@bad=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$bad" ]; then echo "gofmt needed: $$bad"; exit 1; fi
	$(GO) vet $(PKGS)
	@$(GO) mod tidy -diff || { echo "go.mod/go.sum not tidy: run go mod tidy"; exit 1; }

# Unit, golden, property and host end-to-end tests.
unit:
	$(GO) test -count=1 -timeout 20m $(PKGS)

# Every fuzz target for FUZZTIME each (longer: make fuzz FUZZTIME=10m).
fuzz:
	FUZZTIME=$(FUZZTIME) tests/fuzz-all.sh

# Real-kernel tests: boots a Debian kernel with ublk_drv under QEMU (installs what it needs).
e2e: build
	tests/e2e.sh

# The README's test command: everything CI runs.
test: vet unit fuzz e2e

bench: bench-zfile
	$(GO) test -run='^$$' -bench=. -count=1 $(PKGS)

# obd zfile -x and compression against a C baseline of the reference's codec (liblz4).
bench-zfile:
	tests/bench/zfile-x.sh

bench-ublk: build
	tests/vm/bench-ublk.sh

# The same on Debian unstable's kernel (7.2: ublk zero copy); manual, not in CI.
bench-ublk-unstable: build
	UBLKVM_SUITE=unstable tests/vm/bench-ublk.sh

ublk-suite-unstable: build
	UBLKVM_SUITE=unstable tests/vm/ublk-suite.sh

demo: build
	tests/demo.sh

clean:
	rm -rf $(BIN)
