#!/usr/bin/env bash
# Start a real Slurm on this machine for kdrun's `slurm` tests: `sudo tests/slurm/start.sh` (idempotent).
# Installs Debian's slurm-wlm, munge, slurmdbd and MariaDB with apt when missing, writes slurm.conf for
# this host as two emulated nodes (n1, n2) in one CPU-only partition `cpu`, with job accounting (sacct),
# and starts munged, mariadbd, slurmdbd, slurmctld and one slurmd per node. Stop it with tests/slurm/stop.sh.
# Exit status 3: Slurm cannot run here (not root, no apt); the test target then says so and skips.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
STATE="${KDRUN_SLURM_STATE:-/var/tmp/kdrun-slurm}"
CTLD_PORT=6917 DBD_PORT=6919 N1_PORT=6921 N2_PORT=6922
say() { echo "slurm: $*"; }

if [ "$(id -u)" != 0 ]; then
    say "not started: the daemons need root (run: sudo $0)"; exit 3
fi
if sinfo -h -o %t 2>/dev/null | grep -q idle && [ -f "$STATE/slurm.conf" ]; then
    say "already running ($(sinfo -h -o '%P %D nodes %t' | head -1))"; exit 0
fi

packages="munge slurm-wlm slurmctld slurmd slurm-client slurmdbd slurm-wlm-mysql-plugin mariadb-server"
missing=$(for p in $packages; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || echo "$p"; done)
if [ -n "$missing" ]; then
    command -v apt-get >/dev/null || { say "not started: missing $missing and no apt-get"; exit 3; }
    say "installing $(echo $missing) with apt (about 2 minutes)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi

# The emulated nodes' names resolve to this host.
grep -qE '^127\.0\.0\.1[[:space:]].*\bn1\b.*\bn2\b' /etc/hosts || echo "127.0.0.1 n1 n2" >> /etc/hosts
mkdir -p "$STATE/ctld" /etc/slurm
# Each emulated node gets this host's CPUs and half its memory (slurmd -C measures them).
hw=$(slurmd -C | head -1 | tr ' ' '\n' | grep -E '^(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore|RealMemory)=')
memory=$(echo "$hw" | sed -n 's/^RealMemory=//p')
hw="$(echo "$hw" | grep -v RealMemory | tr '\n' ' ')RealMemory=$((memory / 2))"
fill() { sed -e "s|@HOST@|$(hostname -s)|; s|@STATE@|$STATE|g; s|@CTLD_PORT@|$CTLD_PORT|; s|@DBD_PORT@|$DBD_PORT|g" \
             -e "s|@N1_PORT@|$N1_PORT|; s|@N2_PORT@|$N2_PORT|; s|@NODE_HW@|$hw|" "$1"; }
fill "$HERE/slurm.conf.in" > "$STATE/slurm.conf"
fill "$HERE/slurmdbd.conf.in" > "$STATE/slurmdbd.conf"
chmod 600 "$STATE/slurmdbd.conf"
cp "$STATE/slurm.conf" /etc/slurm/slurm.conf
cp "$STATE/slurmdbd.conf" /etc/slurm/slurmdbd.conf

wait_for() {  # wait_for SECONDS WHAT COMMAND...
    local seconds=$1 what=$2; shift 2
    for _ in $(seq $((seconds * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
    say "not started: $what did not come up in ${seconds}s (logs in $STATE)"; exit 1
}

[ -f /etc/munge/munge.key ] || { mungekey --create 2>/dev/null || create-munge-key -f; chown munge: /etc/munge/munge.key; }
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    mkdir -p /run/munge && chown munge: /run/munge
    runuser -u munge -- /usr/sbin/munged
    wait_for 10 munged sh -c 'munge -n | unmunge'
fi
if ! mysqladmin ping >/dev/null 2>&1; then
    mkdir -p /run/mysqld && chown mysql: /run/mysqld
    (mysqld_safe --user=mysql >"$STATE/mariadb.out" 2>&1 &)
    wait_for 60 MariaDB mysqladmin ping
fi
pgrep -x slurmdbd >/dev/null || slurmdbd
wait_for 30 slurmdbd sacctmgr -n show cluster
sacctmgr -n show cluster format=cluster | grep -qw kdrun || sacctmgr -i add cluster kdrun >/dev/null
pgrep -x slurmctld >/dev/null || slurmctld
wait_for 30 slurmctld scontrol ping
for node in n1 n2; do pgrep -f "slurmd -N $node" >/dev/null || slurmd -N "$node"; done
wait_for 60 "the nodes" sh -c '[ "$(sinfo -h -N -o %t | grep -c idle)" = 2 ]'
say "started: $(sinfo -h -o '%P: %D nodes (%N), %c CPUs and %m MB each, %t')"
