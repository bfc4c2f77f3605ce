#!/usr/bin/env bash
# Container entry point of the wan-worker image.
#
#   1. ensure the default models are on the volume (`python -m worker models ensure`);
#   2. start ComfyUI on 127.0.0.1:$COMFY_PORT with the project's extra_model_paths.yaml and
#      --cache-classic (see "cache mode" below), and beside it `python -m worker readahead`, which reads the
#      models the first job loads into the page cache while ComfyUI starts (READAHEAD=false: it does nothing);
#   3. wait until ComfyUI answers GET /system_stats, failing at a deadline or as soon as it exits;
#   4. run the RunPod worker (`python -m worker`, with the local API when SERVE_API_LOCALLY=true)
#      and stay beside it as a small supervisor: SIGTERM goes to the worker (which finishes its
#      running job), then to ComfyUI; if ComfyUI dies while the worker runs, the worker is stopped
#      and the container exits non-zero so that RunPod replaces it.
#
# Every setting is an environment variable (see the README's environment table). Commands held in
# variables (PYTHON, COMFY_CMD, WORKER_CMD, COMFY_EXTRA_ARGS, WORKER_EXTRA_ARGS) are split on
# whitespace, without globbing; they cannot hold arguments that contain spaces.
set -euo pipefail

log() { printf '[start.sh] %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

# is_true NAME VALUE: whether a true/false setting is true; dies on anything else.
is_true() {
	case "${2,,}" in
	1 | true | yes | on) return 0 ;;
	0 | false | no | off | "") return 1 ;;
	*) die "$1 must be true or false, got '$2'" ;;
	esac
}

# to_ms NAME VALUE: seconds (integer or decimal) as milliseconds, in REPLY; dies on anything else.
to_ms() {
	local name=$1 value=$2 frac
	[[ $value =~ ^([0-9]+)(\.([0-9]*))?$ ]] || die "$name must be a number of seconds, got '$value'"
	frac="${BASH_REMATCH[3]}000"
	REPLY=$((10#${BASH_REMATCH[1]} * 1000 + 10#${frac:0:3}))
}

# now_ms: the time in milliseconds, in REPLY (no subshell: it runs in the polling loops).
now_ms() {
	local t=${EPOCHREALTIME/[.,]/}
	REPLY=$((t / 1000))
}

# --------------------------------------------------------------------------- settings
here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)

PYTHON=${PYTHON:-python3}
APP_DIR=${APP_DIR:-$here}
COMFY_DIR=${COMFY_DIR:-/opt/ComfyUI}
COMFY_CMD=${COMFY_CMD:-$PYTHON $COMFY_DIR/main.py}
COMFY_PORT=${COMFY_PORT:-8188}
COMFY_EXTRA_ARGS=${COMFY_EXTRA_ARGS:-}
COMFY_START_TIMEOUT_S=${COMFY_START_TIMEOUT_S:-600}
COMFY_POLL_INTERVAL_S=${COMFY_POLL_INTERVAL_S:-0.2}
EXTRA_MODEL_PATHS=${EXTRA_MODEL_PATHS-$APP_DIR/extra_model_paths.yaml}
COMFY_INPUT_DIR=${COMFY_INPUT_DIR:-}
COMFY_OUTPUT_DIR=${COMFY_OUTPUT_DIR:-}
SKIP_MODEL_DOWNLOAD=${SKIP_MODEL_DOWNLOAD:-false}
WORKER_CMD=${WORKER_CMD:-$PYTHON -m worker}
WORKER_EXTRA_ARGS=${WORKER_EXTRA_ARGS:-}
SERVE_API_LOCALLY=${SERVE_API_LOCALLY:-false}
LOCAL_API_HOST=${LOCAL_API_HOST:-0.0.0.0}
LOCAL_API_PORT=${LOCAL_API_PORT:-8000}
STOP_TIMEOUT_S=${STOP_TIMEOUT_S:-10}

# The worker and extra_model_paths.yaml (base_path: ${VOLUME_ROOT}) read these.
export VOLUME_ROOT=${VOLUME_ROOT:-/runpod-volume}
export COMFY_PORT
export PYTHONUNBUFFERED=${PYTHONUNBUFFERED:-1}

[[ $COMFY_PORT =~ ^[0-9]+$ ]] || die "COMFY_PORT must be a port number, got '$COMFY_PORT'"
[[ $LOCAL_API_PORT =~ ^[0-9]+$ ]] || die "LOCAL_API_PORT must be a port number, got '$LOCAL_API_PORT'"
to_ms COMFY_START_TIMEOUT_S "$COMFY_START_TIMEOUT_S"
start_timeout_ms=$REPLY
to_ms STOP_TIMEOUT_S "$STOP_TIMEOUT_S"
stop_timeout_ms=$REPLY
to_ms COMFY_POLL_INTERVAL_S "$COMFY_POLL_INTERVAL_S"
skip_models=0 serve_api=0
if is_true SKIP_MODEL_DOWNLOAD "$SKIP_MODEL_DOWNLOAD"; then skip_models=1; fi
if is_true SERVE_API_LOCALLY "$SERVE_API_LOCALLY"; then serve_api=1; fi
if [[ -n $EXTRA_MODEL_PATHS && ! -f $EXTRA_MODEL_PATHS ]]; then
	die "EXTRA_MODEL_PATHS names no file: $EXTRA_MODEL_PATHS"
fi

# The image no longer has SageAttention (see the Dockerfile); an endpoint that still sets this is told so.
if [[ -n ${USE_SAGE_ATTENTION:-} ]]; then
	log "USE_SAGE_ATTENTION is no longer read: the image has no SageAttention; ComfyUI uses PyTorch's attention"
fi

read -r -a comfy_cmd <<<"$COMFY_CMD"
read -r -a comfy_extra <<<"$COMFY_EXTRA_ARGS"
read -r -a worker_cmd <<<"$WORKER_CMD"
read -r -a worker_extra <<<"$WORKER_EXTRA_ARGS"
[[ -n ${PYTHON//[[:space:]]/} ]] || die "PYTHON is empty"
((${#comfy_cmd[@]})) || die "COMFY_CMD is empty"
((${#worker_cmd[@]})) || die "WORKER_CMD is empty"

comfy_url="http://127.0.0.1:${COMFY_PORT}/system_stats"

# --------------------------------------------------------------------------- children and signals
# Children are started in the background and waited for, so that a signal is handled at once
# rather than after a foreground command ends. Background children of a non-interactive shell
# ignore SIGINT, so SIGTERM is what is forwarded for both signals.
models_pid="" comfy_pid="" worker_pid="" readahead_pid=""
stopping=0 stop_signal=""

alive() { [[ -n $1 ]] && kill -0 "$1" 2>/dev/null; }

# stop_child PID NAME: SIGTERM, then SIGKILL after STOP_TIMEOUT_S; reaps the child.
stop_child() {
	local pid=$1 name=$2 deadline
	alive "$pid" || return 0
	log "stopping $name (pid $pid)"
	kill -TERM "$pid" 2>/dev/null || true
	now_ms
	deadline=$((REPLY + stop_timeout_ms))
	while alive "$pid"; do
		now_ms
		((REPLY < deadline)) || break
		sleep 0.05
	done
	if alive "$pid"; then
		log "$name did not stop within ${STOP_TIMEOUT_S}s; killing it"
		kill -KILL "$pid" 2>/dev/null || true
	fi
	wait "$pid" 2>/dev/null || true
}

on_signal() {
	stop_signal=$1
	if [[ -n $worker_pid ]]; then
		# The worker stops taking jobs and finishes the running one; ComfyUI is stopped after it.
		log "received SIG$1; asking the worker to finish"
		stopping=1
		if alive "$worker_pid"; then kill -TERM "$worker_pid" 2>/dev/null || true; fi
		return
	fi
	log "received SIG$1 while starting; stopping"
	[[ $1 == INT ]] && exit 130
	exit 143
}

# Whatever the way out (an error, a signal, the end), no child outlives the script.
on_exit() {
	stop_child "$worker_pid" "the worker"
	stop_child "$comfy_pid" "ComfyUI"
	stop_child "$models_pid" "the model download"
	stop_child "$readahead_pid" "the model read-ahead"
}
trap 'on_signal TERM' TERM
trap 'on_signal INT' INT
trap on_exit EXIT

# --------------------------------------------------------------------------- 1. models
if ((skip_models)); then
	log "SKIP_MODEL_DOWNLOAD=true: not checking the models on $VOLUME_ROOT"
else
	log "ensuring the default models on $VOLUME_ROOT"
	"${worker_cmd[@]}" models ensure &
	models_pid=$!
	set +e
	wait "$models_pid"
	status=$?
	set -e
	models_pid=""
	((status == 0)) || die "'${WORKER_CMD} models ensure' failed (exit $status); set SKIP_MODEL_DOWNLOAD=true to start without it"
fi

# --------------------------------------------------------------------------- 2. ComfyUI
comfy_args=(--listen 127.0.0.1 --port "$COMFY_PORT" --disable-auto-launch)

# Cache mode: --cache-classic, unless COMFY_EXTRA_ARGS names a cache mode of its own (ComfyUI takes
# one). Both classic and ComfyUI v0.33.0's default, RAM-pressure caching, keep from one prompt to
# the next every node output the next prompt reuses: with the graphs' stable node ids and inputs,
# the two 14 GB experts' loaders (and the LoRAs, text encoder and VAE), whether jobs switch between
# I2V and FLF2V or not. RAM-pressure caching also drops outputs of the running prompt whenever free
# RAM falls below a headroom (10% of the RAM, 2 to 10 GB) after a node: large intermediates first,
# then any entry, the experts' loaders included. On a RunPod machine with limited RAM that happens
# while the experts, the text encoder and a decoded video share it (and, in a container, the free
# memory ComfyUI reads is the host's, so other tenants can set it off); a dropped loader makes the
# next job read 14 GB from the network volume again. Classic caching drops, at the start of each
# prompt, only what that prompt does not use, and never evicts for RAM; ComfyUI frees its pinned
# memory under RAM pressure in either mode. The cost: the last job's intermediates (latents and
# decoded frames, about 0.4 GB for 81 frames at 480x832) stay in RAM until the next job starts.
cache_args=(--cache-classic)
for arg in "${comfy_extra[@]}"; do
	case $arg in
	--cache-* | --high-ram)
		log "COMFY_EXTRA_ARGS sets the cache mode ($arg); not adding --cache-classic"
		cache_args=()
		break
		;;
	esac
done
comfy_args+=("${cache_args[@]}")
[[ -z $EXTRA_MODEL_PATHS ]] || comfy_args+=(--extra-model-paths-config "$EXTRA_MODEL_PATHS")
# The worker deletes each job's files from these folders (config: COMFY_INPUT_DIR, COMFY_OUTPUT_DIR).
[[ -z $COMFY_INPUT_DIR ]] || comfy_args+=(--input-directory "$COMFY_INPUT_DIR")
[[ -z $COMFY_OUTPUT_DIR ]] || comfy_args+=(--output-directory "$COMFY_OUTPUT_DIR")
comfy_args+=("${comfy_extra[@]}")

log "starting ComfyUI: ${comfy_cmd[*]} ${comfy_args[*]}"
"${comfy_cmd[@]}" "${comfy_args[@]}" &
comfy_pid=$!
"${worker_cmd[@]}" readahead &
readahead_pid=$!

# --------------------------------------------------------------------------- 3. wait for ComfyUI
# probe: whether ComfyUI answers GET /system_stats with 200 within a second. Bash's own /dev/tcp, in a
# subshell: no program to start at every poll, nothing to install, and a connection closed under it
# (SIGPIPE) ends the subshell, not the script.
probe() {
	(
		exec 3<>"/dev/tcp/127.0.0.1/$COMFY_PORT" || exit 1
		printf 'GET /system_stats HTTP/1.0\r\nHost: 127.0.0.1:%s\r\n\r\n' "$COMFY_PORT" >&3 || exit 1
		IFS= read -r -t 1 line <&3 || exit 1
		IFS= read -r -d '' -t 1 _ <&3 || true # the rest of the answer, so that the server ends it cleanly
		[[ $line =~ ^HTTP/1\.[01]\ 200 ]]
	) 2>/dev/null
}

now_ms
started_ms=$REPLY
deadline_ms=$((started_ms + start_timeout_ms))
while true; do
	if ! alive "$comfy_pid"; then
		set +e
		wait "$comfy_pid"
		status=$?
		set -e
		die "ComfyUI exited (status $status) before it answered $comfy_url"
	fi
	probe && break
	now_ms
	if ((REPLY >= deadline_ms)); then
		stop_child "$comfy_pid" "ComfyUI"
		die "ComfyUI did not answer $comfy_url within ${COMFY_START_TIMEOUT_S}s (COMFY_START_TIMEOUT_S)"
	fi
	sleep "$COMFY_POLL_INTERVAL_S"
done
now_ms
elapsed_ms=$((REPLY - started_ms))
log "ComfyUI is ready after $((elapsed_ms / 1000)).$(printf '%03d' $((elapsed_ms % 1000)))s"

# --------------------------------------------------------------------------- 4. the worker, supervised
worker_args=()
if ((serve_api)); then
	worker_args+=(--rp_serve_api --rp_api_host "$LOCAL_API_HOST" --rp_api_port "$LOCAL_API_PORT")
fi
worker_args+=("${worker_extra[@]}")

log "starting the worker: ${worker_cmd[*]} ${worker_args[*]}"
"${worker_cmd[@]}" "${worker_args[@]}" &
worker_pid=$!

while true; do
	exited=""
	set +e
	wait -n -p exited "$comfy_pid" "$worker_pid"
	status=$?
	set -e
	[[ -n ${exited:-} ]] || continue # a trapped signal interrupted the wait

	if [[ $exited == "$worker_pid" ]]; then
		worker_pid=""
		if ((stopping)); then
			log "the worker stopped after SIG${stop_signal} (status $status)"
		else
			log "the worker exited (status $status)"
		fi
		stop_child "$comfy_pid" "ComfyUI"
		exit "$status"
	fi

	# ComfyUI is gone while the worker runs: the worker cannot serve a job any more.
	((status != 0)) || status=1
	log "ComfyUI exited (status $status) while the worker was running; stopping the worker"
	comfy_pid=""
	stop_child "$worker_pid" "the worker"
	exit "$status"
done
