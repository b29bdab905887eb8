#!/usr/bin/env bash
# Installs what tests/browser.rs needs on a fresh machine: Debian's Chromium
# (/usr/bin/chromium) and, in tests/browser, the playwright-core version that
# package-lock.json pins. Node.js >= 20 with npm must already be there (Debian
# 12's own nodejs is 18, too old for Playwright). Does nothing that is already
# done, so it is cheap to run every time.
#
# Playwright's own browser download (`npx playwright install`) is not used:
# the test drives the system Chromium through executablePath.
#
# Usage: .ci/browser.sh   (as root, or with sudo; from anywhere)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# With its recommends: fonts-liberation gives the page its text on a
# machine that has no fonts yet.
if [[ ! -x /usr/bin/chromium ]]; then
    echo "browser: installing Debian's chromium"
    sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        sudo=(sudo)
    fi
    "${sudo[@]}" apt-get update
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium
fi

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "browser: node and npm (Node.js >= 20) are needed and not on PATH" >&2
    exit 1
fi
major=$(node -p 'process.versions.node.split(".")[0]')
if (( major < 20 )); then
    echo "browser: Node.js $(node --version) is too old; playwright-core needs >= 20" >&2
    exit 1
fi

# npm ci when node_modules is missing or holds another version than the pin.
cd tests/browser
pinned=$(node -p 'require("./package-lock.json").packages["node_modules/playwright-core"].version')
installed=$(node -p 'try { require("./node_modules/playwright-core/package.json").version } catch { "" }')
if [[ "$installed" != "$pinned" ]]; then
    echo "browser: npm ci (playwright-core $pinned)"
    npm ci --no-audit --no-fund
fi
echo "browser: chromium $(/usr/bin/chromium --version 2>/dev/null | awk '{print $2}'), node $(node --version), playwright-core $pinned"
