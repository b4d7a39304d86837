#!/usr/bin/env bash
# A development CA and the certificates of docker-compose's TLS broker: never for production.
#
#   scripts/dev-ca.sh                  CA + server certificate into ./dev-tls (git-ignored)
#   scripts/dev-ca.sh client NAME      a client certificate CN=NAME (EXTERNAL login as NAME)
#   DEV_TLS_DIR=/some/dir scripts/dev-ca.sh …   somewhere else
#
# The server certificate names the compose service (rabbitmq), localhost, 127.0.0.1 and ::1,
# so `amqps://…@localhost:5671/` from the host and `amqps://…@rabbitmq:5671/` from a
# container both pass hostname checks with ORBIT_MQ_CA_FILE=dev-tls/ca.pem.
# Idempotent: an existing CA and server certificate are kept.
set -euo pipefail

DIR="${DEV_TLS_DIR:-$(cd "$(dirname "$0")/.." && pwd)/dev-tls}"
DAYS=825
command -v openssl >/dev/null || { echo "error: dev-ca.sh needs openssl" >&2; exit 1; }
mkdir -p "$DIR"
cd "$DIR"

if [[ ! -f ca.pem || ! -f ca.key ]]; then
  (umask 077 && openssl genrsa -out ca.key 2048 2>/dev/null)
  openssl req -x509 -new -key ca.key -sha256 -days "$DAYS" -subj "/CN=orbit-mq dev CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out ca.pem
fi

# issue NAME CN EXTENSIONS: NAME.pem and NAME.key signed by the CA
issue() {
  local name=$1 cn=$2 extensions=$3
  (umask 077 && openssl genrsa -out "$name.key" 2048 2>/dev/null)
  openssl req -new -key "$name.key" -subj "/CN=$cn" -out "$name.csr"
  printf '%b' "$extensions" > "$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days "$DAYS" \
    -sha256 -extfile "$name.ext" -out "$name.pem" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
}

if [[ "${1:-}" == "client" ]]; then
  user="${2:?usage: dev-ca.sh client NAME}"
  [[ "$user" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]] || { echo "error: bad user name: $user" >&2; exit 2; }
  issue "client-$user" "$user" \
    'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n'
  chmod 600 "client-$user.key"
  echo "ready: $DIR/client-$user.pem, $DIR/client-$user.key (CN=$user)"
  exit 0
fi

if [[ ! -f server.pem || ! -f server.key ]]; then
  issue server localhost \
    'subjectAltName=DNS:rabbitmq,DNS:localhost,IP:127.0.0.1,IP:::1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n'
fi
# The broker in the container runs as its own user and reads the bind-mounted key, so the
# development server key is world-readable; the CA key, which could sign anything, is not.
chmod 644 server.key server.pem ca.pem
chmod 600 ca.key
echo "ready: $DIR (ca.pem, server.pem, server.key)"
