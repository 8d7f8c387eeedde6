#!/usr/bin/env bash
# Install Debian's dataset-fashion-mnist: the real Fashion-MNIST (its four IDX files,
# gzipped) in /usr/share/datasets/fashion-mnist, which tests/test_fashion_mnist.py
# checks and `python -m repro.d2l --root /usr/share/datasets/fashion-mnist` trains on.
#
#   sudo bash tools/setup_datasets.sh      # `make test` runs it before pytest
#
# Idempotent: does nothing when the files are there. Never fails the caller: when it
# cannot install (not root, no apt-get, no network) it says why and exits 0, and the
# tests that need the real set then skip with that reason.
set -u
. "$(dirname "$0")/apt.sh"

dir=/usr/share/datasets/fashion-mnist
package=dataset-fashion-mnist
present() { [ -f "$dir/train-images-idx3-ubyte.gz" ] && [ -f "$dir/t10k-labels-idx1-ubyte.gz" ]; }

if present; then
    echo "setup_datasets: Fashion-MNIST already in $dir"
    exit 0
fi
why=$(cannot_install)
if [ -n "$why" ]; then
    echo "setup_datasets: warning: cannot install $package: $why; the tests on the real Fashion-MNIST will skip"
    exit 0
fi

echo "setup_datasets: installing $package (apt-get) ..."
log=$(mktemp)
if ! apt_install "$log" "$package" || ! present; then
    echo "setup_datasets: warning: could not install $package; the tests on the real Fashion-MNIST will skip. Last lines:"
    tail -5 "$log" | sed 's/^/    /'
    rm -f "$log"
    exit 0
fi
rm -f "$log"
echo "setup_datasets: installed $package in $dir"
exit 0
