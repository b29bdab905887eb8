#!/usr/bin/env bash
# check-standalone.sh — fails if any tracked file reaches outside the
# repository into a sibling "shared" folder (a parent-relative path or the
# workshop's absolute one). A public clone has nothing beside it, so CI,
# the scripts and the docs must work from the repository alone.
#
# The patterns are assembled from pieces, so that this file does not match
# itself.
#
# Usage: scripts/check-standalone.sh   (from anywhere; .ci/run calls it)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

dotdot='\.\.'
shared='shared'
patterns=(-e "$dotdot/$shared" -e "/work/$shared")

# xargs may run grep in batches, so judge by the output, not the status.
hits=$(git ls-files -z | xargs -0 grep -n -I "${patterns[@]}" -- 2>/dev/null || true)
if [[ -n "$hits" ]]; then
  echo "check-standalone: tracked files reference a folder outside the repository:" >&2
  echo "$hits" >&2
  exit 1
fi
echo "check-standalone: ok ($(git ls-files | wc -l) tracked files, no reference outside the repository)"
