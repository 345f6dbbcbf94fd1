#!/usr/bin/env bash
# `make certs`: a local certificate authority and a server certificate for HTTPS at Nginx.
#
#   deploy/certs.sh [DIR]          (default DIR: $HEADLINE_CERTS_DIR or certs/, git-ignored)
#
# Writes DIR/ca.key + DIR/ca.crt (the local CA, 10 years) and DIR/server.key + DIR/server.crt
# (signed by that CA, 825 days, SAN DNS:localhost, IP:127.0.0.1, IP:::1 plus any names in
# HEADLINE_TLS_SAN, e.g. "DNS:headline.internal,IP:10.0.0.5"). ECDSA P-256 keys, mode 0600.
#
# Idempotent: an existing CA is kept (clients that trust it keep working); the server
# certificate is remade only when it is missing, not signed by this CA, expires within 30
# days, or lacks one of the wanted names. Clients verify with DIR/ca.crt, e.g.
#   curl --cacert certs/ca.crt https://localhost:8443/healthz
# Never use this CA outside your machine: its key sits in DIR unencrypted.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${1:-${HEADLINE_CERTS_DIR:-$ROOT/certs}}"
SAN="DNS:localhost,IP:127.0.0.1,IP:0:0:0:0:0:0:0:1${HEADLINE_TLS_SAN:+,$HEADLINE_TLS_SAN}"
CA_DAYS=3650
SERVER_DAYS=825   # the most that Apple/Chrome accept for a server certificate
say() { printf 'certs: %s\n' "$*"; }

command -v openssl >/dev/null || { echo "certs: openssl not found (apt-get install openssl)" >&2; exit 1; }
umask 077
mkdir -p "$DIR"
chmod 700 "$DIR"
cd "$DIR"

if [ ! -s ca.key ] || [ ! -s ca.crt ]; then
    openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout ca.key.tmp -out ca.crt.tmp -days "$CA_DAYS" -sha256 \
        -subj "/O=Headline Studio/CN=Headline Studio local CA" \
        -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    mv ca.key.tmp ca.key && mv ca.crt.tmp ca.crt
    rm -f server.crt  # a new CA needs a new server certificate
    say "made a local CA: $DIR/ca.crt"
else
    say "local CA kept: $DIR/ca.crt"
fi

server_ok() {
    [ -s server.key ] && [ -s server.crt ] || return 1
    openssl verify -CAfile ca.crt server.crt >/dev/null 2>&1 || return 1
    openssl x509 -in server.crt -noout -checkend $((30 * 86400)) >/dev/null 2>&1 || return 1
    local have want
    have="$(openssl x509 -in server.crt -noout -ext subjectAltName 2>/dev/null | tail -n +2 | tr -d ' ')"
    have="${have//IPAddress:/IP:}"
    have="${have//0:0:0:0:0:0:0:1/::1}"
    for want in ${SAN//,/ }; do
        want="${want//0:0:0:0:0:0:0:1/::1}"
        case ",$have," in *",$want,"*) ;; *) return 1 ;; esac
    done
}

if server_ok; then
    say "server certificate kept: $DIR/server.crt ($(openssl x509 -in server.crt -noout -enddate))"
else
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout server.key.tmp -out server.csr -subj "/O=Headline Studio/CN=localhost" 2>/dev/null
    printf '%s\n' "subjectAltName=$SAN" "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" \
        "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid,issuer" > server.ext
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 \
        -days "$SERVER_DAYS" -extfile server.ext -out server.crt.tmp 2>/dev/null
    mv server.key.tmp server.key && mv server.crt.tmp server.crt
    rm -f server.csr server.ext
    say "made the server certificate: $DIR/server.crt ($SAN)"
fi
chmod 600 ca.key server.key
chmod 644 ca.crt server.crt
