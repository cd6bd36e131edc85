#!/usr/bin/env bash
# Regenerate docker/requirements.lock: every package the images install (the runtime pins of
# requirements.txt, the lines above its "# test and tooling" marker, and all their dependencies),
# each pinned with the sha256 of every file PyPI holds for it, resolved for the images' platform
# (Linux x86_64, glibc 2.28+, Python 3.11). The images install it with `pip --require-hashes
# --no-deps` from PyPI alone. Run after changing a runtime pin; needs uv and PyPI.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${ROOT}"
UV="${UV:-$(command -v uv || echo .venv/bin/uv)}"
runtime="$(mktemp /tmp/featx-runtime.XXXXXX.in)"
trap 'rm -f "${runtime}"' EXIT
sed '/^# test and tooling/,$d' requirements.txt >"${runtime}"
"${UV}" pip compile "${runtime}" --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
    --index-url https://pypi.org/simple --custom-compile-command "scripts/lock-requirements.sh" \
    --quiet -o docker/requirements.lock
sed -i "s|${runtime}|requirements.txt (runtime pins)|" docker/requirements.lock
