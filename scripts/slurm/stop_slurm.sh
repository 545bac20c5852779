#!/usr/bin/env bash
# Stop the single-node SLURM that scripts/slurm/start_slurm.sh started. Safe to run twice.
#
#   scripts/slurm/stop_slurm.sh            # cancel jobs, stop slurmd and slurmctld (and munged if we started it)
#   scripts/slurm/stop_slurm.sh --purge    # also wipe SLURM's state, spool and logs (the packages stay)
#
# Processes are stopped by the pid in their pid file only; nothing is killed by name.
set -euo pipefail

STATE_DIR=/var/lib/slurm
LOG_DIR=/var/log/slurm
RUN_DIR=/run/slurm
MARK_DIR=/run/hardmil-slurm
WAIT_S=${SLURM_WAIT_S:-60}
export PATH="$PATH:/usr/sbin:/sbin"

say() { printf '[stop_slurm] %s\n' "$*" >&2; }

purge=0
case "${1:-}" in
    "") ;;
    --purge) purge=1 ;;
    *) say "usage: $0 [--purge]"; exit 2 ;;
esac
[ "$(id -u)" -eq 0 ] || { say "ERROR: must run as root"; exit 1; }

# stop PID NAME: SIGTERM, bounded wait, then SIGKILL
stop() {
    local pid=$1 name=$2 tries=$((WAIT_S * 2))
    kill -0 "$pid" 2>/dev/null || return 0
    say "stopping $name (pid $pid)"
    kill "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do
        tries=$((tries - 1))
        if [ "$tries" -le 0 ]; then
            say "$name did not exit after ${WAIT_S}s; SIGKILL"
            kill -9 "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.5
    done
}

pid_of() { [ -s "$1" ] && cat "$1" || true; }

if [ -s "$RUN_DIR/slurmctld.pid" ] && command -v scancel >/dev/null && timeout 10 scontrol ping >/dev/null 2>&1; then
    jobs=$(timeout 10 squeue -h -o %i 2>/dev/null || true)
    if [ -n "$jobs" ]; then
        say "cancelling jobs: $(echo "$jobs" | tr '\n' ' ')"
        # shellcheck disable=SC2086  # one job id per word
        timeout 10 scancel $jobs || true
    fi
fi

# read each pid before signalling: the daemons remove their pid files on exit
slurmd_pid=$(pid_of "$RUN_DIR/slurmd.pid")
ctld_pid=$(pid_of "$RUN_DIR/slurmctld.pid")
[ -z "$slurmd_pid" ] || stop "$slurmd_pid" slurmd
[ -z "$ctld_pid" ] || stop "$ctld_pid" slurmctld
rm -f "$RUN_DIR/slurmd.pid" "$RUN_DIR/slurmctld.pid"

if [ -e "$MARK_DIR/munged" ]; then
    munge_pid=$(pid_of /run/munge/munged.pid)
    [ -z "$munge_pid" ] || stop "$munge_pid" munged
    rm -f "$MARK_DIR/munged"
fi

if [ "$purge" -eq 1 ]; then
    say "purging state, spool and logs"
    rm -rf "${STATE_DIR:?}/slurmctld" "${STATE_DIR:?}/slurmd" "${LOG_DIR:?}"/*
fi
say "stopped"
