# A throwaway PKI and a Mosquitto broker for the demo (sourced, not run; needs lib/common.sh and
# lib/procs.sh). The same CA, certificates, broker settings and ACL as the C++ test fixtures
# (tests/support/mqtt_fixture.*).
# shellcheck shell=bash
#
#   pki_init_ca DIR                 P-256 CA: DIR/ca.crt, DIR/ca.key (DIR created)
#   pki_issue_server DIR [NAME]     DIR/NAME.crt|key (default "server"), SAN DNS:localhost,IP:127.0.0.1
#   pki_issue_client DIR CN         DIR/CN.crt|key, CN = broker username
#   free_port                       a TCP port nobody listens on (loopback)
#   wait_port PORT [SECONDS]        wait until 127.0.0.1:PORT accepts connections (default 10 s)
#   broker_write_config DIR PKI TLS_PORT PLAIN_PORT ENROLL_PORT NODE...
#                                   DIR/mosquitto.conf and DIR/acl; PLAIN_PORT 0 = no plain listener;
#                                   ENROLL_PORT 0 = no enrollment listener (TLS with server auth only,
#                                   for nodes that have no certificate yet: docs/provisioning.md)
#   broker_start DIR                start mosquitto with DIR/mosquitto.conf; PID in DIR/mosquitto.pid and
#                                   BROKER_PID; returns once the TLS port listens
#   broker_stop DIR                 stop exactly the PID in DIR/mosquitto.pid
#
# Every file is world-readable (keys included: they are throwaway) because mosquitto started as root
# drops privileges to the mosquitto user.

_pki_conf() {
  cat <<'CNF'
# written by scripts/lib/pki.sh
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost,IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
CNF
}

_pki_openssl() {
  local dir=$1
  shift
  openssl "$@" >>"$dir/openssl.log" 2>&1 || {
    cat "$dir/openssl.log" >&2
    outrider_die "openssl $1 failed"
  }
}

pki_init_ca() {
  local dir=$1
  mkdir -p "$dir"
  chmod 0755 "$dir"
  _pki_conf >"$dir/openssl.cnf"
  _pki_openssl "$dir" genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dir/ca.key"
  _pki_openssl "$dir" req -x509 -new -key "$dir/ca.key" -sha256 -days 30 -subj "/CN=Outrider demo CA" \
    -config "$dir/openssl.cnf" -extensions v3_ca -out "$dir/ca.crt"
  chmod 0644 "$dir"/ca.* "$dir/openssl.cnf"
}

# _pki_issue DIR FILENAME CN EXTENSIONS
_pki_issue() {
  local dir=$1 name=$2 cn=$3 ext=$4
  _pki_openssl "$dir" genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dir/$name.key"
  _pki_openssl "$dir" req -new -key "$dir/$name.key" -subj "/CN=$cn" -config "$dir/openssl.cnf" -out "$dir/$name.csr"
  _pki_openssl "$dir" x509 -req -in "$dir/$name.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
    -set_serial "0x$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')" -days 30 -sha256 \
    -extfile "$dir/openssl.cnf" -extensions "$ext" -out "$dir/$name.crt"
  rm -f "$dir/$name.csr"
  chmod 0644 "$dir/$name.crt" "$dir/$name.key"
}

pki_issue_server() { _pki_issue "$1" "${2:-server}" localhost server; }

pki_issue_client() {
  [[ $2 =~ ^[A-Za-z0-9._-]+$ && $2 != ca && $2 != server ]] || outrider_die "bad client name: $2"
  _pki_issue "$1" "$2" "$2" client
}

_pid_alive() { kill -0 "$1" 2>/dev/null && [[ $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) != Z ]]; }

_port_listening() { [[ -n $(ss -Hltn "sport = :$1" 2>/dev/null) ]]; }

free_port() {
  local p i
  for ((i = 0; i < 100; i++)); do
    p=$((20000 + RANDOM % 40000))
    _port_listening "$p" || {
      echo "$p"
      return 0
    }
  done
  outrider_die "no free port found"
}

wait_port() {
  local port=$1 secs=${2:-10} i
  for ((i = 0; i < secs * 20; i++)); do
    _port_listening "$port" && return 0
    sleep 0.05
  done
  return 1
}

# True when the mosquitto user (which a root-started broker becomes) can read FILE.
_mosquitto_can_read() {
  [[ $(id -u) != 0 ]] && return 0
  runuser -u mosquitto -- test -r "$1" 2>/dev/null
}

broker_write_config() {
  local dir=$1 pki=$2 tls_port=$3 plain_port=$4 enroll_port=$5
  shift 5
  mkdir -p "$dir"
  chmod 0755 "$dir"
  {
    echo "# Enrollment topics: each client only its own."
    echo "pattern readwrite outrider/v1/enroll/%u/#"
    echo
    echo "user hub"
    echo "topic readwrite outrider/v1/#"
    local n
    for n in "$@"; do
      echo
      echo "user $n"
      echo "topic readwrite outrider/v1/nodes/$n/#"
    done
  } >"$dir/acl"
  : >>"$dir/broker.log"
  chmod 0644 "$dir/acl"
  chmod 0666 "$dir/broker.log"
  [[ $(id -u) == 0 ]] && chown mosquitto: "$dir/broker.log" 2>/dev/null || true
  {
    echo "per_listener_settings true"
    echo "persistence false"
    echo "set_tcp_nodelay true"
    echo "log_dest file $dir/broker.log"
    printf 'log_type %s\n' error warning notice information
    echo "connection_messages true"
    if ! _mosquitto_can_read "$pki/server.key"; then
      # The checkout is not readable by other users (e.g. under a private home directory).
      echo "# the mosquitto user cannot read $pki, so the broker keeps running as root"
      echo "user root"
    fi
    echo
    echo "listener $tls_port 127.0.0.1"
    echo "cafile $pki/ca.crt"
    echo "certfile $pki/server.crt"
    echo "keyfile $pki/server.key"
    echo "require_certificate true"
    echo "use_identity_as_username true"
    echo "allow_anonymous false"
    echo "acl_file $dir/acl"
    if [[ $plain_port != 0 ]]; then
      echo
      echo "listener $plain_port 127.0.0.1"
      echo "allow_anonymous true"
    fi
    if [[ $enroll_port != 0 ]]; then
      # A node without a certificate yet: its client id is its node id, and it may only ask for itself
      # and read its own answer. Only the hub user (the mutual TLS listener) reads requests.
      echo
      echo "listener $enroll_port 127.0.0.1"
      echo "cafile $pki/ca.crt"
      echo "certfile $pki/server.crt"
      echo "keyfile $pki/server.key"
      echo "require_certificate false"
      echo "allow_anonymous true"
      echo "acl_file $dir/enroll.acl"
    fi
  } >"$dir/mosquitto.conf"
  if [[ $enroll_port != 0 ]]; then
    printf 'pattern write outrider/v1/enroll/%%c/req\npattern read outrider/v1/enroll/%%c/resp\n' >"$dir/enroll.acl"
    chmod 0644 "$dir/enroll.acl"
  fi
  chmod 0644 "$dir/mosquitto.conf"
}

broker_start() {
  local dir=$1 port exe
  port=$(awk '$1 == "listener" { print $2; exit }' "$dir/mosquitto.conf")
  exe=$(PATH=$PATH:/usr/sbin:/usr/local/sbin command -v mosquitto) ||
    outrider_die "mosquitto is not installed (run ./scripts/deps)"
  outrider_spawn mosquitto "$dir/mosquitto.out" "$exe" -c "$dir/mosquitto.conf"
  BROKER_PID=$OUTRIDER_LAST_PID
  echo "$BROKER_PID" >"$dir/mosquitto.pid"
  local i
  for ((i = 0; i < 200; i++)); do
    _pid_alive "$BROKER_PID" || {
      cat "$dir/mosquitto.out" "$dir/broker.log" >&2
      outrider_die "mosquitto exited at start"
    }
    _port_listening "$port" && return 0
    sleep 0.05
  done
  cat "$dir/broker.log" >&2
  outrider_die "mosquitto did not listen on port $port within 10 s"
}

broker_stop() {
  local dir=$1 pid
  [[ -f $dir/mosquitto.pid ]] || return 0
  pid=$(<"$dir/mosquitto.pid")
  outrider_stop "$pid" mosquitto
  rm -f "$dir/mosquitto.pid"
}
