# The two commands of the README. Each sets up ./.venv on first use (scripts/bootstrap_env.sh).
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
export VENV

.PHONY: env demo test test-slow test-isa bench

env:
	@bash scripts/bootstrap_env.sh

# Main job: synthetic "shapes" dataset -> evaluate untrained -> train quick-start -> evaluate -> visualise.
demo: env
	@bash scripts/main_job.sh

# The test suite (slow and GPU-only tests are skipped; see pytest.ini).
test: env
	@bash scripts/run_tests.sh

# Also the tests marked slow (see pytest.ini); the default run already trains, kills and resumes.
test-slow: env
	@bash scripts/run_tests.sh --run-slow

# The numerics tests (marker "numerics") under each CPU instruction set and thread setting this
# machine supports (scripts/isa_matrix.py); ISA_SETTINGS="onednn-sse41 ..." runs only those.
test-isa: env
	@$(PY) scripts/isa_matrix.py $(if $(ISA_SETTINGS),--only $(ISA_SETTINGS))

# Every benchmark under benchmarks/ on this machine's CPU; each updates its row of BENCHMARKS.md.
bench: env
	@bash scripts/run_benchmarks.sh
