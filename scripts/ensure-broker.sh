#!/usr/bin/env bash
# ensure-broker.sh - make sure an AMQP 0-9-1 broker (RabbitMQ) is reachable for the tests and the demo.
#
# Tried in this order:
#   a. $ORBIT_MQ_URL is set: it must answer (nothing is started for it).
#   b. a broker already answers on 127.0.0.1:5672: use it.
#   c. a Docker engine runs: `docker compose up -d rabbitmq` (see docker-compose.yml) and wait for it.
#   d. running as root with apt-get (Debian/Ubuntu): install rabbitmq-server if needed, start one
#      local node with `rabbitmq-server -detached` and wait for it.
#   e. otherwise: print what to run and exit 1.
# "Answers" means: a TCP connection succeeds and the server replies to the AMQP 0-9-1 protocol header
# with a Connection.Start frame, within 3 s. A second node is never started while anything listens
# on 127.0.0.1:5672. For a local node (b, d) run as root, the rabbitmq_management plugin is
# enabled when nothing answers on 127.0.0.1:15672 (`orbit-mq admin` uses its HTTP API, and falls
# back to rabbitmqctl without it); nothing else (users, vhosts) is configured.
# Prints `broker: using <url with the password hidden>` on stdout on success.
set -euo pipefail

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

LOCAL_URL="amqp://guest:guest@127.0.0.1:5672/"
LOCAL_SHOWN="amqp://guest:***@127.0.0.1:5672/"
DOCKER_URL="amqp://orbit:orbit@127.0.0.1:5672/"   # user set in docker-compose.yml
DOCKER_SHOWN="amqp://orbit:***@127.0.0.1:5672/"
DOCKER_WAIT=60     # seconds
NODE_WAIT=90       # seconds
PORT_BUSY_WAIT=30  # seconds: something listens on 5672 but does not answer AMQP (yet)

say() { printf 'broker: %s\n' "$*" >&2; }
die() { printf 'broker: error: %s\n' "$*" >&2; exit 1; }

command -v python3 >/dev/null 2>&1 || die "python3 is not on PATH; it is needed to probe the broker"

# probe URL: prints the URL with its password hidden and returns 0 if an AMQP 0-9-1 broker answers
# there; prints the reason and returns 1 otherwise. Uses the system python3 (the venv may not exist).
probe() {
  python3 - "$1" <<'PY'
import socket
import ssl
import sys
import time
from urllib.parse import urlsplit, urlunsplit

TIMEOUT = 3.0
HEADER = b"AMQP\x00\x00\x09\x01"          # AMQP 0-9-1 protocol header
START = b"\x00\x0a\x00\x0a"               # class 10 (connection), method 10 (start)


def masked(u):
    if u.password is None:
        return urlunsplit(u)
    userinfo, hostport = u.netloc.rsplit("@", 1)
    user = userinfo.split(":", 1)[0]
    return urlunsplit(u._replace(netloc=user + ":***@" + hostport))


def check(url):
    try:
        u = urlsplit(url)
        scheme = u.scheme.lower()
        if scheme not in ("amqp", "amqps"):
            return None, "unsupported URL scheme %r (expected amqp:// or amqps://)" % u.scheme
        host = u.hostname or "localhost"
        port = u.port or (5671 if scheme == "amqps" else 5672)
    except ValueError as e:
        return None, "cannot parse the URL: %s" % e
    shown = masked(u)
    where = "%s:%d" % (host, port)
    deadline = time.monotonic() + TIMEOUT

    def left():
        return max(0.05, deadline - time.monotonic())

    try:
        sock = socket.create_connection((host, port), timeout=TIMEOUT)
    except OSError as e:
        return None, "cannot connect to %s: %s" % (where, e)
    data = b""
    try:
        if scheme == "amqps":
            # reachability probe only: the real clients verify the certificate
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            sock.settimeout(left())
            sock = ctx.wrap_socket(sock, server_hostname=host)
        sock.settimeout(left())
        sock.sendall(HEADER)
        while len(data) < 11:
            sock.settimeout(left())
            chunk = sock.recv(11 - len(data))
            if not chunk:
                break
            data += chunk
            if data[:1] != b"\x01" and len(data) >= 8:
                break  # not a frame; enough to say what it is
    except socket.timeout:
        pass
    except OSError as e:
        if not data:
            return None, "%s accepts TCP connections but the AMQP handshake failed: %s" % (where, e)
    finally:
        sock.close()
    if not data:
        return None, ("%s accepts TCP connections but did not answer the AMQP protocol header "
                      "within %.0f s (not an AMQP broker, or still starting)" % (where, TIMEOUT))
    if data.startswith(b"AMQP"):
        return None, "%s answered with protocol header %r: not AMQP 0-9-1" % (where, data[:8])
    if data[0] != 1 or (len(data) >= 11 and data[7:11] != START):
        return None, "%s did not answer with an AMQP Connection.Start frame (got %r)" % (where, data)
    return shown, None


shown, err = check(sys.argv[1])
print(shown if err is None else err)
sys.exit(0 if err is None else 1)
PY
}

# wait_local SECONDS: poll 127.0.0.1:5672 about every second until it answers or time is up.
wait_local() {
  local deadline=$((SECONDS + $1))
  while ! probe "$LOCAL_URL" >/dev/null; do
    ((SECONDS < deadline)) || return 1
    sleep 1
  done
}

port_taken() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

# A live (not zombie) RabbitMQ server VM (not a rabbitmqctl one). `kill -0` is true for zombies,
# which pile up where PID 1 does not reap orphans, so read /proc instead.
rabbit_vm_alive() {
  local d comm stat cmd
  for d in /proc/[0-9]*; do
    comm=$(cat "$d/comm" 2>/dev/null) || continue
    [[ $comm == beam* ]] || continue
    stat=$(cat "$d/stat" 2>/dev/null) || continue
    [[ ${stat##*) } != Z* ]] || continue
    cmd=$(tr '\0' ' ' 2>/dev/null <"$d/cmdline") || continue
    [[ $cmd == *" -s rabbit boot"* ]] && return 0
  done
  return 1
}

using() { printf 'broker: using %s\n' "$1"; exit 0; }

# The management HTTP API of a local node: enabled (online, a few seconds) where we may.
management_up() { (exec 3<>/dev/tcp/127.0.0.1/15672) 2>/dev/null; }
ensure_management() {
  management_up && return 0
  [[ $(id -u) == 0 ]] && command -v rabbitmq-plugins >/dev/null 2>&1 || return 0
  say "enabling the rabbitmq_management plugin (orbit-mq admin uses its HTTP API)"
  rabbitmq-plugins -q enable rabbitmq_management >&2 9>&- ||
    say "warning: could not enable rabbitmq_management; orbit-mq admin falls back to rabbitmqctl"
}
using_local() { ensure_management; using "$1"; }

# ---------------------------------------------------------------- a. ORBIT_MQ_URL
if [[ -n ${ORBIT_MQ_URL:-} ]]; then
  if out=$(probe "$ORBIT_MQ_URL"); then
    using "$out"
  fi
  die "ORBIT_MQ_URL is set but no AMQP broker answers there: $out
       Fix or unset ORBIT_MQ_URL (unset, a local broker on 127.0.0.1:5672 is used or started)."
fi

# ---------------------------------------------------------------- b. 127.0.0.1:5672
if out=$(probe "$LOCAL_URL"); then
  using_local "$out"
fi
local_reason=$out

# Serialise the "start something" part between concurrent runs (e.g. two `make test`).
# fd 9 holds the lock: it is closed (9>&-) for every child that may leave a daemon behind.
if command -v flock >/dev/null 2>&1; then
  exec 9>"${TMPDIR:-/tmp}/orbit-mq-ensure-broker.$(id -u).lock"
  flock -w 180 9 || die "timed out waiting for another ensure-broker.sh run"
  if out=$(probe "$LOCAL_URL"); then
    using_local "$out"
  fi
  local_reason=$out
fi

# Something listens on 5672 but does not speak AMQP (yet): never start a second broker next to it.
if port_taken; then
  say "127.0.0.1:5672 is in use but does not answer AMQP yet ($local_reason); waiting up to ${PORT_BUSY_WAIT} s"
  if wait_local "$PORT_BUSY_WAIT"; then
    using "$LOCAL_SHOWN"
  fi
  die "127.0.0.1:5672 is taken by something that does not answer AMQP 0-9-1; not starting another broker.
       Free the port, or set ORBIT_MQ_URL=amqp://user:pass@host:5672/ to use another broker."
fi

# ---------------------------------------------------------------- c. Docker
if command -v docker >/dev/null 2>&1 && timeout 20 docker info >/dev/null 2>&1; then
  say "no broker on 127.0.0.1:5672; starting the rabbitmq service with docker compose"
  if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
  elif command -v docker-compose >/dev/null 2>&1; then
    compose=(docker-compose)
  else
    die "a Docker engine runs but neither 'docker compose' nor 'docker-compose' is installed"
  fi
  # The broker also serves TLS on 5671 with a development CA: its files must exist first.
  bash "$ROOT/scripts/dev-ca.sh" >&2 9>&- || die "scripts/dev-ca.sh failed (it needs openssl)"
  (cd "$ROOT" && "${compose[@]}" up -d rabbitmq) >&2 9>&- ||
    die "'${compose[*]} up -d rabbitmq' failed"
  say "waiting up to ${DOCKER_WAIT} s for the container to answer on 127.0.0.1:5672"
  wait_local "$DOCKER_WAIT" ||
    die "the rabbitmq container did not answer within ${DOCKER_WAIT} s; see: ${compose[*]} logs rabbitmq"
  say "note: guest cannot log in to the container (it is loopback-only); use the compose user:"
  say "      export ORBIT_MQ_URL=$DOCKER_URL"
  using "$DOCKER_SHOWN"
fi

# ---------------------------------------------------------------- d. local rabbitmq-server (root)
if [[ $(id -u) == 0 ]] && { command -v rabbitmq-server >/dev/null 2>&1 || command -v apt-get >/dev/null 2>&1; }; then
  if ! command -v rabbitmq-server >/dev/null 2>&1; then
    say "installing rabbitmq-server with apt-get"
    # Keep the package's init script from starting a node behind our back (Debian policy-rc.d).
    tmp_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
      chmod 755 /usr/sbin/policy-rc.d
      tmp_policy=1
      trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 9>&- || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends rabbitmq-server >&2 9>&- ||
      die "apt-get install rabbitmq-server failed"
    if ((tmp_policy)); then
      rm -f /usr/sbin/policy-rc.d
      trap - EXIT
    fi
    command -v rabbitmq-server >/dev/null 2>&1 || die "rabbitmq-server is still not on PATH after apt-get install"
    # A fixed node name keeps the node independent of whether the hostname resolves.
    env_conf=/etc/rabbitmq/rabbitmq-env.conf
    if [[ -d /etc/rabbitmq ]] && ! grep -qs '^[[:space:]]*NODENAME=' "$env_conf"; then
      printf 'NODENAME=rabbit@localhost\n' >>"$env_conf"
      say "set NODENAME=rabbit@localhost in $env_conf"
    fi
  fi

  if rabbit_vm_alive; then
    say "a RabbitMQ node is already running (not listening on 5672 yet); not starting another, waiting for it"
  else
    say "starting a local node: rabbitmq-server -detached"
    rabbitmq-server -detached >&2 9>&- || die "rabbitmq-server -detached failed; see /var/log/rabbitmq/"
  fi

  # await_startup exits 69 at once while the node has not registered with epmd yet: retry it,
  # bounded, and check the port ourselves as well.
  deadline=$((SECONDS + NODE_WAIT))
  until probe "$LOCAL_URL" >/dev/null; do
    if ((SECONDS >= deadline)); then
      say "the local node did not answer on 127.0.0.1:5672 within ${NODE_WAIT} s; last lines of its log:"
      tail -n 30 /var/log/rabbitmq/*.log >&2 2>/dev/null || true
      die "RabbitMQ did not start (see /var/log/rabbitmq/)"
    fi
    if command -v rabbitmqctl >/dev/null 2>&1 &&
      rabbitmqctl -q await_startup --timeout "$((deadline - SECONDS > 1 ? deadline - SECONDS : 1))" >/dev/null 2>&1 9>&-; then
      continue
    fi
    sleep 1
  done
  using_local "$LOCAL_SHOWN"
fi

# ---------------------------------------------------------------- e. give up, say what to do
die "no RabbitMQ broker reachable at 127.0.0.1:5672 ($local_reason).
       Start one with: sudo apt-get install rabbitmq-server && sudo rabbitmq-server -detached
       (or: docker compose up -d rabbitmq), or set ORBIT_MQ_URL=amqp://user:pass@host:5672/"
