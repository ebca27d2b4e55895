#!/bin/bash
# BENCHMARKS.md "The encrypted transport against plain TCP": the same binaries with and without
# --insecure-plaintext, interleaved, 3 rounds. B (default /var/tmp/encbench) holds bin/courier,
# bin/courier-loadgen, tpl/d19k + tpl/users19k.txt (courier admin provision --users 19000) and
# runs/; medians: B=... python3 medians.py KEY,… plain_connect enc_connect (etc.).
cd "$(dirname "$0")"
export B=${B:-/var/tmp/encbench}
S="--fsync batch --rate-limit 1000000"
for i in 1 2 3; do
  for v in plain enc; do
    if [ $v = plain ]; then F="$S --insecure-plaintext"; else F="$S"; fi
    ./run-one.sh ${v}_connect_$i "$F" connect --connections 18900 --rate 0 --hold 5
    ./run-one.sh ${v}_chat_$i "$F" chat --pairs 1000 --rate 0 --duration 10 --settle-secs 5
    ./run-one.sh ${v}_storm_$i "$F" storm --connections 18900 --duration 10 --settle-secs 10
  done
done
