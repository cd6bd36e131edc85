#!/usr/bin/env bash
# Start the Docker engine if it does not answer (the end-to-end tier builds featx's images with it).
# As root with Debian's docker.io installed, runs `dockerd` in the background, logging to
# ${FEATX_HOME:-~/.cache/featx}/dockerd.log, and waits up to 60 s for it. Otherwise says what to do.
set -euo pipefail
docker info >/dev/null 2>&1 && exit 0
command -v dockerd >/dev/null || { echo "ensure-dockerd: no Docker engine: apt-get install docker.io" >&2; exit 1; }
[[ "$(id -u)" == 0 ]] || { echo "ensure-dockerd: the Docker engine is not running; start it (sudo systemctl start docker)" >&2; exit 1; }
logdir="${FEATX_HOME:-$HOME/.cache/featx}"
mkdir -p "${logdir}"
nohup dockerd >>"${logdir}/dockerd.log" 2>&1 &
for _ in $(seq 60); do
    docker info >/dev/null 2>&1 && exit 0
    sleep 1
done
echo "ensure-dockerd: dockerd did not answer within 60 s; see ${logdir}/dockerd.log" >&2
exit 1
