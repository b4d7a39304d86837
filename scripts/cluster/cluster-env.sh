# cluster-env.sh - settings and helpers shared by cluster-up.sh, cluster-down.sh and
# cluster-ctl.sh. Source it; do not run it.
#
# A separate RabbitMQ cluster on this one machine, next to (and independent of) the system
# node rabbit@localhost (5672/5671/15672/5552/25672, /etc/rabbitmq, /var/lib/rabbitmq):
#   node orbit-orbit-cN@localhost  AMQP 127.0.0.1:571N  dist 127.0.0.1:2571N  (mgmt 127.0.0.1:1571N if enabled)
#   (c1 -> 5711/25711/15711, c2 -> 5712/25712/15712, c3 -> 5713/25713/15713)
# Everything lives under $RMQ_CLUSTER_DIR (default /tmp/orbit-mq-cluster):
#   home/.erlang.cookie   the cluster's own cookie (HOME of the nodes and of the CLI calls)
#   cN/rabbitmq.conf, cN/advanced.config, cN/enabled_plugins, cN/rabbitmq-env.conf
#   cN/mnesia/  (RABBITMQ_MNESIA_BASE)   cN/log/  (RABBITMQ_LOG_BASE, startup.log, crash dump)
#   cN/beam.pid (RABBITMQ_PID_FILE: the beam.smp PID)   cN/wrapper.pid (the rabbitmq-server sh)
#   cluster.env           RMQ_CLUSTER_URLS etc. for tests (written by cluster-up.sh)
# Nodes run as root, started with /usr/lib/rabbitmq/bin/* directly: NOT /usr/sbin/*, which is
# the Debian wrapper that su's to user rabbitmq (HOME=/var/lib/rabbitmq, i.e. the system
# node's cookie).

RMQ_CLUSTER_DIR=${RMQ_CLUSTER_DIR:-/tmp/orbit-mq-cluster}
RMQ_CLUSTER_SIZE=${RMQ_CLUSTER_SIZE:-3}                       # 1..9 nodes: c1..cN
# plugins, space separated, e.g. RMQ_CLUSTER_PLUGINS=rabbitmq_management (HTTP API on 1571N).
# Default none: with management, stop_app/stop take 5 s longer per node (the plugin waits 5 s
# while stopping) and a cold cluster-up takes ~31 s instead of ~20 s.
RMQ_CLUSTER_PLUGINS=${RMQ_CLUSTER_PLUGINS:-}
RMQ_CLUSTER_NAME=${RMQ_CLUSTER_NAME:-orbit-mq-cluster}
# ports 5700 + offset + N etc.: the offset keeps clear of other local clusters on 5701-5709
RMQ_CLUSTER_PORT_OFFSET=${RMQ_CLUSTER_PORT_OFFSET:-10}
RMQ_CLUSTER_HOST=localhost                                     # node names orbit-cN@localhost
RMQ_CLUSTER_HOME=$RMQ_CLUSTER_DIR/home
RMQ_CLUSTER_TIMEOUT=${RMQ_CLUSTER_TIMEOUT:-180}                # seconds to wait for a node boot
RMQ_BIN=/usr/lib/rabbitmq/bin
RMQ_CLUSTER_SEED=c1

RMQ_CLUSTER_NODES=()
for _i in $(seq 1 "$RMQ_CLUSTER_SIZE"); do RMQ_CLUSTER_NODES+=("c$_i"); done
unset _i

rc_log() { echo "[$(basename "$0")] $*" >&2; }
rc_die() { rc_log "ERROR: $*"; exit 1; }
rc_now() { date +%s.%N; }
rc_since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }

node_name() { echo "orbit-$1@$RMQ_CLUSTER_HOST"; }
node_dir()  { echo "$RMQ_CLUSTER_DIR/$1"; }
amqp_port() { echo $((5700 + RMQ_CLUSTER_PORT_OFFSET + ${1#c})); }
dist_port() { echo $((25700 + RMQ_CLUSTER_PORT_OFFSET + ${1#c})); }
mgmt_port() { echo $((15700 + RMQ_CLUSTER_PORT_OFFSET + ${1#c})); }
has_plugin() { case " $RMQ_CLUSTER_PLUGINS " in *" $1 "*) return 0 ;; esac; return 1; }

# Environment of a node's server process, one NAME=VALUE per line (used with env -i so that
# nothing leaks in from the caller, e.g. a stray RABBITMQ_NODENAME).
node_env() {
  local n=$1 d
  d=$(node_dir "$n")
  cat <<EOF
PATH=/usr/sbin:/usr/bin:/sbin:/bin
HOME=$RMQ_CLUSTER_HOME
LANG=C.UTF-8
LC_ALL=C.UTF-8
ERL_CRASH_DUMP=$d/log/erl_crash.dump
RABBITMQ_NODENAME=$(node_name "$n")
RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
RABBITMQ_NODE_PORT=$(amqp_port "$n")
RABBITMQ_DIST_PORT=$(dist_port "$n")
RABBITMQ_CONFIG_FILE=$d/rabbitmq.conf
RABBITMQ_ADVANCED_CONFIG_FILE=$d/advanced.config
RABBITMQ_ENABLED_PLUGINS_FILE=$d/enabled_plugins
RABBITMQ_CONF_ENV_FILE=$d/rabbitmq-env.conf
RABBITMQ_MNESIA_BASE=$d/mnesia
RABBITMQ_LOG_BASE=$d/log
RABBITMQ_PID_FILE=$d/beam.pid
RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}
EOF
}

# rmq_cli TOOL ARGS...  - run rabbitmqctl / rabbitmq-diagnostics / rabbitmq-queues / ... as root
# with the cluster's cookie (HOME=$RMQ_CLUSTER_HOME). The CLI would otherwise use
# /root/.erlang.cookie (and create one with a random value if it is missing).
rmq_cli() {
  local tool=$1
  shift
  env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$RMQ_CLUSTER_HOME" LANG=C.UTF-8 LC_ALL=C.UTF-8 \
    RABBITMQ_CONF_ENV_FILE="$RMQ_CLUSTER_DIR/cli-env.conf" \
    "$RMQ_BIN/$tool" "$@"
}
ctl()  { local n=$1; shift; rmq_cli rabbitmqctl -n "$(node_name "$n")" "$@"; }
diag() { local n=$1; shift; rmq_cli rabbitmq-diagnostics -n "$(node_name "$n")" "$@"; }

# pid_is PID COMM [NODENAME]: PID is alive (not a zombie: PID 1 here reaps slowly, and kill -0
# is true for zombies), its comm is COMM and, if given, its environment has RABBITMQ_NODENAME.
pid_is() {
  local pid=$1 comm=$2 node=${3:-}
  [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
  [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ] || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ] || return 1
  if [ -n "$node" ]; then
    grep -qzxF "RABBITMQ_NODENAME=$node" "/proc/$pid/environ" 2>/dev/null || return 1
  fi
  return 0
}
# beam_pid NODE: prints the PID of the node's beam.smp if it is running (from its pid file)
beam_pid() {
  local n=$1 pid
  pid=$(cat "$(node_dir "$n")/beam.pid" 2>/dev/null || true)
  pid_is "$pid" beam.smp "$(node_name "$n")" && echo "$pid"
  return 0
}
# wrapper_pid NODE: PID of the `sh rabbitmq-server` process that runs (and waits for) the beam
wrapper_pid() {
  local n=$1 pid
  pid=$(cat "$(node_dir "$n")/wrapper.pid" 2>/dev/null || true)
  pid_is "$pid" rabbitmq-server "$(node_name "$n")" && echo "$pid"
  return 0
}
# port_user PORT: prints the `ss` line of whatever listens on TCP PORT (nothing if free)
port_user() { ss -Hltnp "sport = :$1" 2>/dev/null | head -1; }
rss_kb() { awk '/^VmRSS/{print $2}' "/proc/$1/status" 2>/dev/null; }
