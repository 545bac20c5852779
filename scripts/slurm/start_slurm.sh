#!/usr/bin/env bash
# Start a single-node SLURM cluster on this machine (Debian slurm-wlm + munge) without systemd.
#
#   sudo scripts/slurm/start_slurm.sh        # idempotent: installs what is missing, starts what is not running
#   scripts/slurm/stop_slurm.sh [--purge]    # cancels jobs, stops what this script started
#
# For tests and CI (tests/test_slurm.py, `make test-slurm`), not for production clusters. No accounting
# database: accounting_storage/none plus jobcomp/filetxt (so `sacct -c` lists finished jobs), and
# MinJobAge=300 so the Snakemake SLURM plugin can use `squeue` for job status (see the slurm profile).
#
# Knobs (environment):
#   SLURM_PARTITION   partition name                      (default: debug)
#   SLURM_FAKE_GPUS   fake GPU GRES on the node, 0..4     (default: 2; device files /dev/null, /dev/zero, ...)
#   SLURM_WAIT_S      seconds to wait for each daemon     (default: 60)
set -euo pipefail

PARTITION=${SLURM_PARTITION:-debug}
FAKE_GPUS=${SLURM_FAKE_GPUS:-2}
WAIT_S=${SLURM_WAIT_S:-60}
CONF_DIR=/etc/slurm
STATE_DIR=/var/lib/slurm
LOG_DIR=/var/log/slurm
RUN_DIR=/run/slurm
MARK_DIR=/run/hardmil-slurm      # records what this script started, for stop_slurm.sh

say() { printf '[start_slurm] %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (it installs packages and starts daemons)"
case "$FAKE_GPUS" in [0-4]) ;; *) die "SLURM_FAKE_GPUS must be 0..4, got '$FAKE_GPUS'" ;; esac

# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND every 0.5 s, bounded
wait_for() {
    local limit=$1 what=$2 tries
    shift 2
    tries=$((limit * 2))
    while ! "$@" >/dev/null 2>&1; do
        tries=$((tries - 1))
        [ "$tries" -gt 0 ] || return 1
        sleep 0.5
    done
    say "$what: ok"
}

alive() {  # alive PIDFILE: the process named in PIDFILE runs
    [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

# --- 1. packages ----------------------------------------------------------------------------------------
export PATH="$PATH:/usr/sbin:/sbin"
missing=()
for bin in slurmctld slurmd sinfo srun munged munge; do
    command -v "$bin" >/dev/null 2>&1 || missing+=("$bin")
done
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing slurm-wlm munge (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null
fi
getent passwd slurm >/dev/null || die "user 'slurm' missing after install (slurm-wlm postinst creates it)"
getent passwd munge >/dev/null || die "user 'munge' missing after install (munge postinst creates it)"
install -d -m 755 "$MARK_DIR"

# --- 2. munge -------------------------------------------------------------------------------------------
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    if [ ! -s /etc/munge/munge.key ]; then
        say "creating /etc/munge/munge.key"
        install -d -o munge -g munge -m 700 /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
        chown munge:munge /etc/munge/munge.key
        chmod 400 /etc/munge/munge.key
    fi
    install -d -o munge -g munge -m 755 /run/munge
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged
    touch "$MARK_DIR/munged"
    wait_for "$WAIT_S" "munge credential round trip" sh -c 'munge -n | unmunge' || die "munged did not start"
fi

# --- 3. configuration -------------------------------------------------------------------------------------
node=$(hostname -s)
hw=$(slurmd -C | head -n1)                   # NodeName=vm CPUs=2 ... RealMemory=24105
cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$hw")
mem=$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
[ -n "$cpus" ] && [ -n "$mem" ] || die "could not read CPUs/RealMemory from 'slurmd -C': $hw"
mem=$((mem * 9 / 10))                        # leave room for the OS; slurmd drains a node that reports less
gres_line=""
gres_conf=""
if [ "$FAKE_GPUS" -gt 0 ]; then
    gres_line="Gres=gpu:$FAKE_GPUS"
    devices=(/dev/null /dev/zero /dev/full /dev/urandom)
    for ((i = 0; i < FAKE_GPUS; i++)); do
        gres_conf+="NodeName=$node Name=gpu File=${devices[$i]}"$'\n'
    done
fi

install -d -m 755 "$CONF_DIR"
install -d -o slurm -g slurm -m 755 "$STATE_DIR/slurmctld" "$LOG_DIR" "$RUN_DIR"
install -d -m 755 "$STATE_DIR/slurmd"

cat >"$CONF_DIR/slurm.conf.new" <<EOF
# Written by hardmil scripts/slurm/start_slurm.sh: one node, no systemd, no cgroups, no accounting database.
ClusterName=hardmil
SlurmctldHost=$node(127.0.0.1)
SlurmUser=slurm
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
StateSaveLocation=$STATE_DIR/slurmctld
SlurmdSpoolDir=$STATE_DIR/slurmd
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
GresTypes=gpu
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LOG_DIR/jobcomp.log
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=10
Waittime=0
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem $gres_line State=UNKNOWN
PartitionName=$PARTITION Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
printf '%s' "$gres_conf" >"$CONF_DIR/gres.conf.new"

changed=0
for f in slurm.conf gres.conf; do
    if ! cmp -s "$CONF_DIR/$f.new" "$CONF_DIR/$f"; then
        mv "$CONF_DIR/$f.new" "$CONF_DIR/$f"
        changed=1
    else
        rm -f "$CONF_DIR/$f.new"
    fi
done
chmod 644 "$CONF_DIR/slurm.conf" "$CONF_DIR/gres.conf"

# stop_daemon PIDFILE NAME: SIGTERM by pid (saved before it removes its pid file), bounded wait
stop_daemon() {
    local pid
    alive "$1" || return 0
    pid=$(cat "$1")
    say "stopping $2 (pid $pid)"
    kill "$pid"
    wait_for "$WAIT_S" "$2 stopped" sh -c "! kill -0 $pid" || { kill -9 "$pid" 2>/dev/null || true; }
}
if [ "$changed" -eq 1 ]; then
    say "configuration changed"
    stop_daemon "$RUN_DIR/slurmd.pid" slurmd
    stop_daemon "$RUN_DIR/slurmctld.pid" slurmctld
fi

# --- 4. daemons -------------------------------------------------------------------------------------------
if ! alive "$RUN_DIR/slurmctld.pid"; then
    say "starting slurmctld"
    /usr/sbin/slurmctld
fi
wait_for "$WAIT_S" "slurmctld answers" scontrol ping || die "slurmctld does not answer; see $LOG_DIR/slurmctld.log"
if ! alive "$RUN_DIR/slurmd.pid"; then
    say "starting slurmd"
    /usr/sbin/slurmd
fi

node_idle() {
    local state
    state=$(sinfo -h -n "$node" -o %T 2>/dev/null | head -n1)
    case "$state" in
        idle | mixed | allocated | completing) return 0 ;;
        down* | drain* | fail*) scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    return 1
}
wait_for "$WAIT_S" "node $node usable" node_idle ||
    die "node $node not idle: $(sinfo -h -N -o '%N %T %E'); see $LOG_DIR/slurmd.log"

# --- 5. smoke test ----------------------------------------------------------------------------------------
out=$(timeout "$WAIT_S" srun -N1 -n1 -t 1 hostname 2>/dev/null) || die "srun smoke test failed"
[ "$out" = "$(hostname)" ] || [ "$out" = "$node" ] || die "srun printed '$out', expected '$node'"
say "SLURM is up: $(sinfo -h -o '%P %a %D %T %G' | head -n1)"
