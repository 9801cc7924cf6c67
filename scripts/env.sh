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
    wait_for moto curl -sf "http://127.0.0.1:$port/moto-api/"
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
  {
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
