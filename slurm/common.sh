#!/usr/bin/env bash
# Shared by the head, worker and manual jobs: logging, the container/venv switch, Ray start/stop
# by PID, readiness polling with a deadline. Sourced, never run.
#
# Overridable by the submitter (sbatch exports the environment):
#   HARNESS_DIR       project checkout on shared storage (default: the submit directory)
#   HARNESS_SIF       Apptainer image every ray/python command runs in (`apptainer exec --nv`); required:
#                     a job without one refuses, unless HARNESS_SIF=none chooses the virtual environment
#   HARNESS_CODE      image (default): the harness installed in the image runs; bind: the checkout
#                     HARNESS_DIR runs inside the image (PYTHONPATH), for trying a change without a rebuild
#   HARNESS_VENV      virtual environment used with HARNESS_SIF=none (default: $HARNESS_DIR/.venv)
#   HARNESS_JOBS_DIR  per-job folders (address, token, shutdown.txt) on shared storage
#   HARNESS_LOGS_DIR  where worker jobs write logs/<name>-<jobid>.out (default: $HARNESS_DIR/logs)
#   RAY_READY_TIMEOUT seconds to wait for Ray nodes (default 180)

HARNESS_DIR="${HARNESS_DIR:-${SLURM_SUBMIT_DIR:-$PWD}}"
HARNESS_VENV="${HARNESS_VENV:-$HARNESS_DIR/.venv}"
HARNESS_JOBS_DIR="${HARNESS_JOBS_DIR:-$HARNESS_DIR/jobs}"
RAY_READY_TIMEOUT="${RAY_READY_TIMEOUT:-180}"
HARNESS_LOGS_DIR="${HARNESS_LOGS_DIR:-$HARNESS_DIR/logs}"
export HARNESS_DIR HARNESS_LOGS_DIR
mkdir -p "$HARNESS_JOBS_DIR"  # bound into the container by hx(); apptainer refuses a missing bind path
# At the end of a job the driver is gone and nothing is left to drain: do not wait 30 s for it.
export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="${RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S:-5}"

log() { printf '%s [%s %s] %s\n' "$(date '+%Y-%m-%d %H:%M:%S')" "${HARNESS_ROLE:-job}" "${SLURM_JOB_ID:-?}" "$*"; }
die() { log "ERROR: $*" >&2; exit "${2:-1}"; }

# The seed's banner lines, which `python -m harness collect` reads.
job_banner() { echo "===== JOB ${SLURM_JOB_ID:-?} $1 : $(date '+%Y-%m-%d %H:%M:%S %z') ====="; }

# Which code runs: the image's (default), the checkout inside the image, or the virtual environment.
# Exported, so the run's MLflow tags say which (harness.cluster.provenance). Exit 2 when there is no image.
require_runtime() {
  HARNESS_SIF="${HARNESS_SIF:-}"
  if [[ -z "$HARNESS_SIF" ]]; then
    die "no container image: HARNESS_SIF is not set. Build one (make container), submit with make submit-* (it passes SIF=harness.sif) or HARNESS_SIF=/path/harness.sif; HARNESS_SIF=none runs from the virtual environment $HARNESS_VENV instead" 2
  fi
  if [[ "$HARNESS_SIF" == none ]]; then
    [[ -x "$HARNESS_VENV/bin/python" ]] || die "HARNESS_SIF=none but $HARNESS_VENV/bin/python does not exist; run make venv or set HARNESS_VENV" 2
    export HARNESS_CODE=venv HARNESS_IMAGE=none
    log "code: the virtual environment $HARNESS_VENV (HARNESS_SIF=none)"
    return
  fi
  [[ -f "$HARNESS_SIF" ]] || die "HARNESS_SIF=$HARNESS_SIF does not exist; build it with make container SIF=$HARNESS_SIF, or HARNESS_SIF=none for the virtual environment" 2
  HARNESS_SIF="$(cd "$(dirname "$HARNESS_SIF")" && pwd)/$(basename "$HARNESS_SIF")"
  HARNESS_CODE="${HARNESS_CODE:-image}"
  case "$HARNESS_CODE" in
    image) export PYTHONSAFEPATH=1 ;;   # python -m harness imports the image's harness, not the working directory's
    bind) export PYTHONPATH="$HARNESS_DIR${PYTHONPATH:+:$PYTHONPATH}" ;;
    *) die "HARNESS_CODE=$HARNESS_CODE: use image (the image's harness) or bind (the checkout $HARNESS_DIR)" 2 ;;
  esac
  export HARNESS_CODE HARNESS_IMAGE="$HARNESS_SIF"
  log "code: $HARNESS_CODE, image $HARNESS_SIF"
}

# Run a command from the image (apptainer exec --nv) or from the virtual environment.
hx_prefix() {
  if [[ "${HARNESS_SIF:-none}" != none ]]; then
    HX_PREFIX=(apptainer exec --nv --bind "$HARNESS_DIR" --bind "$HARNESS_JOBS_DIR")
    [[ -z "${HARNESS_BINDS:-}" ]] || HX_PREFIX+=(--bind "$HARNESS_BINDS")
    HX_PREFIX+=("$HARNESS_SIF")
  else
    HX_PREFIX=(env "PATH=$HARNESS_VENV/bin:$PATH")
  fi
}

hx() {
  hx_prefix
  "${HX_PREFIX[@]}" "$@"
}

# The same, replacing the calling (sub)shell: `hx_exec ray start ... &` leaves $! pointing at the
# real process, not at a subshell that would sit between our SIGTERM and Ray's own handling.
hx_exec() {
  hx_prefix
  exec "${HX_PREFIX[@]}" "$@"
}

# This node's address on the cluster network (never 0.0.0.0); NODE_IP overrides it.
node_ip() {
  if [[ -n "${NODE_IP:-}" ]]; then echo "$NODE_IP"; return; fi
  local ip
  ip="$(hostname --ip-address 2>/dev/null | awk '{print $1}')"
  [[ -n "$ip" && "$ip" != 127.* ]] || ip="$(hostname -I 2>/dev/null | awk '{print $1}')"
  [[ -n "$ip" ]] || die "cannot tell this node's IP address; set NODE_IP"
  echo "$ip"
}

# Ray's processes of this job only: everything below PID (the `ray start --block` process), and any
# process that carries this job's private temp dir. Never `ray stop`: it kills every Ray process of
# the user on the node, other jobs' included.
descendants() {
  local pid child
  for pid in "$@"; do
    for child in $(ps -o pid= --ppid "$pid" 2>/dev/null); do
      echo "$child"
      descendants "$child"
    done
  done
}

# Cleanup has to fit in SLURM's KillWait (30 s by default) after a scancel: 4 s for an orderly
# shutdown, then SIGTERM, then SIGKILL, 2 s each.
stop_ray_tree() {
  local root="$1" tmp="$2" pids tagged="" p alive waits=8
  [[ -n "$root" ]] || return 0
  if [[ -n "$tmp" ]]; then tagged="$(pgrep -f -- "$tmp" | grep -vx "$$" || true)"; fi   # never this shell
  pids="$( { echo "$root"; descendants "$root"; echo "$tagged"; } | sort -u)"
  # `ray start --block` shuts its node down in order on SIGTERM; give it a moment, then the rest.
  kill -TERM "$root" 2>/dev/null || true
  for signal in TERM KILL; do
    for _ in $(seq 1 "$waits"); do
      alive=""
      for p in $pids; do kill -0 "$p" 2>/dev/null && alive="$alive $p"; done
      [[ -z "$alive" ]] && return 0
      sleep 0.5
    done
    log "Ray processes still alive, SIG$signal:$alive"
    # shellcheck disable=SC2086
    kill -"$signal" $alive 2>/dev/null || true
    waits=4
  done
}

# Read the KEY=value lines of a harness command into shell variables, never evaluating them: only
# the KEYS named, only values matching PATTERN, and every KEY present. Anything else ends the job.
#   read_assignments PATTERN KEY... <<< "$(hx python -m harness ports)"
read_assignments() {
  local pattern="$1" line key value seen=" "
  shift
  while IFS= read -r line; do
    [[ -n "$line" ]] || continue
    key="${line%%=*}"
    value="${line#*=}"
    if [[ "$line" != *=* || " $* " != *" $key "* || ! "$value" =~ $pattern ]]; then
      die "refusing an unexpected line (want KEY=value for $*): $line"
    fi
    printf -v "$key" '%s' "$value"
    seen+="$key "
  done
  for key in "$@"; do
    [[ "$seen" == *" $key "* ]] || die "no $key in the harness's answer"
  done
}

PORT_KEYS=(RAY_GCS_PORT RAY_DASHBOARD_PORT RAY_DASHBOARD_AGENT_LISTEN_PORT RAY_DASHBOARD_AGENT_GRPC_PORT
  RAY_NODE_MANAGER_PORT RAY_OBJECT_MANAGER_PORT RAY_METRICS_EXPORT_PORT RAY_RUNTIME_ENV_AGENT_PORT
  RAY_MIN_WORKER_PORT RAY_MAX_WORKER_PORT)

# Start `ray start --block` for ROLE (head or worker) with ARGS, on ports chosen for this job, in
# the background (RAY_PID), and wait until it says it runs. On a bind conflict (another job took a
# port between the choice and the bind) choose again, up to RAY_START_ATTEMPTS times; any other
# failure ends the job. The head's GCS port is RAY_GCS_PORT afterwards.
start_ray_node() {
  local role="$1" attempt started="" ports
  shift
  for attempt in $(seq 1 "${RAY_START_ATTEMPTS:-3}"); do
    ports="$(hx python -m harness ports)"
    read_assignments '^[0-9]+$' "${PORT_KEYS[@]}" <<< "$ports"
    local args=(ray start --block --disable-usage-stats "$@"
      --dashboard-agent-listen-port="$RAY_DASHBOARD_AGENT_LISTEN_PORT" --dashboard-agent-grpc-port="$RAY_DASHBOARD_AGENT_GRPC_PORT"
      --node-manager-port="$RAY_NODE_MANAGER_PORT" --object-manager-port="$RAY_OBJECT_MANAGER_PORT"
      --metrics-export-port="$RAY_METRICS_EXPORT_PORT" --runtime-env-agent-port="$RAY_RUNTIME_ENV_AGENT_PORT"
      --min-worker-port="$RAY_MIN_WORKER_PORT" --max-worker-port="$RAY_MAX_WORKER_PORT" --temp-dir="$RAY_TMP")
    [[ "$role" != head ]] || args+=(--head --port="$RAY_GCS_PORT" --dashboard-port="$RAY_DASHBOARD_PORT")
    hx_exec "${args[@]}" > "$RAY_TMP/ray_start.log" 2>&1 &
    RAY_PID=$!
    for _ in $(seq 1 "$((RAY_READY_TIMEOUT * 2))"); do
      if grep -q "Ray runtime started" "$RAY_TMP/ray_start.log"; then started=1; break; fi
      kill -0 "$RAY_PID" 2>/dev/null || break
      sleep 0.5
    done
    [[ -n "$started" ]] && return 0
    stop_ray_tree "$RAY_PID" "$RAY_TMP"
    RAY_PID=""
    if grep -qiE "address already in use|already in use|is used by other|failed to bind|bind: " "$RAY_TMP/ray_start.log"; then
      log "ray start, attempt $attempt: a port was taken meanwhile; choosing new ports"
      continue
    fi
    tail -n 20 "$RAY_TMP/ray_start.log" >&2
    die "ray start failed (above: the end of $RAY_TMP/ray_start.log)"
  done
  tail -n 20 "$RAY_TMP/ray_start.log" >&2
  die "ray start hit a port conflict ${RAY_START_ATTEMPTS:-3} times"
}

# A URI with its user:password@ part masked, for log lines (MLflow URIs can hold credentials).
redact_uri() { sed -E 's#(://)[^/@[:space:]]+@#\1***@#g' <<< "$1"; }

# Count the nodes `ray status` lists (active and idle); prints 0 when Ray does not answer.
ray_node_count() {
  hx ray status --address "$1" 2>/dev/null \
    | awk '/^Active:/{on=1; next} /^Pending:/{on=0} on && /node_/ {n++} END {print n+0}'
}

# Poll until ADDRESS shows at least N nodes, or fail with the tail of Ray's logs.
wait_for_nodes() {
  local address="$1" want="$2" tmp="$3" have=0 deadline=$((SECONDS + RAY_READY_TIMEOUT))
  while (( SECONDS < deadline )); do
    have="$(ray_node_count "$address")"
    if (( have >= want )); then
      log "Ray at $address shows $have/$want node(s)"
      return 0
    fi
    sleep 2
  done
  log "Ray at $address shows $have of $want node(s) after ${RAY_READY_TIMEOUT}s; last lines of its logs:" >&2
  local f
  for f in "$tmp"/session_latest/logs/{gcs_server.err,gcs_server.out,raylet.err,raylet.out} "$tmp"/ray_start.log; do
    [[ -s "$f" ]] && { echo "--- $f" >&2; tail -n 20 "$f" >&2; }
  done
  return 1
}

# A job's state from squeue: RUNNING, PENDING, ...; GONE when squeue answers that the job is not
# there; UNKNOWN when squeue itself failed (slurmctld busy or restarting), which decides nothing.
job_state() {
  local out
  if out="$(squeue -h -j "$1" -o %T 2>&1)"; then
    echo "${out:-GONE}"
  elif [[ "$out" == *"Invalid job id"* ]]; then
    echo GONE
  else
    echo UNKNOWN
  fi
}

# Ray's token auth with a per-job token: every Ray command and the driver read it from this file.
use_job_token() {
  export RAY_AUTH_MODE=token
  export RAY_AUTH_TOKEN_PATH="$1/ray_token"
}
