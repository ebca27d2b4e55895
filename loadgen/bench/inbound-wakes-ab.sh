#!/bin/bash
# Shard wake-ups on the receiving side of cluster links, before vs after coalescing them
# (ARCHITECTURE.md "Cluster links", "Inbound"; BENCHMARKS.md). A 3-node encrypted cluster on
# loopback under `courier-loadgen chat --pairing any` (threads across nodes: forwarded
# requests, answers and push batches cross the links); at the end each node's /metrics gives
# courier_peer_inbound_queued_total (messages the link thread put into shard mailboxes) and
# courier_peer_inbound_wakes_total (shard wake-ups they took). BEFORE and AFTER are
# directories holding `courier` (and AFTER `courier-loadgen`); B a scratch directory.
# Ports 27100.. (clients), 27200.. (links), 27300.. (metrics).
set -u
B=${B:-/var/tmp/wakes-bench}; BEFORE=${BEFORE:?dir with the old courier}; AFTER=${AFTER:?dir with the new courier and courier-loadgen}
RUNS=${RUNS:-3}; DURATION=${DURATION:-10}; PAIRS=${PAIRS:-1000}
mkdir -p "$B/runs"
cd "$B"
if [ ! -d tpl3 ]; then
  mkdir -p tpl3
  for i in 0 1 2; do "$AFTER/courier" keys init --data-dir tpl3/d$i > tpl3/key$i.txt; done
  "$AFTER/courier" admin provision --node n0=tpl3/d0 --node n1=tpl3/d1 --node n2=tpl3/d2 --users $((PAIRS * 2 + 400)) --prefix load --password pw-bench-1 --argon2-m-kib 64 --out tpl3/users.txt > /dev/null
fi
key() { grep -oE '[0-9a-f]{64}' "$1" | head -1; }
metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v n="$2" '$1 == n { print $2 }'; }
run3() { # NAME BIN
  local name=$1 bin=$2 peers=() pids=()
  rm -rf run; cp -a tpl3 run
  for i in 0 1 2; do peers+=(--peer "n$i=127.0.0.1:$((27100+i))@127.0.0.1:$((27200+i))#$(key tpl3/key$i.txt)"); done
  for i in 0 1 2; do
    "$bin/courier" serve --data-dir run/d$i --node-id n$i --listen 127.0.0.1:$((27100+i)) --metrics 127.0.0.1:$((27300+i)) --fsync batch --rate-limit 1000000 "${peers[@]}" > run/out$i 2> run/log$i &
    pids+=($!)
  done
  for _ in $(seq 200); do [ "$(cat run/log0 run/log1 run/log2 | grep -c 'is linked')" -ge 6 ] && break; sleep 0.1; done
  "$AFTER/courier-loadgen" "${peers[@]}" --users run/users.txt --pairing any --json runs/$name.json --quiet chat --pairs "$PAIRS" --rate 0 --duration "$DURATION" --settle-secs 5 > /dev/null 2> runs/$name.lg.log
  local queued=0 wakes=0
  for i in 0 1 2; do
    queued=$((queued + $(metric $((27300+i)) courier_peer_inbound_queued_total)))
    wakes=$((wakes + $(metric $((27300+i)) courier_peer_inbound_wakes_total)))
  done
  kill -TERM "${pids[@]}"; wait "${pids[@]}" 2>/dev/null
  python3 - "$name" "$queued" "$wakes" "runs/$name.json" <<'PY' | tee -a runs/index.tsv
import json, sys
name, queued, wakes, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
r = json.load(open(path))
print(f"{name}\tqueued={queued}\twakes={wakes}\tper_wake={queued / max(wakes, 1):.2f}"
      f"\tacked/s={r['acked_per_sec']:.0f}\tdelivered/s={r['delivered_per_sec']:.0f}"
      f"\tlost={r['lost']}\tdup={r['duplicates']}\tooo={r['out_of_order']}")
PY
}
for r in $(seq "$RUNS"); do run3 before_$r "$BEFORE"; run3 after_$r "$AFTER"; done
