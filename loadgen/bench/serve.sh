# Sourced by cpu-run.sh, thread-cpu.sh and mallocs.sh: `serve BIN_DIR NAME "SERVER FLAGS"`
# copies the provisioned template ($T/d19k; T defaults to /var/tmp/p13/tpl) to $d/data, where
# d is ${R:-/var/tmp/cpu-runs}/NAME.d, starts `courier serve` from BIN_DIR on it (the
# environment is the server's too), waits until it listens, and sets spid (its pid), addr
# (its TCP address) and tr (the loadgen's transport flags: the key it printed, pinned, or
# --insecure-plaintext).
T=${T:-/var/tmp/p13/tpl}
serve() {
    d=${R:-/var/tmp/cpu-runs}/$2.d
    rm -rf "$d"; mkdir -p "$d"; cp -a "$T/d19k" "$d/data"; sync
    # shellcheck disable=SC2086 # server flags are words
    "$1/courier" serve --data-dir "$d/data" --listen 127.0.0.1:0 $3 >"$d/stdout" 2>"$d/server.log" &
    spid=$!
    for _ in $(seq 100); do grep -q "listening on" "$d/stdout" 2>/dev/null && break; sleep 0.1; done
    sleep 0.2 # every listening line is printed at once; let the last one land
    addr=$(sed -n 's/^courier listening on //p' "$d/stdout" | grep -v '^ws://' | head -1)
    local key
    key=$(sed -n 's/^courier server key //p' "$d/stdout" | head -1)
    case "$key" in none*|"") tr=(--insecure-plaintext) ;; *) tr=(--server-key "$key") ;; esac
}
