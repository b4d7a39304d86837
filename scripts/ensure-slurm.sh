#!/usr/bin/env bash
# ensure-slurm.sh - make sure a Slurm cluster is usable for the psij plugin's tests.
#
#   a. `sinfo` shows an `up` partition with a usable node and `scontrol ping` reaches the
#      controller: use that cluster as it is (nothing is installed, written or started).
#   b. not root, or no apt-get: print what to run and exit 1 (callers decide if that is fatal).
#   c. otherwise set up a single-node cluster on this machine from Debian packages:
#        - apt-get install --no-install-recommends slurm-wlm munge (if missing; package scripts
#          are kept from starting services with a temporary /usr/sbin/policy-rc.d),
#        - /etc/slurm/slurm.conf: one node named `hostname -s` (NodeAddr 127.0.0.1), partition
#          `debug` (default), no accounting, no cgroups; rewritten only when its content changes,
#          and then the Slurm daemons are restarted,
#        - munged (as user munge), slurmctld, slurmd: each started only if not running,
#        - waits (bounded) for the node to be idle, resumes it if it is down or drained,
#        - runs a smoke job (`sbatch --wait --wrap true`, bounded).
#      No systemd is needed. Finished jobs stay visible in squeue/scontrol for MinJobAge=300 s;
#      sacct does not work (no accounting storage).
# Idempotent: a second run finds the cluster up (a.) and returns at once. A second slurmctld is
# never started. RabbitMQ is not touched.
# Prints `slurm: ready (partition <default partition>)` on stdout on success; progress on stderr.
set -euo pipefail

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

PARTITION=debug
CLUSTER=orbitmq
CONF=/etc/slurm/slurm.conf
STATE_DIR=/var/lib/slurm/slurmctld
SPOOL_DIR=/var/lib/slurm/slurmd
LOG_DIR=/var/log/slurm
CTLD_PIDFILE=/run/slurmctld.pid
SLURMD_PIDFILE=/run/slurmd.pid
MARKER="# written by orbit_mq scripts/ensure-slurm.sh"
NODE_WAIT=30    # seconds for the node to become idle
CTLD_WAIT=20    # seconds for slurmctld to answer `scontrol ping`
SMOKE_WAIT=60   # seconds for the smoke job
APT_LOCK_WAIT=180

say() { printf 'slurm: %s\n' "$*" >&2; }
die() { printf 'slurm: error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- probes
# cluster_usable: some partition is up and one of its nodes can run jobs.
cluster_usable() {
  local out
  out=$(timeout 15 sinfo -h -o '%a %t' 2>/dev/null) || return 1
  grep -Eq '^up (idle|mix|alloc|comp)[^*]*$' <<<"$out"
}
ctld_pings() { timeout 15 scontrol ping 2>/dev/null | grep -q 'is UP'; }
default_partition() {
  local p
  p=$(timeout 15 sinfo -h -o %P 2>/dev/null | sed -n 's/\*$//p' | head -n1) || true
  printf '%s' "${p:-$PARTITION}"
}
ready() { printf 'slurm: ready (partition %s)\n' "$(default_partition)"; exit 0; }

# live_pid NAME: the pid of a running (not zombie) process whose comm is NAME. PID 1 here may not
# reap orphaned daemons promptly, so `kill -0` would report dead daemons as alive: read /proc.
live_pid() {
  local d comm stat
  for d in /proc/[0-9]*; do
    read -r comm 2>/dev/null <"$d/comm" || continue
    [[ $comm == "$1" ]] || continue
    read -r stat 2>/dev/null <"$d/stat" || continue
    [[ ${stat##*) } == Z* || ${stat##*) } == X* ]] && continue
    printf '%s' "${d#/proc/}"
    return 0
  done
  return 1
}

# local_daemons_ok: false only when the cluster is the one this script sets up and one of its
# daemons is not running here (slurmctld notices a dead slurmd only after SlurmdTimeout).
local_daemons_ok() {
  grep -qsF "$MARKER" "$CONF" || return 0
  local d
  for d in munged slurmctld slurmd; do
    live_pid "$d" >/dev/null || return 1
  done
}

# ---------------------------------------------------------------- a. already usable
if command -v sinfo >/dev/null 2>&1 && local_daemons_ok && cluster_usable && ctld_pings; then
  ready
fi

# ---------------------------------------------------------------- b. cannot set it up here
if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
  if ! local_daemons_ok; then
    reason="munged, slurmctld or slurmd of the local cluster ($CONF) is not running"
  elif command -v sinfo >/dev/null 2>&1; then
    reason="sinfo is installed but no partition is up with a usable node, or slurmctld does not answer"
  else
    reason="Slurm is not installed (no sinfo on PATH)"
  fi
  say "not available: $reason"
  if command -v apt-get >/dev/null 2>&1; then
    say "to set up a single-node cluster here (Debian/Ubuntu), run as root:"
    say "    sudo bash $(readlink -f "${BASH_SOURCE[0]}")"
  else
    say "install Slurm and munge with your package manager and start munged, slurmctld and slurmd,"
    say "or run the tests on a machine with Slurm; the slurm tests skip until then"
  fi
  exit 1
fi

# ---------------------------------------------------------------- c. set up a local cluster
# Serialise concurrent runs (two starts would race for the daemons). fd 9 holds the lock and is
# closed for every child that may stay behind as a daemon.
exec 9>/run/orbit-mq-ensure-slurm.lock
flock -w 300 9 || die "timed out waiting for another ensure-slurm.sh run"
if command -v sinfo >/dev/null 2>&1 && local_daemons_ok && cluster_usable && ctld_pings; then
  ready
fi

started_at=$SECONDS

# stop NAME [PIDFILE]: stop every live NAME process (TERM, then KILL after 10 s); remove PIDFILE
# (slurmctld cannot remove its own after dropping privileges, and a stale one confuses dpkg).
stop() {
  local pid i n=0
  while pid=$(live_pid "$1"); do
    ((++n <= 3)) || die "cannot stop $1 (pid $pid)"
    say "stopping $1 (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
      [[ $(live_pid "$1" || true) == "$pid" ]] || break
      sleep 0.1
    done
    if [[ $(live_pid "$1" || true) == "$pid" ]]; then
      kill -9 "$pid" 2>/dev/null || true
      sleep 0.5
    fi
  done
  if [[ -n ${2:-} ]]; then rm -f "$2"; fi
}

# start_daemon NAME CMD...: start a daemonizing program, stdio to a file shown on failure.
start_daemon() {
  local name=$1 out
  shift
  out=$(mktemp)
  say "starting $name"
  if ! "$@" </dev/null >"$out" 2>&1 9>&-; then
    cat "$out" >&2
    rm -f "$out"
    die "$name did not start ($*)"
  fi
  rm -f "$out"
}

tail_logs() {
  local f
  for f in "$@"; do
    [[ -s $f ]] || continue
    say "last lines of $f:"
    tail -n 20 "$f" >&2 || true
  done
}

# ---------------------------------------------------------------- packages
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

missing=()
for p in slurm-wlm munge; do
  installed "$p" || missing+=("$p")
done
if ((${#missing[@]})); then
  apt_log=$(mktemp /tmp/ensure-slurm-apt.XXXXXX)
  apt_get() {
    DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout="$APT_LOCK_WAIT" "$@" \
      >>"$apt_log" 2>&1 9>&-
  }
  # Keep the packages' init scripts from starting daemons behind our back (Debian policy-rc.d).
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\n# temporary, from orbit_mq scripts/ensure-slurm.sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  say "installing ${missing[*]} with apt-get (log: $apt_log)"
  if compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
    lists=1
  else
    lists=0
  fi
  ok=0
  if ((lists)) && apt_get install -y --no-install-recommends "${missing[@]}"; then
    ok=1
  else
    say "apt-get install failed or no package lists yet: running apt-get update first"
    apt_get update || say "apt-get update failed (continuing; see $apt_log)"
    apt_get install -y --no-install-recommends "${missing[@]}" && ok=1
  fi
  if [[ -e /usr/sbin/policy-rc.d ]] && grep -q 'orbit_mq scripts/ensure-slurm.sh' /usr/sbin/policy-rc.d; then
    rm -f /usr/sbin/policy-rc.d
    trap - EXIT
  fi
  if ((!ok)); then
    tail -n 20 "$apt_log" >&2 || true
    die "apt-get install ${missing[*]} failed (full log: $apt_log)"
  fi
  rm -f "$apt_log"
fi
for c in munged slurmctld slurmd sbatch sinfo scontrol; do
  command -v "$c" >/dev/null 2>&1 || die "$c is not on PATH after installing slurm-wlm munge"
done
getent passwd munge >/dev/null || die "user munge does not exist (the munge package creates it)"
getent passwd slurm >/dev/null || die "user slurm does not exist (the slurm-wlm packages create it)"

# ---------------------------------------------------------------- munge
if [[ ! -s /etc/munge/munge.key ]]; then   # normally created by the package's postinst
  say "creating /etc/munge/munge.key"
  install -d -o munge -g munge -m 700 /etc/munge
  (umask 077 && dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none)
fi
chown munge:munge /etc/munge/munge.key
chmod 400 /etc/munge/munge.key
install -d -o munge -g munge -m 755 /run/munge
install -d -o munge -g munge -m 700 /var/log/munge /var/lib/munge

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
if pid=$(live_pid munged); then
  say "munged is running (pid $pid)"
else
  rm -f /run/munge/munged.pid
  # munged refuses to run as root with a socket directory owned by munge: run it as munge.
  start_daemon munged runuser -u munge -- munged
fi
for ((i = 0; i < 50; i++)); do munge_ok && break; sleep 0.1; done
munge_ok || { tail_logs /var/log/munge/munged.log; die "munge -n | unmunge fails: munged does not work"; }

# ---------------------------------------------------------------- slurm.conf
host=$(hostname -s)
[[ -n $host ]] || die "hostname -s is empty"
cpus=$(nproc)
mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.95)}' /proc/meminfo)
[[ $mem_mb -gt 0 ]] || die "cannot read MemTotal from /proc/meminfo"

# RealMemory: unset means 1 MB (every --mem request is rejected); above the real value the node
# drains ("Low RealMemory"); so 95 % of MemTotal. The default SchedulerParameters leave a new job
# PENDING for ~2.5 s; these start it within half a second.
conf=$(cat <<EOF
$MARKER: single node, no accounting, no cgroups.
# Rewritten when it differs from what the script would write (hostname, CPUs or memory changed).
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1,batch_sched_delay=0,sched_min_interval=0
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MailProg=/bin/true
ReturnToService=2
StateSaveLocation=$STATE_DIR
SlurmdSpoolDir=$SPOOL_DIR
SlurmctldPidFile=$CTLD_PIDFILE
SlurmdPidFile=$SLURMD_PIDFILE
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=5
Waittime=0
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
)

# slurmctld runs as SlurmUser and must own its state directory; slurmd stays root.
install -d -o slurm -g slurm -m 755 /var/lib/slurm "$STATE_DIR" "$LOG_DIR"
install -d -o root -g root -m 755 "$SPOOL_DIR"

changed=0
if [[ ! -f $CONF ]] || [[ $(cat "$CONF") != "$conf" ]]; then
  install -d -m 755 /etc/slurm
  if [[ -f $CONF ]] && ! grep -qF "$MARKER" "$CONF"; then
    backup="$CONF.orbit-mq-backup.$(date +%Y%m%d%H%M%S)"
    cp -p "$CONF" "$backup"
    say "saved the existing $CONF (not written by this script) as $backup"
  fi
  printf '%s\n' "$conf" >"$CONF.tmp"
  chmod 644 "$CONF.tmp"
  mv -f "$CONF.tmp" "$CONF"
  changed=1
  say "wrote $CONF (node $host, CPUs=$cpus, RealMemory=$mem_mb)"
fi

if ((changed)); then
  if live_pid slurmd >/dev/null || live_pid slurmctld >/dev/null; then
    say "slurm.conf changed: restarting the Slurm daemons"
  fi
  stop slurmd "$SLURMD_PIDFILE"
  stop slurmctld "$CTLD_PIDFILE"
  # slurmctld refuses to start ("CLUSTER NAME MISMATCH") on state saved by another cluster.
  if [[ -f $STATE_DIR/clustername ]] && [[ $(cat "$STATE_DIR/clustername") != "$CLUSTER" ]]; then
    old="$STATE_DIR.old.$(date +%Y%m%d%H%M%S)"
    say "$STATE_DIR holds state of cluster '$(cat "$STATE_DIR/clustername")': moving it to $old"
    mv "$STATE_DIR" "$old"
    install -d -o slurm -g slurm -m 755 "$STATE_DIR"
  fi
fi

# ---------------------------------------------------------------- daemons (munged is up)
if pid=$(live_pid slurmctld); then
  say "slurmctld is running (pid $pid)"
else
  rm -f "$CTLD_PIDFILE"
  start_daemon slurmctld slurmctld   # daemonizes, drops to SlurmUser=slurm
fi
deadline=$((SECONDS + CTLD_WAIT))
until ctld_pings; do
  if ((SECONDS >= deadline)); then
    tail_logs "$LOG_DIR/slurmctld.log"
    die "slurmctld does not answer 'scontrol ping' after ${CTLD_WAIT} s (see $LOG_DIR/slurmctld.log)"
  fi
  sleep 0.2
done

if pid=$(live_pid slurmd); then
  say "slurmd is running (pid $pid)"
else
  rm -f "$SLURMD_PIDFILE"
  start_daemon slurmd slurmd   # daemonizes, stays root
fi

# ---------------------------------------------------------------- wait for an idle node
deadline=$((SECONDS + NODE_WAIT))
last_resume=-100
state=""
while :; do
  avail=$(timeout 10 sinfo -h -p "$PARTITION" -o %a 2>/dev/null | head -n1) || avail=""
  state=$(timeout 10 sinfo -h -n "$host" -o %t 2>/dev/null | head -n1) || state=""
  if [[ $avail == up && $state =~ ^(idle|mix|alloc|comp)$ ]]; then
    break
  fi
  if ((SECONDS >= deadline)); then
    tail_logs "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log"
    die "node $host is '${state:-unknown}' (partition $PARTITION '${avail:-unknown}') after ${NODE_WAIT} s"
  fi
  # down/drained (e.g. "Low RealMemory" earlier, or not responding after a restart): resume it
  # once slurmd answers again; retried every 5 s.
  if [[ $state =~ ^(down|drain|drng|fail|failg) ]] && ((SECONDS - last_resume >= 5)); then
    say "node $host is '$state': scontrol update nodename=$host state=resume"
    timeout 10 scontrol update nodename="$host" state=resume 2>/dev/null || true
    last_resume=$SECONDS
  fi
  sleep 0.3
done
say "node $host is $state"

# ---------------------------------------------------------------- smoke job
smoke_dir=$(mktemp -d /tmp/ensure-slurm-smoke.XXXXXX)
chmod 755 "$smoke_dir"
t0=$SECONDS
if ! (cd "$smoke_dir" && timeout "$SMOKE_WAIT" sbatch --wait --quiet -J orbit-mq-smoke -p "$PARTITION" \
  -o "$smoke_dir/out" -t 1 --wrap true) </dev/null >"$smoke_dir/sbatch" 2>&1 9>&-; then
  cat "$smoke_dir/sbatch" "$smoke_dir/out" >&2 2>/dev/null || true
  timeout 10 squeue -n orbit-mq-smoke >&2 2>/dev/null || true
  timeout 10 scancel -n orbit-mq-smoke 2>/dev/null || true
  tail_logs "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log"
  rm -rf "$smoke_dir"
  die "the smoke job (sbatch --wait --wrap true) failed or took more than ${SMOKE_WAIT} s"
fi
rm -rf "$smoke_dir"
say "smoke job ok in $((SECONDS - t0)) s; set up in $((SECONDS - started_at)) s ($(sinfo -V))"
ready
