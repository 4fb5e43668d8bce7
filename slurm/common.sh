#!/usr/bin/env bash
# Shared by the head, worker and manual jobs: logging, the container/venv switch, Ray start/stop
# by PID, readiness polling with a deadline. Sourced, never run.
#
# Overridable by the submitter (sbatch exports the environment):
#   HARNESS_DIR       project checkout on shared storage (default: the submit directory)
#   HARNESS_SIF       Apptainer image; when set, every ray/python command runs in `apptainer exec --nv`
#   HARNESS_VENV      virtual environment used without an image (default: $HARNESS_DIR/.venv)
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

# Run a command from the image (apptainer exec --nv) or from the virtual environment.
hx_prefix() {
  if [[ -n "${HARNESS_SIF:-}" ]]; then
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

stop_ray_tree() {
  local root="$1" tmp="$2" pids tagged="" p alive
  [[ -n "$root" ]] || return 0
  if [[ -n "$tmp" ]]; then tagged="$(pgrep -f -- "$tmp" || true)"; fi
  pids="$( { echo "$root"; descendants "$root"; echo "$tagged"; } | sort -u)"
  # `ray start --block` shuts its node down in order on SIGTERM; give it a moment, then the rest.
  kill -TERM "$root" 2>/dev/null || true
  for signal in TERM KILL; do
    for _ in $(seq 1 20); do
      alive=""
      for p in $pids; do kill -0 "$p" 2>/dev/null && alive="$alive $p"; done
      [[ -z "$alive" ]] && return 0
      sleep 0.5
    done
    log "Ray processes still alive after 10 s, SIG$signal:$alive"
    # shellcheck disable=SC2086
    kill -"$signal" $alive 2>/dev/null || true
  done
}

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

# Ray's token auth with a per-job token: every Ray command and the driver read it from this file.
use_job_token() {
  export RAY_AUTH_MODE=token
  export RAY_AUTH_TOKEN_PATH="$1/ray_token"
}
