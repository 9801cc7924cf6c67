#!/usr/bin/env bash
# Local emulators on 127.0.0.1: one moto server (all AWS services, all regions) and one
# redis-server per simulated region. Started processes are stopped by PID.
#
#   scripts/env.sh up      start what is not running; writes .tidemark/env (source it)
#   scripts/env.sh down    stop what `up` started
#   scripts/env.sh status
source "$(dirname "$0")/lib.sh"

REGIONS=(us-east-1 eu-west-1)
mkdir -p "$STATE"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
# A port p with p+10000 (the cluster bus) free as well.
cluster_port() {
  python3 - <<'PY'
import random, socket
for _ in range(200):
    p = random.randint(20000, 45000)
    try:
        for q in (p, p + 10000):
            s = socket.socket(); s.bind(("127.0.0.1", q)); s.close()
        print(p); break
    except OSError:
        pass
PY
}
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() { # name command...
  local name=$1; shift
  for _ in $(seq 1 100); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  die "$name did not come up (see $STATE/*.log)"
}

up() {
  if ! alive "$STATE/moto.pid"; then
    local port; port=$(free_port)
    command -v moto_server >/dev/null || die "moto_server missing: run scripts/setup.sh"
    moto_server -H 127.0.0.1 -p "$port" >"$STATE/moto.log" 2>&1 &
    echo $! >"$STATE/moto.pid"; echo "$port" >"$STATE/moto.port"
    wait_for moto python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/moto-api/', timeout=1)"
  fi
  for r in "${REGIONS[@]}"; do
    if ! alive "$STATE/redis-$r.pid"; then
      local port; port=$(free_port)
      redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no --daemonize no \
        >"$STATE/redis-$r.log" 2>&1 &
      echo $! >"$STATE/redis-$r.pid"; echo "$port" >"$STATE/redis-$r.port"
      wait_for "redis $r" redis-cli -p "$port" ping
    fi
  done
  # TLS: a throwaway CA and a server certificate for 127.0.0.1.
  local tls="$STATE/tls"
  if [ ! -f "$tls/server.crt" ]; then
    mkdir -p "$tls"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=tidemark-test-ca" \
      -keyout "$tls/ca.key" -out "$tls/ca.crt" >/dev/null 2>&1
    openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout "$tls/server.key" -out "$tls/server.csr" >/dev/null 2>&1
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$tls/san.ext"
    openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.crt" -CAkey "$tls/ca.key" -CAcreateserial \
      -days 2 -extfile "$tls/san.ext" -out "$tls/server.crt" >/dev/null 2>&1
  fi
  if ! alive "$STATE/redis-tls.pid"; then
    local port; port=$(free_port)
    redis-server --bind 127.0.0.1 --port 0 --tls-port "$port" --tls-cert-file "$tls/server.crt" \
      --tls-key-file "$tls/server.key" --tls-ca-cert-file "$tls/ca.crt" --tls-auth-clients no \
      --save '' --appendonly no --daemonize no >"$STATE/redis-tls.log" 2>&1 &
    echo $! >"$STATE/redis-tls.pid"; echo "$port" >"$STATE/redis-tls.port"
    wait_for "redis tls" redis-cli --tls --cacert "$tls/ca.crt" -p "$port" ping
  fi
  # Password auth: a throwaway random password, generated here and never committed.
  if ! alive "$STATE/redis-auth.pid"; then
    local port; port=$(free_port)
    openssl rand -hex 16 >"$STATE/redis-auth.password"
    redis-server --bind 127.0.0.1 --port "$port" --requirepass "$(cat "$STATE/redis-auth.password")" \
      --save '' --appendonly no --daemonize no >"$STATE/redis-auth.log" 2>&1 &
    echo $! >"$STATE/redis-auth.pid"; echo "$port" >"$STATE/redis-auth.port"
    wait_for "redis auth" sh -c "REDISCLI_AUTH=\$(cat '$STATE/redis-auth.password') redis-cli -p $port ping | grep -q PONG"
    # (IAM tests create their own users whose ACL password is a token botocore signed.)
  fi
  # Cluster mode: three masters, every slot assigned.
  if ! alive "$STATE/redis-cluster-0.pid"; then
    local nodes=()
    for i in 0 1 2; do
      local port; port=$(cluster_port)
      mkdir -p "$STATE/cluster-$i"
      (cd "$STATE/cluster-$i" && rm -f nodes.conf && exec redis-server --bind 127.0.0.1 --port "$port" --cluster-enabled yes \
        --cluster-config-file nodes.conf --save '' --appendonly no --daemonize no >"../redis-cluster-$i.log" 2>&1) &
      echo $! >"$STATE/redis-cluster-$i.pid"; echo "$port" >"$STATE/redis-cluster-$i.port"
      wait_for "redis cluster node $i" redis-cli -p "$port" ping
      nodes+=("127.0.0.1:$port")
    done
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >"$STATE/redis-cluster-create.log" 2>&1 \
      || die "redis cluster create failed (see $STATE/redis-cluster-create.log)"
    wait_for "redis cluster" sh -c "redis-cli -p $(cat "$STATE/redis-cluster-0.port") cluster info | grep -q cluster_state:ok"
  fi
  {
    echo "export TIDEMARK_REDIS_TLS_URL=rediss://127.0.0.1:$(cat "$STATE/redis-tls.port")"
    echo "export TIDEMARK_REDIS_TLS_CA=$tls/ca.crt"
    echo "export TIDEMARK_REDIS_AUTH_URL=redis://127.0.0.1:$(cat "$STATE/redis-auth.port")"
    echo "export TIDEMARK_REDIS_AUTH_PASSWORD_FILE=$STATE/redis-auth.password"
    echo "export TIDEMARK_REDIS_CLUSTER_URL=redis://127.0.0.1:$(cat "$STATE/redis-cluster-0.port")"
    echo "export TIDEMARK_MOTO_URL=http://127.0.0.1:$(cat "$STATE/moto.port")"
    for r in "${REGIONS[@]}"; do
      var="TIDEMARK_REDIS_$(echo "$r" | tr 'a-z-' 'A-Z_')"
      echo "export $var=redis://127.0.0.1:$(cat "$STATE/redis-$r.port")"
    done
  } >"$STATE/env"
  cat "$STATE/env"
}

down() {
  for f in "$STATE"/*.pid; do
    [ -f "$f" ] || continue
    if alive "$f"; then kill "$(cat "$f")" 2>/dev/null || true; fi
    rm -f "$f"
  done
  rm -f "$STATE/env"
}

status() {
  for f in "$STATE"/*.pid; do
    [ -f "$f" ] || { echo "nothing running"; return; }
    if alive "$f"; then echo "$(basename "$f" .pid): running (pid $(cat "$f"))"; else echo "$(basename "$f" .pid): dead"; fi
  done
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) die "usage: scripts/env.sh up|down|status" ;;
esac
