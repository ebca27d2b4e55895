#!/bin/bash
# Every loadgen run in BENCHMARKS.md, in the order they were made (medians of the 3 runs).
cd "$(dirname "$0")"
S="--fsync batch --rate-limit 1000000"
N="--fsync never --rate-limit 1000000"
for i in 1 2 3; do
  ./run-one.sh connect_$i "$S" connect --connections 18900 --rate 0 --hold 5
done
for i in 1 2 3; do
  for r in 10000 50000 100000 0; do
    ./run-one.sh chat_r${r}_$i "$S" chat --pairs 1000 --rate $r --duration 10 --settle-secs 5
  done
  ./run-one.sh chatnever_r0_$i "$N" chat --pairs 1000 --rate 0 --duration 10 --settle-secs 5
done
for i in 1 2 3; do
  ./run-one.sh group_$i "$S" group --groups 10 --members 200 --rate 0 --publishers 1 --duration 10 --settle-secs 5
  ./run-one.sh groupnever_$i "$N" group --groups 10 --members 200 --rate 0 --publishers 1 --duration 10 --settle-secs 5
done
for i in 1 2 3; do
  ./run-one.sh storm_$i "$S" storm --connections 18900 --duration 10 --settle-secs 10
done
for i in 1 2 3; do
  ./run-one.sh chatnever_r50000_$i "$N" chat --pairs 1000 --rate 50000 --duration 10 --settle-secs 5
  ./run-one.sh chat_r50000_w2_$i "$S" chat --pairs 1000 --rate 50000 --duration 10 --settle-secs 5 --workers 2
done
for i in 1 2 3; do
  for p in 500 2500 9450; do
    ./run-one.sh scale_p${p}_$i "$S" chat --pairs $p --rate 10000 --duration 10 --settle-secs 5
  done
  ./run-one.sh gsize_10_$i "$S" group --groups 200 --members 10 --rate 0 --publishers 1 --duration 10 --settle-secs 5
  ./run-one.sh gsize_100_$i "$S" group --groups 20 --members 100 --rate 0 --publishers 1 --duration 10 --settle-secs 5
  ./run-one.sh gsize_1000_$i "$S" group --groups 2 --members 1000 --rate 0 --publishers 1 --duration 10 --settle-secs 5
done
# The latency sweep (one run each).
for r in 20000 30000 40000; do
  ./run-one.sh sweep_r${r}_1 "$S" chat --pairs 1000 --rate $r --duration 10 --settle-secs 5
done
