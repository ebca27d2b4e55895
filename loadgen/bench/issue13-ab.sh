#!/bin/bash
# Issue 13 A/B (BENCHMARKS.md, "Issue 13 A/B"): B dirs $P-before and $P-after (P defaults to
# /var/tmp/ab13) hold bin/ (courier of each side, the same courier-loadgen), tpl/ and runs/.
# Rounds are interleaved before/after; ROUNDS (default 3) of: unthrottled 1:1, 20K/s and 1K/s
# paced with `--fsync batch` and with `--fsync never` (the same run's reference for the
# durable tail), group 10×200, and 18,900 idle connections.
R=$(dirname "$0")/run-one.sh
P=${P:-/var/tmp/ab13}
S="--rate-limit 1000000"
for i in $(seq "${ROUNDS:-3}"); do
  for s in before after; do
    B=$P-$s bash $R ${s}-chat_$i "--fsync batch $S" chat --pairs 1000 --rate 0 --duration 10 --settle-secs 5
    for f in batch never; do
      B=$P-$s bash $R ${s}-p20k-${f}_$i "--fsync $f $S" chat --pairs 1000 --rate 20000 --duration 8 --settle-secs 5
      B=$P-$s bash $R ${s}-p1k-${f}_$i "--fsync $f $S" chat --pairs 1000 --rate 1000 --duration 8 --settle-secs 5
    done
    B=$P-$s bash $R ${s}-group_$i "--fsync batch $S" group --groups 10 --members 200 --rate 0 --duration 10 --settle-secs 5
    B=$P-$s bash $R ${s}-conn_$i "--fsync batch $S" connect --connections 18900 --rate 0 --hold 5
  done
done
