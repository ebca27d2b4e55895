#!/bin/bash
# BENCHMARKS.md "WebSocket vs TCP": one server build with --listen-ws beside its TCP listener,
# the loadgen over TCP or with --ws, interleaved, 3 rounds: idle bytes per connection (server
# RSS) and unthrottled chat. B (default /var/tmp/wsbench) holds bin/courier,
# bin/courier-loadgen, tpl/d19k + tpl/users19k.txt (courier admin provision --users 19000) and
# runs/; medians: B=... python3 medians.py KEY,… tcp_connect ws_connect tcp_chat ws_chat.
# TRANSPORT=enc runs the encrypted server (the default); otherwise --insecure-plaintext.
cd "$(dirname "$0")"
export B=${B:-/var/tmp/wsbench}
S="--fsync batch --rate-limit 1000000 --listen-ws 127.0.0.1:0"
[ "${TRANSPORT:-plain}" = enc ] || S="$S --insecure-plaintext"
P=${PREFIX:-}
for i in 1 2 3; do
  for v in tcp ws; do
    if [ $v = ws ]; then T=(--ws); else T=(); fi
    ./run-one.sh ${P}${v}_connect_$i "$S" "${T[@]}" connect --connections 18900 --rate 0 --hold 5
    ./run-one.sh ${P}${v}_chat_$i "$S" "${T[@]}" chat --pairs 1000 --rate 0 --duration 10 --settle-secs 5
  done
done
