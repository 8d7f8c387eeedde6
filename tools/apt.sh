# Sourced by the tools/setup_*.sh scripts: installing Debian packages without ever
# failing the caller (`make test` goes on, and the tests that need them skip).

# Why this shell cannot install packages; nothing when it can.
cannot_install() {
    if [ "$(id -u)" != 0 ]; then
        echo "not root (uid $(id -u))"
    elif ! command -v apt-get >/dev/null 2>&1; then
        echo "no apt-get (not Debian/Ubuntu)"
    fi
}

# apt_install LOG PACKAGE...: install them, output to LOG; when the first try fails
# (stale package lists), once more after apt-get update. Its status says whether it did.
apt_install() {
    local log=$1
    shift
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "$@" >"$log" 2>&1 ||
        { apt-get update -q >>"$log" 2>&1 &&
          apt-get install -y -q --no-install-recommends "$@" >>"$log" 2>&1; }
}
