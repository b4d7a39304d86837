#!/usr/bin/env bash
# cluster-down.sh [--wipe] - stop exactly the test-cluster nodes started by cluster-up.sh
# (orbit-c1@localhost .. orbit-cN@localhost under $RMQ_CLUSTER_DIR, default /tmp/orbit-mq-cluster).
# Each node gets `rabbitmqctl stop <pidfile>` (graceful; in parallel); a node that is still
# there after 60 s, or whose Erlang distribution does not answer, is killed by the PID in its
# pid file (SIGTERM, then SIGKILL), after checking that this PID is a beam.smp whose
# environment says RABBITMQ_NODENAME=orbit-cN@localhost. Never touches rabbit@localhost or epmd
# (epmd is shared with the system node).
# --wipe: also delete the nodes' data, logs and cookie (keeps $RMQ_CLUSTER_DIR/venv), so the
# next cluster-up.sh starts from nothing.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/cluster-env.sh"
[ "$(id -u)" = 0 ] || rc_die "must run as root"
WIPE=0
for a in "$@"; do
  case $a in --wipe) WIPE=1 ;; *) rc_die "usage: $0 [--wipe]" ;; esac
done
T0=$(rc_now)

# nodes to consider: the configured ones plus any cN dir left from a bigger cluster
nodes=("${RMQ_CLUSTER_NODES[@]}")
for d in "$RMQ_CLUSTER_DIR"/c[0-9]; do
  [ -d "$d" ] || continue
  n=$(basename "$d"); case " ${nodes[*]} " in *" $n "*) ;; *) nodes+=("$n") ;; esac
done

stop_one() {
  local n=$1 pid d t
  d=$(node_dir "$n")
  pid=$(beam_pid "$n")
  if [ -z "$pid" ]; then
    # not started by cluster-up.sh's pid file, but maybe reachable with our cookie
    if [ -f "$RMQ_CLUSTER_HOME/.erlang.cookie" ] && diag "$n" -q ping >/dev/null 2>&1; then
      ctl "$n" -q stop >/dev/null 2>&1 || true
      rc_log "$(node_name "$n") stopped (had no pid file)"
    fi
    return 0
  fi
  t=$(rc_now)
  timeout 60 env RMQ_CLUSTER_DIR="$RMQ_CLUSTER_DIR" bash -c \
    ". '$HERE/cluster-env.sh'; ctl '$n' -q stop '$d/beam.pid'" >/dev/null 2>&1 || true
  if [ -n "$(beam_pid "$n")" ]; then
    rc_log "$(node_name "$n"): graceful stop failed, SIGTERM to beam $pid"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do [ -z "$(beam_pid "$n")" ] && break; sleep 0.25; done
    if [ -n "$(beam_pid "$n")" ]; then
      rc_log "$(node_name "$n"): SIGKILL to beam $pid"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.5
    fi
  fi
  [ -z "$(beam_pid "$n")" ] || { rc_log "$(node_name "$n"): beam $pid still alive"; return 1; }
  rc_log "$(node_name "$n") stopped (beam $pid) in $(rc_since "$t") s"
}

pids=()
for n in "${nodes[@]}"; do stop_one "$n" & pids+=($!); done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done

# the sh wrappers exit when their beam does; give them a moment
for n in "${nodes[@]}"; do
  for _ in $(seq 1 20); do [ -z "$(wrapper_pid "$n")" ] && break; sleep 0.1; done
  w=$(wrapper_pid "$n"); [ -z "$w" ] || { rc_log "wrapper $w of $n still there: SIGTERM"; kill -TERM "$w" 2>/dev/null || true; }
done

if [ $WIPE = 1 ] && [ $rc = 0 ]; then
  for n in "${nodes[@]}"; do rm -rf "$(node_dir "$n")"; done
  rm -rf "$RMQ_CLUSTER_HOME" "$RMQ_CLUSTER_DIR/cluster.env" "$RMQ_CLUSTER_DIR/cli-env.conf"
  rc_log "wiped node data under $RMQ_CLUSTER_DIR (venv kept)"
fi
[ $rc = 0 ] || rc_die "some node did not stop"
rc_log "down: ${nodes[*]} stopped ($(rc_since "$T0") s); epmd and rabbit@localhost left alone"
