#!/usr/bin/env bash
# Regenerates the pinned dependency sets of the images, one per role (needs PyPI):
#   deploy/docker/requirements-{gateway,serve,train}.lock  <-  pyproject.toml's extras of that name
# Resolved for CPython 3.11 on linux x86_64 with torch pinned; torch itself and starrating are
# left out (the Dockerfile installs torch per target, then the project with --no-deps). Versions
# already in a lock are kept where they still fit (pass FRESH=1 to resolve from scratch).
set -euo pipefail
cd "$(dirname "$0")/../.."
pip="${PIP:-.venv/bin/pip}"
torch="${TORCH:-torch==2.13.0}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "$torch" >"$work/torch.txt"
for role in gateway serve train; do
  lock="deploy/docker/requirements-$role.lock"
  keep=()
  if [ "${FRESH:-0}" != 1 ] && [ -f "$lock" ]; then keep=(-c "$lock"); fi
  "$pip" install --quiet --dry-run --ignore-installed --report "$work/$role.json" \
    -c "$work/torch.txt" "${keep[@]}" ".[$role]" 2> >(grep -v "is ignored: it is neither" >&2)
  python3 - "$work/$role.json" "$role" "$torch" >"$work/$role.lock" <<'PY'
import json
import sys

report, role, torch = sys.argv[1:]
pins = sorted(
    (item["metadata"]["name"].lower(), item["metadata"]["version"])
    for item in json.load(open(report))["install"]
)
print(f"# Pinned dependencies of the `{role}` image: pyproject.toml's [{role}] extra and the core,")
print(f"# resolved for CPython 3.11 on linux x86_64 with {torch} (not listed: the Dockerfile installs")
print("# torch itself, per target). Regenerate with deploy/docker/lock.sh (needs PyPI).")
for name, version in pins:
    if name not in ("torch", "starrating"):
        print(f"{name}=={version}")
PY
  mv "$work/$role.lock" "$lock"
  echo "lock: $lock ($(grep -vc '^#' "$lock") packages)"
done
