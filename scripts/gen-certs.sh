#!/usr/bin/env bash
# Creates a throw-away test CA and a server certificate for 127.0.0.1 /
# localhost in DIR (default: $FTPSFS_TEST_DIR/certs), for the FTPS servers
# started by scripts/servers.sh.
#
# Output files:
#   ca.pem, ca.key         the CA (the client trusts ca.pem)
#   server.pem, server.key the server certificate and its key
#   server-combined.pem    key + certificate in one file (Pure-FTPd's format)
#   client.pem, client.key a client certificate (mutual TLS) signed by the test CA
#   client-combined.pem    its key + certificate in one file
#   other-ca.pem           a second CA, which no test server trusts, and
#   other-client.pem/.key  a client certificate it signed
#
# Existing files are kept while the server certificate is still valid for
# another 30 days, so test configs that pin the CA path stay stable across
# restarts. Pass --force to regenerate anyway.
set -euo pipefail

force=0
if [[ ${1:-} == --force ]]; then
    force=1
    shift
fi
dir=${1:-${FTPSFS_TEST_DIR:-/var/tmp/ftpsfs-test}/certs}
days=3650

# openssl chatters on stderr (key generation dots, "signature ok"): show its
# output only when it fails.
quiet() {
    local out
    out=$("$@" 2>&1) || {
        echo "$out" >&2
        echo "gen-certs.sh: failed: $*" >&2
        return 1
    }
}

mkdir -p "$dir"
chmod 0755 "$dir"
cd "$dir"

if [[ $force -eq 0 && -s ca.pem && -s server.pem && -s server.key && -s server-combined.pem &&
    -s client.pem && -s client.key && -s client-combined.pem && -s other-client.pem ]] &&
    openssl x509 -in server.pem -noout -checkend $((30 * 86400)) >/dev/null 2>&1 &&
    openssl verify -CAfile ca.pem server.pem >/dev/null 2>&1; then
    exit 0
fi

# Keys are created under umask 077 so there is never a window where they are
# world-readable; certificates are chmod'ed to 0644 afterwards.
(
    umask 077
    rm -f ca.key ca.pem ca.srl server.key server.csr server.pem server-combined.pem

    # RSA rather than EC: every server here (vsftpd's rsa_cert_file in
    # particular) and every TLS client library handles RSA keys.
    quiet openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days "$days" \
        -keyout ca.key -out ca.pem -subj "/O=ftpsfs tests/CN=ftpsfs test CA" \
        -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -addext "subjectKeyIdentifier=hash"

    quiet openssl req -new -newkey rsa:2048 -nodes -sha256 \
        -keyout server.key -out server.csr -subj "/O=ftpsfs tests/CN=localhost"

    # webpki/rustls only look at the SAN (never the CN) and reject end-entity
    # certificates that claim CA:TRUE, hence the explicit extensions.
    cat >server.ext <<'EOF'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1, IP:::1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
    quiet openssl x509 -req -sha256 -days "$days" -in server.csr \
        -CA ca.pem -CAkey ca.key -CAcreateserial \
        -extfile server.ext -out server.pem

    cat server.key server.pem >server-combined.pem

    # Client certificates for the servers that demand one (vsftpd-mtls, proftpd-mtls):
    # one the test CA signed, and one from a CA no server trusts.
    quiet openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days "$days" \
        -keyout other-ca.key -out other-ca.pem -subj "/O=ftpsfs tests/CN=untrusted test CA" \
        -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -addext "subjectKeyIdentifier=hash"
    printf '%s\n' "basicConstraints = critical, CA:FALSE" \
        "keyUsage = critical, digitalSignature, keyEncipherment" \
        "extendedKeyUsage = clientAuth" "subjectKeyIdentifier = hash" \
        "authorityKeyIdentifier = keyid" >client.ext
    for who in client:ca other-client:other-ca; do
        name=${who%%:*} signer=${who#*:}
        quiet openssl req -new -newkey rsa:2048 -nodes -sha256 \
            -keyout "$name.key" -out "$name.csr" -subj "/O=ftpsfs tests/CN=ftpsfs-test"
        quiet openssl x509 -req -sha256 -days "$days" -in "$name.csr" \
            -CA "$signer.pem" -CAkey "$signer.key" -CAcreateserial \
            -extfile client.ext -out "$name.pem"
    done
    cat client.key client.pem >client-combined.pem
    rm -f server.csr server.ext ca.srl client.csr other-client.csr client.ext other-ca.srl other-ca.key
)
chmod 0644 ca.pem server.pem client.pem other-ca.pem other-client.pem
quiet openssl verify -CAfile ca.pem server.pem
quiet openssl verify -CAfile ca.pem client.pem
echo "gen-certs.sh: new test CA and server certificate in $dir"
