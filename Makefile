# Every target bootstraps .venv from constraints.txt (the one place that holds versions) on first use.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-builtin-rules

PYTHON ?= python3
VENV ?= .venv
PRESET ?= smoke
RESULTS_DIR ?= results
MLFLOW_PORT ?= 5000
PYTEST_ARGS ?=
# make test / test-fast run the suite on this many pytest-xdist workers: much of a run is waiting
# (Ray and MLflow start-up, SLURM scheduling, sleeps), so two overlap well even on 2 cores. Test
# files that share an expensive fixture stay on one worker (tests/conftest.py). 0: one process.
TEST_WORKERS ?= 2
parallel = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadgroup)
# the offline cache (model, tokenizer, dataset, tokenized data) that make prepare fills and runs read
CACHE_DIR ?= $(RESULTS_DIR)/.cache
# extra `python -m harness run/prepare` flags, e.g. HARNESS_ARGS="--set data.train_samples=200"
HARNESS_ARGS ?=
# bench-<strategy>: one run per seed (SEEDS="0 1 2"); empty runs the preset's own seed. bench-all and
# controls: every strategy per seed in one driver; empty SEEDS there means 0 1 2 3 4 5, the fewest seeds
# with which an exact paired test can decide at alpha = 0.05
SEEDS ?=
# SLURM submission (make submit-pbt, submit-manual): what each node job asks for (the seed's node:
# Cnode=20, Gnode=8, Csys=2 on every node), how many worker jobs join, and the image the jobs run in
SUBMIT_PRESET ?= seed
NUM_WORKERS ?= 1
CPUS_PER_NODE ?= 20
GPUS_PER_NODE ?= 8
SYSTEM_CPUS ?= 2
SBATCH_ARGS ?=
SIF ?= harness.sif
# jobs: the head job submits NUM_WORKERS worker jobs (sbatch inside a job); allocation: one job of
# NUM_WORKERS + 1 nodes whose other nodes join through srun (no sbatch inside the job)
LAUNCH ?= jobs
# make soak: the fault schedule's seed and how many faults (tools/soak.py --help for the rest)
SEED ?= 0
FAULTS ?= 20
PY ?= $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help venv gpu-bundle gpu-check prepare resume strategies tasks bench-all bench-cpu bench-peer compare controls calibrate simulate test test-fast test-unit bench soak mlflow-ui test-slurm lock container container-lint clean
# bench-<strategy> and submit-<strategy> are pattern rules: one per registered strategy, no file behind them

help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_%-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  %-18s %s\n", $$1, $$2}'
	@echo "  variables: PRESET=$(PRESET) RESULTS_DIR=$(RESULTS_DIR) SEEDS="$(SEEDS)" LR_LOWER LR_UPPER BS_CHOICES WD_CHOICES"

$(STAMP): constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	@# torch first and alone: a later `torch` requirement with no torch installed pulls a CUDA build of several GB
	$(PY) -m pip install --quiet -c constraints.txt torch
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	@# DeepSpeed compiles against the torch above (no build isolation, no ops now) and pulls no other
	DS_BUILD_OPS=0 $(PY) -m pip install --quiet --no-build-isolation -c constraints.txt deepspeed
	touch $@

venv: $(STAMP) ## create/refresh the virtual environment (.venv) from constraints.txt

# one `python -m harness run` per seed in SEEDS (or one with the preset's seed)
seed_flag = $(if $(filter preset,$(1)),,--seed $(1))
run_seeds = $(foreach seed,$(or $(SEEDS),preset),HARNESS_CACHE="$(CACHE_DIR)" $(PY) -m harness run --strategy $(1) --preset $(PRESET) --results-dir $(RESULTS_DIR) $(call seed_flag,$(seed)) $(HARNESS_ARGS) &&) true

prepare: $(STAMP) ## fill CACHE_DIR for PRESET (and SEEDS) where there is network: model, tokenizer, dataset, tokenized data; verified offline
	$(foreach seed,$(or $(SEEDS),preset),HARNESS_CACHE="$(CACHE_DIR)" $(PY) -m harness prepare --preset $(PRESET) $(call seed_flag,$(seed)) $(HARNESS_ARGS) &&) true

strategies: $(STAMP) ## list the registered strategies (each has bench-<name> and submit-<name>)
	@$(PY) -m harness strategies --describe

bench-%: $(STAMP) ## run strategy % on PRESET (smoke: local Ray, sqlite MLflow, tiny offline model), once per seed in SEEDS
	$(call run_seeds,$*)

# bench-peer: transformers' own PBT (Trainer.hyperparameter_search(backend="ray")) against the harness's bench-pbt,
# same model, data, population and settings, for each seed in PEER_SEEDS and each peer variant in PEER_VARIANTS
PEER_SEEDS ?= 0 1 2
PEER_VARIANTS ?= defaults reuse_actors
# (each seed's smoke cache is made first where it is missing, outside both sides' wall time; HARNESS_ARGS: --set only)
bench-peer: $(STAMP) ## HF's hyperparameter_search PBT vs the harness (smoke, PEER_SEEDS x PEER_VARIANTS): wall, loss, lr restores; RESULTS_DIR/peer
	HARNESS_CACHE="$(CACHE_DIR)" $(PY) tools/peer.py --seeds $(PEER_SEEDS) --variants $(PEER_VARIANTS) --cache "$(CACHE_DIR)" --out $(RESULTS_DIR)/peer $(HARNESS_ARGS)

resume: $(STAMP) ## continue the run in RUN=<run folder> after a crash, a kill or a stop before a time limit (same MLflow runs)
	@[[ -n "$(RUN)" ]] || { echo "error: RUN= is empty; give the run folder, e.g. make resume RUN=results/pbt-smoke-20261128-201222" >&2; exit 2; }
	HARNESS_CACHE="$(CACHE_DIR)" $(PY) -m harness run --resume "$(RUN)" $(HARNESS_ARGS)

tasks: $(STAMP) ## list the registered tasks (what a trial trains; PRESET=<task> runs one on its own defaults)
	@$(PY) -m harness tasks --describe

bench-all: $(STAMP) ## every registered strategy x every seed in SEEDS (default 0..5), in one driver and one Ray session
	HARNESS_CACHE="$(CACHE_DIR)" $(PY) -m harness bench --preset $(PRESET) --results-dir $(RESULTS_DIR) $(if $(SEEDS),--seeds "$(SEEDS)") $(HARNESS_ARGS)

bench-cpu: ## the compute-dominated CPU comparison: real SQuAD text, a wider tiny BLOOM (PRESET=cpu)
	$(MAKE) bench-all compare PRESET=cpu

compare: $(STAMP) ## compare the newest run of each strategy and seed of PRESET in RESULTS_DIR (or RUNS="dir dir ...")
	$(PY) -m harness compare $(if $(RUNS),$(RUNS),--latest $(RESULTS_DIR) --preset $(PRESET)) --out $(RESULTS_DIR)/comparison-$$(date +%Y%m%d-%H%M%S) --ui-port $(MLFLOW_PORT)

# the known-answer controls (torch-free tasks, harness/tasks/): every strategy x SEEDS on each, then its comparison
CONTROLS ?= pbt_control null_control
controls: $(STAMP) ## the positive and negative controls at SEEDS (default 0..5), each compared: PBT must be better, then nothing may be
	for task in $(CONTROLS); do \
	  $(PY) -m harness bench --preset $$task --results-dir $(RESULTS_DIR)/controls/$$task $(if $(SEEDS),--seeds "$(SEEDS)") $(HARNESS_ARGS) && \
	  $(PY) -m harness compare --latest $(RESULTS_DIR)/controls/$$task --preset $$task --out $(RESULTS_DIR)/controls/$$task/comparison-$$(date +%Y%m%d-%H%M%S) --ui-port $(MLFLOW_PORT) || exit $$?; \
	done

# calibration: POOL seeds of every strategy on each control, REPS comparisons of 6 seeds drawn from them
POOL ?= 24
REPS ?= 200
calibrate: $(STAMP) ## how often the verdicts decide on the controls (false positives <= alpha, power >= 80%); runs are kept and reused
	for task in $(CONTROLS); do \
	  $(PY) -m harness calibrate --preset $$task --results-dir $(RESULTS_DIR)/calibrate/$$task --pool $(POOL) --reps $(REPS) --no-mlflow $(HARNESS_ARGS) || exit $$?; \
	done

# the simulator: every finished run of PRESET in RESULTS_DIR replayed (own costs, held-out seeds, other slot
# counts; local runs shared NODE_CORES cores), then the seed's cluster what-if (SIM_COSTS, the seed's budget of
# SIM_BUDGET trial-iterations: 40 is the exercise's 8 PBT trials) and the scaling curves, curves from RESULTS_DIR
NODE_CORES ?= $(shell nproc)
SIM_COSTS ?= harness/simulate/seed_scale.toml
SIM_BUDGET ?= 40
# PB2 explores differently from PBT but pauses, exploits and restores at the same moments: its schedule is PBT's
SIM_STRATEGIES ?= manual fifo asha pbt
SIM_CLUSTER ?= --nodes 2 --cpus-per-node 20 --gpus-per-node 8 --system-cpus 2
simulate: $(STAMP) ## replay PRESET's runs in RESULTS_DIR against what they measured, then the seed's cluster what-if (Q1) and scaling
	out=$(RESULTS_DIR)/simulate-$$(date +%Y%m%d-%H%M%S); \
	$(PY) -m harness simulate replay $(RESULTS_DIR) --filter-preset $(PRESET) --node-cores $(NODE_CORES) --out $$out/replay && \
	$(PY) -m harness simulate what-if $(RESULTS_DIR) --filter-preset $(PRESET) --preset seed --set budget.trial_iterations=$(SIM_BUDGET) \
	  --strategies "$(SIM_STRATEGIES)" --seeds "0 1 2 3 4 5" --costs $(SIM_COSTS) $(SIM_CLUSTER) \
	  --results-dir $(RESULTS_DIR) --out $$out/seed-scale && \
	$(PY) -m harness simulate scaling $(RESULTS_DIR) --filter-preset $(PRESET) --preset seed --costs $(SIM_COSTS) $(SIM_CLUSTER) \
	  --out $$out/scaling

test: $(STAMP) ## the whole suite: unit, the trial, Ray/MLflow runs, faults, SLURM jobs, the MLflow UI in a browser
	$(PY) -m pytest $(parallel) $(PYTEST_ARGS)

test-unit: $(STAMP) ## the unit tier: no Ray, no training (about a minute)
	$(PY) -m pytest -m unit $(PYTEST_ARGS)

test-fast: $(STAMP) ## unit + the trial trained without Ray (a few minutes): no Ray run, no SLURM, no browser, no outage
	$(PY) -m pytest -m "not integration" $(parallel) $(PYTEST_ARGS)

test-slurm: $(STAMP) ## only the SLURM tests (bring up a one-node cluster; root + apt-get)
	$(PY) -m pytest -m slurm $(PYTEST_ARGS)

bench: $(STAMP) ## pytest-benchmark: smoke PBT wall time, memory, slot utilization and first-iteration cost (vs FIFO and a 2-trial baseline)
	mkdir -p $(RESULTS_DIR)/benchmarks
	$(PY) -m pytest benchmarks --benchmark-json=$(RESULTS_DIR)/benchmarks/bench-$$(date +%Y%m%d-%H%M%S).json $(PYTEST_ARGS)

soak: $(STAMP) ## smoke PBT runs under FAULTS random faults (kills, SIGUSR1/TERM, MLflow down) of schedule SEED; checks nothing is lost
	HARNESS_CACHE="$(CACHE_DIR)" $(PY) tools/soak.py --seed $(SEED) --faults $(FAULTS) --out $(RESULTS_DIR)/soak-$(SEED)-$$(date +%Y%m%d-%H%M%S)

mlflow-ui: $(STAMP) ## serve the MLflow UI for RESULTS_DIR on 127.0.0.1 (port MLFLOW_PORT, default 5000); prints where to look
	$(PY) -m harness ui-urls --results-dir $(RESULTS_DIR) --port $(MLFLOW_PORT)
	MLFLOW_DISABLE_TELEMETRY=true $(VENV)/bin/mlflow ui --backend-store-uri "sqlite:///$(abspath $(RESULTS_DIR))/mlflow.db" --host 127.0.0.1 --port $(MLFLOW_PORT)

submit-%: $(STAMP) ## submit the SLURM head job for strategy % on SUBMIT_PRESET in the container SIF; node-sized: CPUS_PER_NODE, GPUS_PER_NODE, SYSTEM_CPUS, NUM_WORKERS; LAUNCH=allocation: one job of NUM_WORKERS+1 nodes
	$(call submit,$*,hpo-$*-$(notdir $(basename $(SUBMIT_PRESET))))

# The checks the head job makes, before anything is queued (bad input, no room, no image: exit 2),
# then one head job of the node's size, named hpo-<strategy>-<preset>; it submits NUM_WORKERS
# worker jobs of the same size (hpo-<strategy>-<preset>-worker). LAUNCH=allocation: one job of
# NUM_WORKERS + 1 such nodes instead, one task each, whose other nodes join by srun. A strategy that
# needs no Ray (job-plan says USES_RAY=0: the sequential grid) runs in the head job alone (one node).
define submit
	@[[ "$(origin STRATEGY)" != "command line" || "$(STRATEGY)" == "$(1)" ]] || { echo "error: STRATEGY=$(STRATEGY) no longer chooses what make submit-$(1) runs; run make submit-$(STRATEGY)" >&2; exit 2; }
	@[[ "$(LAUNCH)" == jobs || "$(LAUNCH)" == allocation ]] || { echo "error: LAUNCH=$(LAUNCH) is not a launch mode; use LAUNCH=jobs (worker jobs submitted by the head job) or LAUNCH=allocation (one allocation of NUM_WORKERS+1 nodes)" >&2; exit 2; }
	plan="$$(HARNESS_CACHE="$(CACHE_DIR)" $(PY) -m harness job-plan --preset $(SUBMIT_PRESET) --strategy $(1) $(HARNESS_ARGS))"; \
	if [[ "$$plan" == *USES_RAY=1* ]]; then $(PY) -m harness capacity --preset $(SUBMIT_PRESET) --strategy $(1) $(HARNESS_ARGS) \
	  --nodes $$(( $(NUM_WORKERS) + 1 )) --cpus-per-node $(CPUS_PER_NODE) --gpus-per-node $(GPUS_PER_NODE) --system-cpus $(SYSTEM_CPUS); fi; \
	[[ "$(SIF)" == none || -f "$(SIF)" ]] || { echo "error: SIF=$(SIF) does not exist; build it with make container (needs apptainer), or SIF=none to run the jobs from .venv" >&2; exit 2; }; \
	mkdir -p logs; \
	gres=$$( (( $(GPUS_PER_NODE) > 0 )) && echo "--gres=gpu:$(GPUS_PER_NODE)" || true ); \
	script=slurm/head_node_raytune_pbt_hpo.slurm; shape=(); \
	if [[ "$(LAUNCH)" == allocation ]]; then \
	  script=slurm/allocation_raytune_hpo.slurm; \
	  shape=(--nodes=$$( [[ "$$plan" == *USES_RAY=1* ]] && echo $$(( $(NUM_WORKERS) + 1 )) || echo 1 ) --ntasks-per-node=1); \
	fi; \
	PRESET=$(SUBMIT_PRESET) STRATEGY=$(1) NUM_WORKERS=$(NUM_WORKERS) SYSTEM_CPUS=$(SYSTEM_CPUS) HARNESS_ARGS="$(HARNESS_ARGS)" \
	HARNESS_SIF=$(if $(filter none,$(SIF)),none,$(abspath $(SIF))) CACHE_DIR="$(abspath $(CACHE_DIR))" RESULTS_DIR="$(abspath $(RESULTS_DIR))" \
	WORKER_SBATCH_ARGS="--cpus-per-task=$(CPUS_PER_NODE) $$gres $(SBATCH_ARGS)" \
	sbatch --job-name=$(2) "$${shape[@]}" --cpus-per-task=$(CPUS_PER_NODE) $$gres $(SBATCH_ARGS) $$script
endef

# The GPU machine (device in the tool library) has Python 3.12, torch and transformers, but no
# DeepSpeed and no network: its wheels travel with the check (carry build/gpu-wheels).
GPU_WHEELS ?= build/gpu-wheels
GPU_PY ?= python3
GPU_DEPS := hjson msgpack ninja py-cpuinfo pydantic pydantic-core annotated-types typing-inspection einops

gpu-bundle: $(STAMP) ## build DeepSpeed (pure Python, DS_BUILD_OPS=0) and its missing dependencies as Python 3.12 wheels in GPU_WHEELS
	rm -rf $(GPU_WHEELS) && mkdir -p $(GPU_WHEELS)
	DS_BUILD_OPS=0 $(PY) -m pip wheel --quiet --no-deps --no-build-isolation -c constraints.txt -w $(GPU_WHEELS) deepspeed
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -c constraints.txt -d $(GPU_WHEELS) $(GPU_DEPS)
	du -sh $(GPU_WHEELS)

gpu-check: ## on a GPU: BLOOM-560M-shaped trial segments (fp16, DeepSpeed ZeRO-2, one exploit); figures in results/gpu-check (no Ray/MLflow needed)
	@$(GPU_PY) -c "import deepspeed" 2>/dev/null || { [[ -d $(GPU_WHEELS) ]] || { echo "error: no deepspeed here and no $(GPU_WHEELS); run make gpu-bundle where there is network" >&2; exit 2; }; \
	  rm -rf build/gpu-site; for w in $(GPU_WHEELS)/*.whl; do $(GPU_PY) -m zipfile -e "$$w" build/gpu-site; done; }
	PYTHONPATH=$(CURDIR)/build/gpu-site:$(CURDIR) DS_SKIP_CUDA_CHECK=1 PYTHONUNBUFFERED=1 $(GPU_PY) -m harness.trial.gpucheck --out $(RESULTS_DIR)/gpu-check

lock: $(STAMP) ## regenerate container/requirements.lock from constraints.txt
	$(PY) tools/container.py lock

container-lint: $(STAMP) ## lint container/harness.def (sections, digest-pinned base, pip from the lock)
	$(PY) tools/container.py lint container/harness.def

container: ## build the Apptainer image SIF=harness.sif (needs apptainer)
	@command -v apptainer >/dev/null || { echo "error: apptainer is not installed on this machine; build $(SIF) where it is (apptainer build $(SIF) container/harness.def)" >&2; exit 2; }
	apptainer build --build-arg GIT_SHA=$$(git rev-parse HEAD 2>/dev/null || echo unknown) $(SIF) container/harness.def

clean: ## remove results and caches (keeps .venv)
	rm -rf $(RESULTS_DIR) .pytest_cache .benchmarks
