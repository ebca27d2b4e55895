#!/bin/bash
# 1 node vs a 3-node encrypted cluster on one host (loopback), same binaries, same users
# (BENCHMARKS.md, "One node and a three-node cluster"). BIN holds courier and courier-loadgen;
# B a scratch directory (templates tpl1/, tpl3/ made once, runs/ with one JSON per run).
set -u
B=${B:-/var/tmp/cbench}; BIN=${BIN:-/var/tmp/bench-final/bin}
mkdir -p "$B"
cd $B
if [ ! -d tpl3 ]; then
  mkdir -p tpl3 tpl1
  for i in 0 1 2; do $BIN/courier keys init --data-dir tpl3/d$i > tpl3/key$i.txt; done
  $BIN/courier keys init --data-dir tpl1/d0 > tpl1/key0.txt
  $BIN/courier admin provision --node n0=tpl3/d0 --node n1=tpl3/d1 --node n2=tpl3/d2 --users 2400 --prefix load --password pw-bench-1 --argon2-m-kib 64 --out tpl3/users.txt > /dev/null
  $BIN/courier admin provision --data-dir tpl1/d0 --users 2400 --prefix load --password pw-bench-1 --argon2-m-kib 64 --out tpl1/users.txt > /dev/null
fi
key() { grep -oE '[0-9a-f]{64}' "$1" | head -1; }
run3() { # NAME PAIRING
  local name=$1 pairing=$2 peers=() pids=()
  rm -rf run; cp -a tpl3 run
  for i in 0 1 2; do peers+=(--peer "n$i=127.0.0.1:$((17100+i))@127.0.0.1:$((17200+i))#$(key tpl3/key$i.txt)"); done
  for i in 0 1 2; do
    $BIN/courier serve --data-dir run/d$i --node-id n$i --listen 127.0.0.1:$((17100+i)) --fsync batch --rate-limit 1000000 "${peers[@]}" > run/out$i 2> run/log$i &
    pids+=($!)
  done
  for _ in $(seq 200); do [ "$(cat run/log0 run/log1 run/log2 | grep -c 'is linked')" -ge 6 ] && break; sleep 0.1; done
  $BIN/courier-loadgen "${peers[@]}" --users run/users.txt --pairing $pairing --json runs/$name.json --quiet chat --pairs 1000 --rate 0 --duration 10 --settle-secs 5 > /dev/null 2> runs/$name.lg.log
  kill -TERM "${pids[@]}"; wait "${pids[@]}" 2>/dev/null
  echo -e "$name\t$(date +%T)\tload=$(cut -d' ' -f1-3 /proc/loadavg)" >> runs/index.tsv
}
run1() { # NAME
  local name=$1
  rm -rf run; cp -a tpl1 run
  $BIN/courier serve --data-dir run/d0 --listen 127.0.0.1:17100 --fsync batch --rate-limit 1000000 > run/out0 2> run/log0 &
  local pid=$!
  for _ in $(seq 100); do grep -q "listening on" run/out0 2>/dev/null && break; sleep 0.1; done
  $BIN/courier-loadgen --server 127.0.0.1:17100 --server-key "$(key tpl1/key0.txt)" --users run/users.txt --json runs/$name.json --quiet chat --pairs 1000 --rate 0 --duration 10 --settle-secs 5 > /dev/null 2> runs/$name.lg.log
  kill -TERM $pid; wait $pid 2>/dev/null
  echo -e "$name\t$(date +%T)\tload=$(cut -d' ' -f1-3 /proc/loadavg)" >> runs/index.tsv
}
mkdir -p runs
for r in 1 2 3; do run1 one_$r; run3 threeany_$r any; run3 threelocal_$r local; done
