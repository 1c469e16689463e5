#!/usr/bin/env bash
# Test certificates for the TLS (wss://) checks (scripts/tls-interop.sh): a CA and server
# certificates for `localhost` and `127.0.0.1` signed by it, with Debian's `openssl`.
#
# Usage: scripts/tls-certs.sh OUTDIR
#
# Writes, in OUTDIR:
#   ca.pem               the test CA's certificate (what clients trust)
#   ca-key.pem           its key (only used to sign the others)
#   server-cert.pem      RSA 2048 leaf: SAN DNS:localhost, IP:127.0.0.1; serverAuth
#   server-chain.pem     leaf + CA certificate
#   server-key.pem       the leaf's RSA key, PKCS#8 ("BEGIN PRIVATE KEY")
#   rsa-key.pem          the same RSA key, PKCS#1 ("BEGIN RSA PRIVATE KEY")
#   ec-chain.pem         EC P-256 leaf (same names) + CA certificate
#   ec-key.pem           its key, PKCS#8 ("BEGIN PRIVATE KEY")
#   ec-sec1-key.pem      the same EC key, SEC1 ("BEGIN EC PRIVATE KEY")
#   expired-chain.pem    RSA leaf (same names) valid 2020-01-01 to 2020-01-31 only + CA
#   expired-key.pem      its key, PKCS#8
#   other-key.pem        an unrelated RSA 2048 key, PKCS#8 (matches no certificate here)
#
# Idempotent: when every file is there, the chains verify against ca.pem and the leaves are
# valid for at least 30 more days, it does nothing. Otherwise it makes them all anew.
# Installs `openssl` with apt-get when it is missing (as root). No prompts.
set -euo pipefail

log() { printf '[tls-certs] %s\n' "$*" >&2; }
die() { printf '[tls-certs] error: %s\n' "$*" >&2; exit 1; }

[[ $# -eq 1 && -n $1 ]] || die "usage: $0 OUTDIR"
OUT=$1

if ! command -v openssl >/dev/null; then
    [[ "$(id -u)" -eq 0 ]] || die "openssl is missing and installing it needs root (apt-get install openssl)"
    log "installing Debian's openssl"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends openssl \
        || { apt-get update -q && apt-get install -y -q --no-install-recommends openssl; }
fi

FILES=(ca.pem ca-key.pem server-cert.pem server-chain.pem server-key.pem rsa-key.pem
       ec-chain.pem ec-key.pem ec-sec1-key.pem expired-chain.pem expired-key.pem other-key.pem)

up_to_date() {
    local f
    for f in "${FILES[@]}"; do [[ -s "$OUT/$f" ]] || return 1; done
    openssl verify -CAfile "$OUT/ca.pem" "$OUT/server-chain.pem" >/dev/null 2>&1 || return 1
    openssl verify -CAfile "$OUT/ca.pem" "$OUT/ec-chain.pem" >/dev/null 2>&1 || return 1
    openssl x509 -in "$OUT/server-chain.pem" -noout -checkend $((30 * 86400)) >/dev/null 2>&1 || return 1
    openssl x509 -in "$OUT/ec-chain.pem" -noout -checkend $((30 * 86400)) >/dev/null 2>&1 || return 1
    openssl x509 -in "$OUT/ca.pem" -noout -checkend $((30 * 86400)) >/dev/null 2>&1 || return 1
    # the key files must belong to the leaves
    [[ "$(openssl x509 -in "$OUT/server-chain.pem" -noout -pubkey)" == "$(openssl pkey -in "$OUT/server-key.pem" -pubout)" ]] || return 1
    [[ "$(openssl x509 -in "$OUT/ec-chain.pem" -noout -pubkey)" == "$(openssl pkey -in "$OUT/ec-key.pem" -pubout)" ]] || return 1
}

if up_to_date 2>/dev/null; then
    log "$OUT: certificates are current"
    exit 0
fi

mkdir -p "$OUT"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/uringws-tls-certs.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
export OPENSSL_CONF=/dev/null # no site configuration; everything is on the command line

serial() { printf '0x%s' "$(openssl rand -hex 12)"; }

cat >"$TMP/leaf.ext" <<'EOF'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
EOF

# --- CA ----------------------------------------------------------------------------------------
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$TMP/ca-key.pem" 2>/dev/null
openssl req -x509 -new -key "$TMP/ca-key.pem" -sha256 -days 3650 -set_serial "$(serial)" \
    -subj "/O=uringws tests/CN=uringws test CA" \
    -addext "basicConstraints = critical, CA:TRUE, pathlen:0" \
    -addext "keyUsage = critical, keyCertSign, cRLSign" \
    -addext "subjectKeyIdentifier = hash" \
    -out "$TMP/ca.pem"

# leaf KEY CERT [extra x509 args]: signs a certificate for KEY with the CA
leaf() {
    local key=$1 cert=$2
    shift 2
    openssl req -new -key "$key" -subj "/O=uringws tests/CN=localhost" -out "$TMP/leaf.csr"
    openssl x509 -req -in "$TMP/leaf.csr" -CA "$TMP/ca.pem" -CAkey "$TMP/ca-key.pem" \
        -set_serial "$(serial)" -sha256 -extfile "$TMP/leaf.ext" -out "$cert" "$@" 2>/dev/null
}

# --- RSA leaf (PKCS#8 and PKCS#1 forms of its key) --------------------------------------------
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$TMP/server-key.pem" 2>/dev/null
openssl pkey -in "$TMP/server-key.pem" -traditional -out "$TMP/rsa-key.pem"
leaf "$TMP/server-key.pem" "$TMP/server-cert.pem" -days 825
cat "$TMP/server-cert.pem" "$TMP/ca.pem" >"$TMP/server-chain.pem"

# --- EC P-256 leaf ------------------------------------------------------------------------------
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$TMP/ec-key.pem" 2>/dev/null
openssl pkey -in "$TMP/ec-key.pem" -traditional -out "$TMP/ec-sec1-key.pem"
leaf "$TMP/ec-key.pem" "$TMP/ec-cert.pem" -days 825
cat "$TMP/ec-cert.pem" "$TMP/ca.pem" >"$TMP/ec-chain.pem"

# --- expired RSA leaf ---------------------------------------------------------------------------
# `openssl x509 -not_before/-not_after` needs OpenSSL 3.4; `openssl ca` takes explicit dates
# in every version (-startdate/-enddate), so sign this one through a throwaway CA database.
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$TMP/expired-key.pem" 2>/dev/null
openssl req -new -key "$TMP/expired-key.pem" -subj "/O=uringws tests/CN=localhost" -out "$TMP/expired.csr"
mkdir "$TMP/db"
: >"$TMP/db/index.txt"
openssl rand -hex 12 >"$TMP/db/serial"
cat >"$TMP/ca.cnf" <<EOF
[ ca ]
default_ca = test_ca
[ test_ca ]
dir = $TMP/db
database = \$dir/index.txt
serial = \$dir/serial
new_certs_dir = \$dir
certificate = $TMP/ca.pem
private_key = $TMP/ca-key.pem
default_md = sha256
policy = policy_any
unique_subject = no
copy_extensions = none
[ policy_any ]
commonName = supplied
organizationName = optional
EOF
openssl ca -batch -notext -config "$TMP/ca.cnf" -extfile "$TMP/leaf.ext" \
    -startdate 20200101000000Z -enddate 20200131000000Z \
    -in "$TMP/expired.csr" -out "$TMP/expired-cert.pem" 2>/dev/null
cat "$TMP/expired-cert.pem" "$TMP/ca.pem" >"$TMP/expired-chain.pem"

# --- an unrelated key ---------------------------------------------------------------------------
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$TMP/other-key.pem" 2>/dev/null

for f in "${FILES[@]}"; do
    install -m 0644 "$TMP/$f" "$OUT/$f"
done
chmod 0600 "$OUT"/*key.pem
up_to_date || die "the certificates just made do not verify (openssl $(openssl version))"
log "made a test CA and certificates in $OUT ($(openssl version | cut -d' ' -f1-2))"
