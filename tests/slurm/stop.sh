#!/usr/bin/env bash
# Stop the Slurm started by tests/slurm/start.sh: its jobs, the slurmd nodes, slurmctld, slurmdbd, MariaDB
# and munged (each by the pid it recorded). Its state stays in $KDRUN_SLURM_STATE for the next start.
set -uo pipefail
STATE="${KDRUN_SLURM_STATE:-/var/tmp/kdrun-slurm}"
[ "$(id -u)" = 0 ] || { echo "slurm: not stopped: run as root"; exit 3; }
scancel --quiet --user=root 2>/dev/null
stop() {  # stop PIDFILE NAME
    [ -f "$1" ] || return 0
    local pid; pid=$(cat "$1")
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
    echo "slurm: $2 (pid $pid) did not stop"
}
stop "$STATE/slurmd-n1.pid" slurmd-n1
stop "$STATE/slurmd-n2.pid" slurmd-n2
stop "$STATE/slurmctld.pid" slurmctld
stop "$STATE/slurmdbd.pid" slurmdbd
stop /run/mysqld/mysqld.pid mariadbd
stop /run/munge/munged.pid munged
echo "slurm: stopped"
