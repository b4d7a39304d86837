#!/usr/bin/env bash
# cluster-up.sh - start a separate 3-node RabbitMQ cluster orbit-c1@localhost, orbit-c2@localhost,
# orbit-c3@localhost on this machine (AMQP 127.0.0.1:5711/5712/5713, Erlang distribution
# 127.0.0.1:25711-25713; management 15711-15713 only if enabled), all state under
# $RMQ_CLUSTER_DIR (default /tmp/orbit-mq-cluster). Joins c2 and c3 to c1 and waits until every
# node's cluster_status shows all nodes running. Prints a `ready:` line; the AMQP URLs are
# written to $RMQ_CLUSTER_DIR/cluster.env (RMQ_CLUSTER_URLS, comma separated).
#
# Idempotent: nodes that run are left alone; a node whose beam died is started again (it
# rejoins by itself); a node whose app was stopped (stop_app) gets start_app; a node that is
# not a cluster member (fresh or wiped) is reset and joined; a node whose config files
# changed is restarted, one at a time. Leaves the system node rabbit@localhost alone.
#
# Needs root and the Debian package rabbitmq-server (3.10.x). Env: RMQ_CLUSTER_DIR,
# RMQ_CLUSTER_SIZE (3), RMQ_CLUSTER_PLUGINS (default none; e.g. "rabbitmq_management"),
# RMQ_CLUSTER_COOKIE (pin the cookie; default: random, kept in $RMQ_CLUSTER_DIR/home),
# RMQ_CLUSTER_TIMEOUT (180 s per boot), RMQ_CLUSTER_EXTRA_CONF (lines appended to every node's
# rabbitmq.conf, e.g. $'net_ticktime = 10\ncluster_partition_handling = pause_minority').
# Stop with cluster-down.sh (--wipe also deletes the data).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/cluster-env.sh"

[ "$(id -u)" = 0 ] || rc_die "must run as root"
[ -x "$RMQ_BIN/rabbitmq-server" ] || rc_die "$RMQ_BIN/rabbitmq-server missing: apt-get install rabbitmq-server"
command -v ss >/dev/null || rc_die "ss (iproute2) missing"
[ "$RMQ_CLUSTER_SIZE" -ge 1 ] && [ "$RMQ_CLUSTER_SIZE" -le 9 ] || rc_die "RMQ_CLUSTER_SIZE must be 1..9"
T0=$(rc_now)
SEED=$RMQ_CLUSTER_SEED

# ---------------------------------------------------------------- cookie + files
mkdir -p "$RMQ_CLUSTER_DIR"
install -d -m 700 "$RMQ_CLUSTER_HOME"
COOKIE_FILE=$RMQ_CLUSTER_HOME/.erlang.cookie
any_running() { local n; for n in "${RMQ_CLUSTER_NODES[@]}"; do [ -n "$(beam_pid "$n")" ] && return 0; done; return 1; }
if [ -n "${RMQ_CLUSTER_COOKIE:-}" ] && [ "$(cat "$COOKIE_FILE" 2>/dev/null)" != "$RMQ_CLUSTER_COOKIE" ]; then
  any_running && rc_die "RMQ_CLUSTER_COOKIE differs from the running cluster's cookie: run cluster-down.sh first"
  rm -f "$COOKIE_FILE"; printf '%s' "$RMQ_CLUSTER_COOKIE" > "$COOKIE_FILE"
fi
if [ ! -s "$COOKIE_FILE" ]; then
  rm -f "$COOKIE_FILE"
  # (not `tr -dc A-Z </dev/urandom | head -c 32`: tr dies of SIGPIPE and pipefail aborts)
  (umask 077; python3 -c 'import secrets, string
print("".join(secrets.choice(string.ascii_uppercase) for _ in range(32)), end="")' > "$COOKIE_FILE")
  rc_log "new Erlang cookie in $COOKIE_FILE"
fi
chmod 400 "$COOKIE_FILE"    # Erlang refuses a cookie file that group/others can read
printf '# written by cluster-up.sh: keeps /etc/rabbitmq/rabbitmq-env.conf out of CLI calls\n' \
  > "$RMQ_CLUSTER_DIR/cli-env.conf"

declare -A CHANGED=()
write_if_changed() {  # write_if_changed NODE PATH CONTENT (not in a pipeline: CHANGED must stick)
  if [ ! -f "$2" ] || [ "$(cat "$2")" != "$3" ]; then
    printf '%s\n' "$3" > "$2"; CHANGED[$1]=1
  fi
}
plugins_term() { local p out=""; for p in $RMQ_CLUSTER_PLUGINS; do out="${out:+$out,}$p"; done; echo "[$out]."; }

for n in "${RMQ_CLUSTER_NODES[@]}"; do
  d=$(node_dir "$n")
  mkdir -p "$d/mnesia" "$d/log"
  conf=$(
    echo "# written by cluster-up.sh for $(node_name "$n")"
    echo "listeners.tcp.1 = 127.0.0.1:$(amqp_port "$n")"
    echo "cluster_name = $RMQ_CLUSTER_NAME"
    echo "# guest/guest may log in from 127.0.0.1 only (the default)"
    echo "loopback_users.guest = true"
    echo "log.file.level = info"
    echo "log.console = false"
    if has_plugin rabbitmq_management; then
      echo "management.tcp.ip = 127.0.0.1"
      echo "management.tcp.port = $(mgmt_port "$n")"
    fi
    if has_plugin rabbitmq_stream; then
      echo "stream.listeners.tcp.1 = 127.0.0.1:$((5560 + RMQ_CLUSTER_PORT_OFFSET + ${n#c}))"
    fi
    if has_plugin rabbitmq_prometheus; then
      echo "prometheus.tcp.ip = 127.0.0.1"
      echo "prometheus.tcp.port = $((15790 + RMQ_CLUSTER_PORT_OFFSET + ${n#c}))"
    fi
    if [ -n "${RMQ_CLUSTER_EXTRA_CONF:-}" ]; then
      echo "# from RMQ_CLUSTER_EXTRA_CONF"
      printf '%s\n' "$RMQ_CLUSTER_EXTRA_CONF"
    fi
  )
  write_if_changed "$n" "$d/rabbitmq.conf" "$conf"
  write_if_changed "$n" "$d/advanced.config" "[]."
  write_if_changed "$n" "$d/enabled_plugins" "$(plugins_term)"
  write_if_changed "$n" "$d/rabbitmq-env.conf" \
    "# written by cluster-up.sh: the real settings come from the environment (cluster-env.sh)"
done

# ---------------------------------------------------------------- state consistency
# The seed's data is gone but other nodes still remember the old cluster: they would wait
# (10 x 30 s) for their old peers at boot. Start everyone from scratch instead.
seed_data=$(node_dir "$SEED")/mnesia/$(node_name "$SEED")
if [ ! -d "$seed_data" ] && [ -z "$(beam_pid "$SEED")" ]; then
  for n in "${RMQ_CLUSTER_NODES[@]}"; do
    [ "$n" = "$SEED" ] && continue
    if [ -d "$(node_dir "$n")/mnesia/$(node_name "$n")" ]; then
      [ -n "$(beam_pid "$n")" ] && rc_die "$SEED has no data but $n is running: run cluster-down.sh --wipe first"
      rc_log "$SEED has no data: wiping stale data of $n"
      rm -rf "$(node_dir "$n")/mnesia"; mkdir -p "$(node_dir "$n")/mnesia"
    fi
  done
fi

# ---------------------------------------------------------------- start / restart nodes
node_state() {  # running | app_stopped | booting | down
  local n=$1
  [ -n "$(beam_pid "$n")" ] || { [ -n "$(wrapper_pid "$n")" ] && echo booting || echo down; return; }
  if diag "$n" -q check_running >/dev/null 2>&1; then echo running
  elif grep -qi 'is booting' <<<"$(diag "$n" -q is_booting 2>/dev/null)"; then echo booting
  elif diag "$n" -q ping >/dev/null 2>&1; then echo app_stopped
  else echo booting
  fi
}
start_node() {
  local n=$1 d p u env_lines
  d=$(node_dir "$n")
  local ports=("$(amqp_port "$n")" "$(dist_port "$n")")
  has_plugin rabbitmq_management && ports+=("$(mgmt_port "$n")")
  has_plugin rabbitmq_stream && ports+=("$((5560 + RMQ_CLUSTER_PORT_OFFSET + ${n#c}))")
  has_plugin rabbitmq_prometheus && ports+=("$((15790 + RMQ_CLUSTER_PORT_OFFSET + ${n#c}))")
  for p in "${ports[@]}"; do
    u=$(port_user "$p")
    [ -z "$u" ] || rc_die "port $p for $n is already in use: $u"
  done
  rm -f "$d/beam.pid" "$d/log/erl_crash.dump"
  mapfile -t env_lines < <(node_env "$n")
  echo "=== $(date -Is) starting $(node_name "$n")" >> "$d/log/startup.log"
  # Foreground rabbitmq-server in its own session instead of -detached: with -detached a boot
  # failure (e.g. dist port in use) is silent (exit 0, no log file); here it lands in startup.log.
  # setsid -f: new session, and no process of ours is left holding the caller's stdout/stderr
  (cd "$d" && exec setsid -f sh -c 'echo $$ > "$0"; exec "$@"' "$d/wrapper.pid" \
      env -i "${env_lines[@]}" "$RMQ_BIN/rabbitmq-server" </dev/null >>"$d/log/startup.log" 2>&1)
}
wait_booted() {  # wait_booted NODE: until the rabbit app runs; fails fast if the node died
  local n=$1 d deadline
  d=$(node_dir "$n")
  deadline=$(( $(date +%s) + RMQ_CLUSTER_TIMEOUT ))
  while :; do
    # await_startup exits 69 at once while the node is not registered with epmd yet
    if [ -n "$(beam_pid "$n")" ] && ctl "$n" -q await_startup --timeout 30 >/dev/null 2>&1; then
      return 0
    fi
    if [ -z "$(wrapper_pid "$n")" ] && [ -z "$(beam_pid "$n")" ]; then
      rc_log "$(node_name "$n") died while booting; tail of $d/log/startup.log:"
      tail -n 15 "$d/log/startup.log" | cut -c1-300 >&2
      [ -f "$d/log/erl_crash.dump" ] && grep -m1 '^Slogan' "$d/log/erl_crash.dump" | cut -c1-400 >&2
      return 1
    fi
    [ "$(date +%s)" -lt "$deadline" ] || { rc_log "$(node_name "$n") not booted after ${RMQ_CLUSTER_TIMEOUT}s"; return 1; }
    sleep 0.5
  done
}

started=()
for n in "${RMQ_CLUSTER_NODES[@]}"; do
  st=$(node_state "$n")
  if { [ "$st" = running ] || [ "$st" = app_stopped ]; } && [ -n "${CHANGED[$n]:-}" ]; then
    # rolling restart: wait for it before the next node goes down (keeps quorum)
    rc_log "$(node_name "$n"): config changed, restarting it"
    ctl "$n" -q stop "$(node_dir "$n")/beam.pid" >/dev/null 2>&1 || true
    start_node "$n"; wait_booted "$n" || exit 1
    continue
  fi
  case $st in
    running)     rc_log "$(node_name "$n") already running (beam $(beam_pid "$n"))" ;;
    booting)     rc_log "$(node_name "$n") is booting"; started+=("$n") ;;
    app_stopped) rc_log "$(node_name "$n"): app stopped, start_app"; ctl "$n" -q start_app >/dev/null; started+=("$n") ;;
    down)        rc_log "starting $(node_name "$n")"; start_node "$n"; started+=("$n") ;;
  esac
done
for n in "${started[@]}"; do wait_booted "$n" || exit 1; done
[ ${#started[@]} -gt 0 ] && rc_log "booted: ${started[*]} ($(rc_since "$T0") s since start)"

# ---------------------------------------------------------------- cluster membership
status_field() {  # status_field NODE FIELD -> one node name per line (FIELD: disk_nodes|running_nodes)
  local out
  out=$(ctl "$1" -q cluster_status --formatter json 2>/dev/null) || return 0
  python3 -c 'import json,sys; print("\n".join(json.loads(sys.stdin.read()).get(sys.argv[1], [])))' \
    "$2" <<<"$out" 2>/dev/null || true
}
seed_node=$(node_name "$SEED")
to_join=()
for n in "${RMQ_CLUSTER_NODES[@]}"; do
  [ "$n" = "$SEED" ] && continue
  # (no `status_field | grep -q`: grep exits early, the writer gets EPIPE and pipefail
  # turns a match into a failure)
  members=$(status_field "$n" disk_nodes)
  grep -qxF "$seed_node" <<<"$members" || to_join+=("$n")
done
if [ ${#to_join[@]} -gt 0 ]; then
  t=$(rc_now)
  rc_log "joining ${to_join[*]} to $seed_node"
  seed_members=$(status_field "$SEED" disk_nodes)
  # phase 1, in parallel: stop_app (about 5 s with the management plugin) and reset
  pids=()
  for n in "${to_join[@]}"; do
    ( cli_log=$(node_dir "$n")/log/cli.log
      ctl "$n" -q stop_app >>"$cli_log" 2>&1
      ctl "$n" -q reset >>"$cli_log" 2>&1 || ctl "$n" -q force_reset >>"$cli_log" 2>&1 ) &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || rc_die "stop_app/reset failed; see $RMQ_CLUSTER_DIR/cN/log/cli.log"; done
  # phase 2, one node at a time: join_cluster + start_app
  for n in "${to_join[@]}"; do
    cli_log=$(node_dir "$n")/log/cli.log
    if grep -qxF "$(node_name "$n")" <<<"$seed_members"; then
      # the seed remembers an earlier incarnation of this node (its data was wiped)
      ctl "$SEED" -q forget_cluster_node "$(node_name "$n")" >>"$cli_log" 2>&1 || true
    fi
    # join_cluster prints harmless feature-flag warnings and "Failed to create a tracked
    # connection table ... node_not_running" errors on stderr: they go to cli.log
    ctl "$n" -q join_cluster "$seed_node" >>"$cli_log" 2>&1 || rc_die "join_cluster failed; see $cli_log"
    ctl "$n" -q start_app >>"$cli_log" 2>&1
    wait_booted "$n" || exit 1
  done
  rc_log "joined ${to_join[*]} in $(rc_since "$t") s"
fi

# ---------------------------------------------------------------- wait for all running
deadline=$(( $(date +%s) + RMQ_CLUSTER_TIMEOUT ))
while :; do
  ok=1
  for n in "${RMQ_CLUSTER_NODES[@]}"; do
    cnt=$(status_field "$n" running_nodes | grep -c . || true)
    [ "$cnt" = "$RMQ_CLUSTER_SIZE" ] || { ok=0; break; }
  done
  [ $ok = 1 ] && break
  [ "$(date +%s)" -lt "$deadline" ] || rc_die "cluster_status does not show $RMQ_CLUSTER_SIZE running nodes"
  sleep 0.5
done

# ---------------------------------------------------------------- summary
urls=()
for n in "${RMQ_CLUSTER_NODES[@]}"; do urls+=("amqp://guest:guest@127.0.0.1:$(amqp_port "$n")/"); done
{
  echo "# written by cluster-up.sh"
  echo "RMQ_CLUSTER_NODES=\"$(for n in "${RMQ_CLUSTER_NODES[@]}"; do printf '%s ' "$(node_name "$n")"; done | sed 's/ $//')\""
  echo "RMQ_CLUSTER_URLS=\"$(IFS=,; echo "${urls[*]}")\""
  # the same nodes as one URL of several hosts, as orbit_mq takes it (ORBIT_MQ_URL)
  echo "RMQ_CLUSTER_URL=\"amqp://guest:guest@$(for n in "${RMQ_CLUSTER_NODES[@]}"; do printf '127.0.0.1:%s,' "$(amqp_port "$n")"; done | sed 's/,$//')/\""
  echo "RMQ_CLUSTER_COOKIE_FILE=$COOKIE_FILE"
} > "$RMQ_CLUSTER_DIR/cluster.env"
for n in "${RMQ_CLUSTER_NODES[@]}"; do
  pid=$(beam_pid "$n")
  mg=""; has_plugin rabbitmq_management && mg=" mgmt=http://127.0.0.1:$(mgmt_port "$n")/"
  rc_log "  $(node_name "$n") beam=$pid rss=$(( $(rss_kb "$pid") / 1024 ))MB amqp=127.0.0.1:$(amqp_port "$n") dist=$(dist_port "$n")$mg"
done
rc_log "ready: $RMQ_CLUSTER_SIZE nodes running in cluster '$RMQ_CLUSTER_NAME' ($(rc_since "$T0") s); URLs in $RMQ_CLUSTER_DIR/cluster.env; CLI: $HERE/cluster-ctl.sh"
