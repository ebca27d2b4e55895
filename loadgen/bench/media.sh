#!/usr/bin/env bash
# Media upload and download MiB/s through courier-cli against `cp` of the same file on the same
# disk. Usage: loadgen/bench/media.sh BIN_DIR WORK_DIR [MIB] [RUNS]
# BIN_DIR holds `courier` and `courier-cli`; WORK_DIR is on the disk to measure (the server's
# data directory, the files and the copies all live there). Each run uploads fresh random
# content (identical content would be deduplicated and not sent at all).
set -euo pipefail
bin=$1 work=$2 mib=${3:-64} runs=${4:-3}
mkdir -p "$work"
data="$work/data"
rm -rf "$data" "$work"/*.cfg "$work"/f* "$work"/cp* "$work"/dl*
"$bin/courier" serve --data-dir "$data" --listen 127.0.0.1:0 --argon2-m-kib 64 --rate-limit 1000000 \
    > "$work/server.out" 2> "$work/server.log" &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    addr=$(sed -n 's/^courier listening on //p' "$work/server.out" | head -1)
    [ -n "$addr" ] && break
    sleep 0.1
done
export COURIER_SERVER=$addr
COURIER_CONFIG=$work/alice.cfg "$bin/courier-cli" register alice --password alice-password >/dev/null
COURIER_CONFIG=$work/bob.cfg "$bin/courier-cli" register bob --password bob-password >/dev/null
secs() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N); echo "$t1 - $t0" | bc -l; }
for run in $(seq "$runs"); do
    f=$work/f$run
    head -c $((mib << 20)) /dev/urandom > "$f"
    sync
    cp_s=$(secs sh -c "cp '$f' '$work/cp$run' && sync '$work/cp$run'")
    up_s=$(secs env COURIER_CONFIG="$work/alice.cfg" "$bin/courier-cli" upload "$f" --to bob)
    id=$(b3sum --no-names "$f" 2>/dev/null || COURIER_CONFIG=$work/alice.cfg "$bin/courier-cli" --json upload "$f" | sed 's/.*"media":"\([0-9a-f]*\)".*/\1/')
    dl_s=$(secs env COURIER_CONFIG="$work/bob.cfg" "$bin/courier-cli" download "$id" "$work/dl$run")
    cmp "$f" "$work/dl$run"
    printf 'run %d: %d MiB  cp+sync %.1f MiB/s  upload %.1f MiB/s  download %.1f MiB/s\n' "$run" "$mib" \
        "$(echo "$mib / $cp_s" | bc -l)" "$(echo "$mib / $up_s" | bc -l)" "$(echo "$mib / $dl_s" | bc -l)"
    rm -f "$f" "$work/cp$run" "$work/dl$run"
done
