#!/bin/bash
# Chat throughput with and without the push outbox (issue 14), same binaries, runs interleaved:
# push-ab.sh PREFIX. Runs PREFIX-off_N and PREFIX-on_N (N = 1..3) with run-one.sh; medians with
#   python3 loadgen/bench/medians.py delivered_per_sec,del.p50,del.p99 PREFIX-off PREFIX-on
# "on" sets --push-gateway to a port where nothing listens: the loadgen's users are all online
# and have no push registration, so no notification is ever queued; what is measured is the
# per-message decision (a Directory lookup per member), the cost every online chat pays.
set -u
prefix=${1:-push}
R=$(dirname "$0")/run-one.sh
base="--fsync batch --rate-limit 1000000 --insecure-plaintext"
for i in 1 2 3; do
  bash "$R" "$prefix-off_$i" "$base" chat --pairs 1000 --rate 0 --duration 10 --settle-secs 5
  bash "$R" "$prefix-on_$i" "$base --push-gateway http://127.0.0.1:9" chat --pairs 1000 --rate 0 --duration 10 --settle-secs 5
done
