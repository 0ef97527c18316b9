#!/usr/bin/env bash
# The first version's interface, kept for its users' muscle memory: a thin wrapper over
# `tursync`. Every command takes the same options as the tursync command it maps to.
#   dump-init  -> tursync init   (clone the remote into ./working_copy.db)
#   dump-push  -> tursync push   (send local changes back, all or nothing)
#   status     -> tursync status
#   help       -> this text, then tursync's own help
set -euo pipefail

tursync_bin="${TURSYNC_BIN:-tursync}"
if ! command -v "$tursync_bin" >/dev/null 2>&1; then
    echo "turso-workflow.sh: tursync not found; install it with 'cargo install --path .' or set TURSYNC_BIN" >&2
    exit 1
fi

usage() {
    sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
    echo
    echo "The URL and token come from TURSO_DATABASE_URL and TURSO_AUTH_TOKEN (or .env)."
}

cmd="${1:-help}"
[[ $# -gt 0 ]] && shift
case "$cmd" in
    dump-init) exec "$tursync_bin" init "$@" ;;
    dump-push) exec "$tursync_bin" push "$@" ;;
    status) exec "$tursync_bin" status "$@" ;;
    help | -h | --help)
        usage
        echo
        exec "$tursync_bin" --help
        ;;
    *)
        echo "turso-workflow.sh: unknown command '$cmd'" >&2
        usage >&2
        exit 2
        ;;
esac
