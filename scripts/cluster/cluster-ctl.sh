#!/usr/bin/env bash
# cluster-ctl.sh [TOOL] [cN] ARGS... - run a RabbitMQ CLI tool against the test cluster with
# the cluster's own cookie ($RMQ_CLUSTER_DIR/home/.erlang.cookie).
#   TOOL: rabbitmqctl (default), rabbitmq-diagnostics, rabbitmq-queues, rabbitmq-plugins,
#         rabbitmq-upgrade, rabbitmq-streams
#   cN:   shorthand for -n orbit-cN@localhost; without it and without -n, the node is orbit-c1@localhost
# Examples:
#   cluster-ctl.sh cluster_status
#   cluster-ctl.sh c2 list_queues name type leader members online messages
#   cluster-ctl.sh rabbitmq-queues quorum_status cc.qq
#   cluster-ctl.sh -n orbit-c1@localhost stop_app
# Plain `rabbitmqctl -n orbit-c1@localhost ...` as root does NOT work here: /usr/sbin/rabbitmqctl
# su's to user rabbitmq and uses /var/lib/rabbitmq/.erlang.cookie (the system node's).
# That form works with `--erlang-cookie "$(cat /tmp/orbit-mq-cluster/home/.erlang.cookie)"`.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/cluster-env.sh"
tool=rabbitmqctl
case ${1:-} in
  rabbitmqctl|rabbitmq-diagnostics|rabbitmq-queues|rabbitmq-plugins|rabbitmq-upgrade|rabbitmq-streams)
    tool=$1; shift ;;
esac
node=""
if [[ ${1:-} =~ ^c[0-9]$ ]]; then node=$(node_name "$1"); shift; fi
has_n=0
for a in "$@"; do case $a in -n|--node|-n*|--node=*) has_n=1 ;; esac; done
if [ -n "$node" ]; then
  rmq_cli "$tool" -n "$node" "$@"
elif [ $has_n = 1 ]; then
  rmq_cli "$tool" "$@"
else
  rmq_cli "$tool" -n "$(node_name "$RMQ_CLUSTER_SEED")" "$@"
fi
