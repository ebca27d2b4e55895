#!/bin/bash
# Issue 13 A/B (BENCHMARKS.md, "Issue 13 A/B on a quiet machine"): B dirs /var/tmp/ab13-before and
# /var/tmp/ab13-after hold bin/ (courier of each side, the same courier-loadgen), tpl/ and runs/.
R=$(dirname "$0")/run-one.sh
S="--fsync batch --rate-limit 1000000"
for i in 1 2 3; do
  for s in before after; do
    B=/var/tmp/ab13-$s bash $R ${s}-chat_$i "$S" chat --pairs 1000 --rate 0 --duration 10 --settle-secs 5
    B=/var/tmp/ab13-$s bash $R ${s}-p20k_$i "$S" chat --pairs 1000 --rate 20000 --duration 8 --settle-secs 5
    B=/var/tmp/ab13-$s bash $R ${s}-p1k_$i "$S" chat --pairs 1000 --rate 1000 --duration 8 --settle-secs 5
    B=/var/tmp/ab13-$s bash $R ${s}-group_$i "$S" group --groups 10 --members 200 --rate 0 --duration 10 --settle-secs 5
  done
done
