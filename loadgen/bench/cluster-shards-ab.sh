#!/bin/bash
# 1 node (--shards 3) vs 3 nodes (--shards 1 each): same total shards; chat unthrottled, chat at
# 20K msgs/s, group 10x200 with members spread over the nodes (--pairing any). Needs the
# templates cluster-ab.sh makes (tpl1/, tpl3/ in B); writes runs/NAME.json and NAME.metrics.
set -u
B=${B:-/var/tmp/cbench}; BIN=${BIN:-/var/tmp/bench-final/bin}
cd $B
key() { grep -oE '[0-9a-f]{64}' "$1" | head -1; }
metrics() { for p in "$@"; do curl -s 127.0.0.1:$p/metrics; done | awk '/^courier_peer_forwards_total/{f+=$NF} /^courier_peer_push_batches_total/{b+=$NF} /^courier_frames_in_total/{i+=$NF} END{print "forwards="f, "push_batches="b, "client_frames_in="i}'; }
run3() { local name=$1; shift; local peers=() pids=()
  rm -rf run; cp -a tpl3 run
  for i in 0 1 2; do peers+=(--peer "n$i=127.0.0.1:$((17100+i))@127.0.0.1:$((17200+i))#$(key tpl3/key$i.txt)"); done
  for i in 0 1 2; do
    $BIN/courier serve --data-dir run/d$i --node-id n$i --listen 127.0.0.1:$((17100+i)) --metrics 127.0.0.1:$((17300+i)) --shards 1 --fsync batch --rate-limit 1000000 "${peers[@]}" > run/out$i 2> run/log$i &
    pids+=($!)
  done
  for _ in $(seq 200); do [ "$(cat run/log0 run/log1 run/log2 | grep -c 'is linked')" -ge 6 ] && break; sleep 0.1; done
  $BIN/courier-loadgen "${peers[@]}" --users run/users.txt --json runs/$name.json --quiet "$@" > /dev/null 2> runs/$name.lg.log
  metrics 17300 17301 17302 > runs/$name.metrics
  kill -TERM "${pids[@]}"; wait "${pids[@]}" 2>/dev/null
  echo -e "$name\t$(date +%T)\tload=$(cut -d' ' -f1-3 /proc/loadavg)" >> runs/index.tsv
}
run1() { local name=$1; shift
  rm -rf run; cp -a tpl1 run
  $BIN/courier serve --data-dir run/d0 --listen 127.0.0.1:17100 --shards 3 --fsync batch --rate-limit 1000000 > run/out0 2> run/log0 &
  local pid=$!
  for _ in $(seq 100); do grep -q "listening on" run/out0 2>/dev/null && break; sleep 0.1; done
  $BIN/courier-loadgen --server 127.0.0.1:17100 --server-key "$(key tpl1/key0.txt)" --users run/users.txt --json runs/$name.json --quiet "$@" > /dev/null 2> runs/$name.lg.log
  kill -TERM $pid; wait $pid 2>/dev/null
  echo -e "$name\t$(date +%T)\tload=$(cut -d' ' -f1-3 /proc/loadavg)" >> runs/index.tsv
}
for r in 1 2 3; do
  run1 s1chat_$r chat --pairs 1000 --rate 0 --duration 10 --settle-secs 5
  run3 s3chat_$r chat --pairs 1000 --rate 0 --duration 10 --settle-secs 5
  run1 s1p20k_$r chat --pairs 1000 --rate 20000 --duration 8 --settle-secs 5
  run3 s3p20k_$r chat --pairs 1000 --rate 20000 --duration 8 --settle-secs 5
  run1 s1group_$r group --groups 10 --members 200 --rate 0 --duration 10 --settle-secs 5
  run3 s3group_$r group --groups 10 --members 200 --rate 0 --duration 10 --settle-secs 5
done
