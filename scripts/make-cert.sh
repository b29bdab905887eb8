#!/usr/bin/env bash
# make-cert.sh — a local CA and a certificate it signs, for trying wss://
# (examples/wsgate-tls.toml) and for the TLS benchmarks.
#
#   scripts/make-cert.sh [DIR] [NAME...]     # default: examples/certs localhost
#
# Writes DIR/ca.pem (trust it in a browser, or pass it to a client),
# DIR/ca.key, and DIR/server.pem + DIR/server.key for the names given
# (DNS names; 127.0.0.1 and ::1 are always added as IP addresses).
# KEY=rsa makes RSA 2048 keys instead of ECDSA P-256. Needs openssl.
set -euo pipefail

DIR="${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/examples/certs}"
shift || true
NAMES=("$@")
[[ ${#NAMES[@]} -gt 0 ]] || NAMES=(localhost)
KEY="${KEY:-ec}"
command -v openssl >/dev/null || { echo "make-cert.sh: openssl is required (apt-get install openssl)" >&2; exit 1; }
mkdir -p "$DIR"

newkey() {
  if [[ "$KEY" == rsa ]]; then
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1" 2>/dev/null
  else
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
  fi
}

if [[ ! -f "$DIR/ca.pem" ]]; then
  newkey "$DIR/ca.key"
  openssl req -x509 -new -key "$DIR/ca.key" -out "$DIR/ca.pem" -days 825 \
    -subj "/CN=wsgate local test CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
fi

san="IP:127.0.0.1,IP:::1"
for n in "${NAMES[@]}"; do san="DNS:$n,$san"; done
newkey "$DIR/server.key"
openssl req -new -key "$DIR/server.key" -subj "/CN=${NAMES[0]}" -out "$DIR/server.csr"
openssl x509 -req -in "$DIR/server.csr" -CA "$DIR/ca.pem" -CAkey "$DIR/ca.key" \
  -CAcreateserial -out "$DIR/server.pem" -days 825 \
  -extfile <(printf "subjectAltName=%s\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n" "$san") 2>/dev/null
rm -f "$DIR/server.csr" "$DIR/ca.srl"
echo "make-cert.sh: $DIR/server.pem and server.key for ${NAMES[*]} (signed by $DIR/ca.pem)"
