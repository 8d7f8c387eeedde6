#!/usr/bin/env bash
# Install Debian's Slurm (slurmctld, slurmd, client) and munge, for tests/test_slurm.py,
# which starts a real single-node cluster from them (tests/slurm_cluster.py), and iproute2
# (+ util-linux's nsenter/unshare), with which tests/test_slurm_multinode.py makes each
# node of a two-node cluster its own host (tests/node_network.py).
#
#   sudo bash tools/setup_slurm.sh      # `make test` runs it before pytest
#
# Idempotent: does nothing when the binaries are there. Never fails the caller: when it
# cannot install (not root, no apt-get, no network) it says why and exits 0, and the
# Slurm tests then skip with that reason. It only installs; it starts no daemon.
set -u
. "$(dirname "$0")/apt.sh"

need=(slurmctld slurmd sbatch srun scontrol squeue sacct munged mungekey ip nsenter unshare)
packages=(slurmctld slurmd slurm-client munge iproute2 util-linux)
missing() { for b in "${need[@]}"; do command -v "$b" >/dev/null 2>&1 || { echo "$b"; return; }; done; }

if [ -z "$(missing)" ]; then
    echo "setup_slurm: $(slurmctld -V), munge and iproute2 already installed"
    exit 0
fi
why=$(cannot_install)
if [ -n "$why" ]; then
    echo "setup_slurm: cannot install slurm-wlm + munge + iproute2: $why; the Slurm tests will skip"
    exit 0
fi

echo "setup_slurm: installing ${packages[*]} (apt-get) ..."
# Package scripts must not try to start daemons here: the tests start their own.
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && made_policy=1
fi
log=$(mktemp)
ok=0
apt_install "$log" "${packages[@]}" && ok=1
[ "$made_policy" = 1 ] && rm -f "$policy"
if [ "$ok" != 1 ]; then
    echo "setup_slurm: apt-get install failed; the Slurm tests will skip. Last lines:"
    tail -5 "$log" | sed 's/^/    /'
    rm -f "$log"
    exit 0
fi
rm -f "$log"
if [ -n "$(missing)" ]; then
    echo "setup_slurm: installed, but $(missing) is still not on PATH; the Slurm tests will skip"
    exit 0
fi
echo "setup_slurm: installed $(slurmctld -V), munge $(munged --version 2>&1 | awk '{print $1}')"
exit 0
