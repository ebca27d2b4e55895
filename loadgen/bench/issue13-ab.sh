#!/bin/bash
# Issue 13 A/B (BENCHMARKS.md, "Issue 13 A/B on a quiet machine"): B dirs $P-before and $P-after
# (P defaults to /var/tmp/ab13) hold bin/ (courier of each side, the same courier-loadgen), tpl/
# and runs/.
R=$(dirname "$0")/run-one.sh
P=${P:-/var/tmp/ab13}
S="--fsync batch --rate-limit 1000000"
for i in 1 2 3; do
  for s in before after; do
    B=$P-$s bash $R ${s}-chat_$i "$S" chat --pairs 1000 --rate 0 --duration 10 --settle-secs 5
    B=$P-$s bash $R ${s}-p20k_$i "$S" chat --pairs 1000 --rate 20000 --duration 8 --settle-secs 5
    B=$P-$s bash $R ${s}-p1k_$i "$S" chat --pairs 1000 --rate 1000 --duration 8 --settle-secs 5
    B=$P-$s bash $R ${s}-group_$i "$S" group --groups 10 --members 200 --rate 0 --duration 10 --settle-secs 5
  done
done
