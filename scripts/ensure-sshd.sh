#!/usr/bin/env bash
# ensure-sshd.sh - a loopback OpenSSH server for the SSH tunnel tests.
#
# Listens on 127.0.0.1:$ORBIT_MQ_SSHD_PORT (default 2222) only, with its own throwaway host key,
# a client key pair for root, an authorized_keys and a known_hosts file, all kept in
# $ORBIT_MQ_SSHD_DIR (default /tmp/orbit-mq-sshd):
#     id_ed25519            the client key (log in as root with it)
#     known_hosts           the server's host key for [127.0.0.1]:PORT and [localhost]:PORT
#     sshd_config, sshd.pid, sshd.log, ssh_host_ed25519_key
# The system's /etc/ssh and port 22 are left alone. Needs root: sshd starts as root for its
# privilege separation, and openssh-server is installed with apt-get when it is missing (package
# scripts are kept from starting the system sshd).
# Idempotent: a running server from an earlier call is reused (a changed config is re-read with
# SIGHUP). Concurrent calls are serialised with a lock.
# Prints `ready: …` on stdout when a key login as root works; progress and errors on stderr.
set -euo pipefail

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

DIR=${ORBIT_MQ_SSHD_DIR:-/tmp/orbit-mq-sshd}
PORT=${ORBIT_MQ_SSHD_PORT:-2222}
SSHD=/usr/sbin/sshd           # sshd refuses to re-exec itself unless started by absolute path
APT_LOCK_WAIT=180
START_WAIT=10                 # seconds for the port to accept connections

say() { printf 'sshd: %s\n' "$*" >&2; }
die() { printf 'sshd: error: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) == 0 ]] || die "must run as root (sshd needs it for privilege separation); try: sudo bash $0"
[[ $PORT =~ ^[0-9]+$ ]] || die "ORBIT_MQ_SSHD_PORT must be a port number, not '$PORT'"

exec 9>/run/orbit-mq-ensure-sshd.lock
flock -w 300 9 || die "timed out waiting for another ensure-sshd.sh run"

# ---------------------------------------------------------------- packages
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

if [[ ! -x $SSHD ]] || ! command -v ssh >/dev/null 2>&1 || ! command -v ssh-keygen >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 || die "no $SSHD and no apt-get: install OpenSSH's server and client"
  apt_log=$(mktemp /tmp/ensure-sshd-apt.XXXXXX)
  apt_get() {
    DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout="$APT_LOCK_WAIT" "$@" \
      >>"$apt_log" 2>&1 9>&-
  }
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then   # keep the package from starting the system sshd
    printf '#!/bin/sh\n# temporary, from orbit_mq scripts/ensure-sshd.sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  say "installing openssh-server with apt-get (log: $apt_log)"
  if ! apt_get install -y --no-install-recommends openssh-server openssh-client; then
    say "apt-get install failed: running apt-get update first"
    apt_get update || say "apt-get update failed (continuing; see $apt_log)"
    apt_get install -y --no-install-recommends openssh-server openssh-client ||
      { tail -n 20 "$apt_log" >&2; die "apt-get install openssh-server failed (log: $apt_log)"; }
  fi
  if grep -qs 'orbit_mq scripts/ensure-sshd.sh' /usr/sbin/policy-rc.d; then
    rm -f /usr/sbin/policy-rc.d
    trap - EXIT
  fi
  rm -f "$apt_log"
  installed openssh-server || die "openssh-server is still not installed"
fi

# ---------------------------------------------------------------- keys and files
install -d -m 700 "$DIR"
[[ -s $DIR/ssh_host_ed25519_key ]] ||
  ssh-keygen -q -t ed25519 -N '' -C orbit-mq-test-host -f "$DIR/ssh_host_ed25519_key"
[[ -s $DIR/id_ed25519 ]] || ssh-keygen -q -t ed25519 -N '' -C orbit-mq-test-client -f "$DIR/id_ed25519"
cp "$DIR/id_ed25519.pub" "$DIR/authorized_keys"
chmod 600 "$DIR/authorized_keys"
host_key=$(cut -d' ' -f1,2 "$DIR/ssh_host_ed25519_key.pub")
printf '[127.0.0.1]:%s %s\n[localhost]:%s %s\n' "$PORT" "$host_key" "$PORT" "$host_key" >"$DIR/known_hosts"

config=$(cat <<EOF
# written by orbit_mq scripts/ensure-sshd.sh: a loopback sshd for the tunnel tests
Port $PORT
ListenAddress 127.0.0.1
HostKey $DIR/ssh_host_ed25519_key
PidFile $DIR/sshd.pid
AuthorizedKeysFile $DIR/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
# the files live under /tmp, whose permissions StrictModes would refuse
StrictModes no
UsePAM no
AllowTcpForwarding yes
GatewayPorts no
PermitOpen any
PermitListen any
X11Forwarding no
PrintMotd no
MaxStartups 100:30:200
MaxSessions 50
ClientAliveInterval 30
LogLevel VERBOSE
EOF
)
changed=0
if [[ ! -f $DIR/sshd_config ]] || [[ $(cat "$DIR/sshd_config") != "$config" ]]; then
  printf '%s\n' "$config" >"$DIR/sshd_config"
  changed=1
fi
install -d -m 755 /run/sshd   # privilege separation directory (init scripts normally make it)
"$SSHD" -t -f "$DIR/sshd_config" || die "sshd refuses $DIR/sshd_config"

# ---------------------------------------------------------------- the server
# our_pid: the pid in our pidfile if that process is a live sshd (PID 1 here may leave dead
# daemons as zombies for a while, so `kill -0` is not enough).
our_pid() {
  local pid stat comm
  [[ -s $DIR/sshd.pid ]] || return 1
  pid=$(<"$DIR/sshd.pid")
  read -r stat 2>/dev/null <"/proc/$pid/stat" || return 1
  [[ ${stat##*) } == Z* || ${stat##*) } == X* ]] && return 1
  read -r comm 2>/dev/null <"/proc/$pid/comm" || return 1
  [[ $comm == sshd ]] || return 1
  printf '%s' "$pid"
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

if pid=$(our_pid); then
  if ((changed)); then
    say "config changed: sshd (pid $pid) re-reads it"
    kill -HUP "$pid"
  else
    say "sshd is running (pid $pid)"
  fi
else
  port_open && die "127.0.0.1:$PORT is taken by another program; set ORBIT_MQ_SSHD_PORT to a free port"
  say "starting sshd on 127.0.0.1:$PORT"
  "$SSHD" -f "$DIR/sshd_config" -E "$DIR/sshd.log" 9>&-   # daemonizes
fi

deadline=$((SECONDS + START_WAIT))
until port_open; do
  ((SECONDS < deadline)) || { tail -n 20 "$DIR/sshd.log" >&2 || true; die "sshd does not listen on 127.0.0.1:$PORT"; }
  sleep 0.1
done

# ---------------------------------------------------------------- check a login
out=$(ssh -p "$PORT" -i "$DIR/id_ed25519" -o IdentitiesOnly=yes -o BatchMode=yes \
  -o StrictHostKeyChecking=yes -o UserKnownHostsFile="$DIR/known_hosts" -o ConnectTimeout=10 \
  root@127.0.0.1 'echo login-ok' 2>&1 9>&-) || true
if [[ $out != *login-ok* ]]; then
  tail -n 20 "$DIR/sshd.log" >&2 || true
  die "a key login as root failed: $out"
fi
printf 'ready: sshd pid %s on 127.0.0.1:%s; user root; key %s; known_hosts %s\n' \
  "$(our_pid)" "$PORT" "$DIR/id_ed25519" "$DIR/known_hosts"
