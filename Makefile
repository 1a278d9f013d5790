# alephd — the two commands: `make run` and `make test`.
BUILD ?= build
ASAN_BUILD ?= build-asan
JOBS ?= 2
CMAKE_ARGS ?=
ARGS ?=

.PHONY: all deps build run test asan-test bench fuzz clean

all: build

deps:
	@scripts/install-deps

build: deps
	@cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_ARGS) > /dev/null
	@cmake --build $(BUILD) -j $(JOBS)

# Starts a local network: one CCN and three CRNs on 127.0.0.1 (Ctrl-C stops it).
run: build
	$(BUILD)/alephd dev $(ARGS)

# The sanitizer tree: clang (which builds it about a third faster than GCC), Debug, ASan+UBSan
# and libFuzzer's coverage. The fuzz harnesses of `make test` and the unit suites of
# `make asan-test` are built in it on the same libraries.
# A tree configured by GCC before (CMake would drop every other -D when the compiler changes) is
# made again.
ASAN_CONFIGURE = if [ -f $(ASAN_BUILD)/CMakeCache.txt ] && \
  ! grep -qs '^CMAKE_CXX_COMPILER:.*clang' $(ASAN_BUILD)/CMakeCache.txt; then rm -rf $(ASAN_BUILD); fi; \
  cmake -S . -B $(ASAN_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Debug \
  -DCMAKE_CXX_COMPILER=clang++ -DALEPHD_SANITIZE=ON -DALEPHD_FUZZ=ON $(CMAKE_ARGS) > /dev/null

# Builds and runs every test; each test has its own timeout. Then each libFuzzer harness runs
# for a short smoke time (built in the sanitizer tree).
test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)
	@$(ASAN_CONFIGURE)
	FUZZ_BUILD=$(ASAN_BUILD) scripts/fuzz --smoke

# Each libFuzzer harness for FUZZ_SECONDS (default 60).
FUZZ_SECONDS ?= 60
fuzz: deps
	scripts/fuzz $(FUZZ_SECONDS)

# The unit suites under AddressSanitizer and UndefinedBehaviorSanitizer.
asan-test: deps
	@$(ASAN_CONFIGURE)
	@cmake --build $(ASAN_BUILD) -j $(JOBS) --target unit-tests
	cd $(ASAN_BUILD) && ASAN_OPTIONS=detect_leaks=0 \
	  UBSAN_OPTIONS=suppressions=$(CURDIR)/ubsan_suppressions.txt:halt_on_error=1:print_stacktrace=1 \
	  ctest --output-on-failure -j $(JOBS) -L unit

bench: build
	@cmake --build $(BUILD) -j $(JOBS) --target benchmarks
	$(BUILD)/bench/intake_bench
	$(BUILD)/bench/sandbox_bench
	$(BUILD)/bench/crn_bench
	$(BUILD)/bench/storage_bench
	$(BUILD)/bench/ledger_bench
	ALEPHD_MICROVM_ASSETS=$(BUILD)/microvm $(BUILD)/bench/microvm_bench
	bench/sim-bench $(BUILD)/alephd
	bench/sim-in-process-bench $(BUILD)/alephd

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) build-fuzz
