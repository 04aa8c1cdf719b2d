#!/usr/bin/env bash
# slurm_local.sh - a throw-away single-node SLURM cluster (with accounting) on
# localhost, for tests and CI. Debian 12, run as root.
#
#   scripts/slurm_local.sh start  STATE_DIR   install if needed, start, wait until
#                                             usable; prints ONE line on stdout:
#                                             export SLURM_CONF=STATE_DIR/slurm.conf
#   scripts/slurm_local.sh stop   STATE_DIR   stop only the daemons started there
#   scripts/slurm_local.sh status STATE_DIR   exit 0 iff all daemons run
#
# Everything (configs, munge key + socket, MariaDB datadir, logs, pid files)
# lives under STATE_DIR; /etc/slurm and the system munge/MariaDB are not used.
# Partition: "debug" (the only one, default). Logs: STATE_DIR/log/*.log.
# Env: SLURM_LOCAL_TIMEOUT (seconds to wait for readiness, default 60).
set -euo pipefail

PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
# Stop order: consumers first, so nothing logs spurious connection errors.
DAEMONS=(slurmd slurmctld slurmdbd mariadbd munged)
PARTITION=debug
CLUSTER=localci
TIMEOUT=${SLURM_LOCAL_TIMEOUT:-60}

log() { echo "slurm_local: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Poll "$@" every 0.5 s until it succeeds or $1 seconds pass.
wait_for() {
    local secs=$1; shift
    local end=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < end)) || return 1
        sleep 0.5
    done
}

# Starts "$@" in the background (pid in $!) with stdin/stdout/stderr on
# /dev/null and log $1 and no other inherited descriptor: a daemon holding the
# caller's pipe (our fd 3 is its stdout) would make `$(slurm_local.sh start)`
# or a capturing subprocess.run() wait forever.
spawn() {
    local log=$1 fd; shift
    (
        for fd in /proc/self/fd/*; do
            fd=${fd##*/}
            ((fd <= 2)) || eval "exec $fd>&-"
        done
        exec "$@"
    ) </dev/null >>"$log" 2>&1 &
}

install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    log "installing ${missing[*]}"
    # Keep postinst scripts from starting the system-wide munge/MariaDB/slurm
    # services (we run our own); Docker-style images already ship this file.
    local policy=/usr/sbin/policy-rc.d own_policy=""
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && own_policy=1
    fi
    # Lock timeout: CI images often run apt (e.g. unattended-upgrades) at boot.
    local rc=0 apt=(apt-get -q -o DPkg::Lock::Timeout=300)
    { DEBIAN_FRONTEND=noninteractive "${apt[@]}" update &&
      DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y --no-install-recommends "${missing[@]}"; } >&2 || rc=$?
    [[ -z $own_policy ]] || rm -f "$policy"
    ((rc == 0)) || die "apt-get install failed (rc=$rc)"
}

# Sets variable $1 to a port in 20000-32767 (below Linux's ephemeral range)
# that nobody listens on and that we have not handed out yet.
USED_PORTS=""
free_port() {
    local p
    for _ in {1..100}; do
        p=$((20000 + RANDOM % 12768))
        [[ " $USED_PORTS " == *" $p "* ]] && continue
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            USED_PORTS+=" $p"; printf -v "$1" %s "$p"; return 0
        fi
    done
    die "no free TCP port found"
}

# pid from STATE_DIR/run/NAME.pid if that process is alive and really NAME
# (guards against a stale pid file whose pid was reused).
daemon_pid() {
    local f="$S/run/$1.pid" pid exe
    [[ -s $f ]] || return 1
    pid=$(tr -dc 0-9 <"$f")
    [[ -n $pid ]] || return 1
    exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
    # Debian installs slurmd/slurmctld/slurmstepd as NAME-wlm via alternatives.
    [[ ${exe##*/} == "$1" || ${exe##*/} == "$1-wlm" ]] && echo "$pid"
}

write_configs() {
    local node=$1 hw ctld_port slurmd_port dbd_port
    free_port ctld_port; free_port slurmd_port; free_port dbd_port; free_port DB_PORT
    # Real hardware, else slurmd refuses to register ("low socket*core count").
    hw=$(SLURM_CONF=/nonexistent slurmd -C 2>/dev/null | head -n1 | sed 's/^NodeName=[^ ]* //')
    [[ $hw == *CPUs=* ]] || die "slurmd -C gave no hardware description"
    cat >"$S/slurm.conf" <<EOF
ClusterName=$CLUSTER
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCK
CredType=cred/munge
StateSaveLocation=$S/ctld
SlurmdSpoolDir=$S/slurmd
SlurmctldPidFile=$S/run/slurmctld.pid
SlurmdPidFile=$S/run/slurmd.pid
SlurmctldLogFile=$S/log/slurmctld.log
SlurmdLogFile=$S/log/slurmd.log
# cgroup plugins need a writable cgroup v2 tree; containers/CI rarely have one.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
MailProg=/bin/true
SwitchType=switch/none
ReturnToService=2
# Short timers: tests want dead jobs reported and cleaned up quickly.
KillWait=2
MinJobAge=30
InactiveLimit=0
SlurmdTimeout=30
SlurmctldTimeout=30
# submitit reads a finished job's state from sacct, so accounting is mandatory.
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$dbd_port
# Not a password: tells slurmctld's accounting plugin which munge socket to use.
AccountingStoragePass=$MUNGE_SOCK
NodeName=$node NodeAddr=127.0.0.1 $hw State=UNKNOWN
PartitionName=$PARTITION Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
    # slurmdbd looks for slurmdbd.conf next to \$SLURM_CONF and insists on 600.
    (umask 077; cat >"$S/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCK
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$dbd_port
SlurmUser=root
PidFile=$S/run/slurmdbd.pid
LogFile=$S/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StorageLoc=slurm_acct_db
EOF
    )
}

start_munge() {
    # munged refuses group/world-writable key dirs; clients need to reach the socket.
    install -d -m 700 "$S/munge-key"
    install -d -m 755 "$S/munge"
    if [[ ! -s $S/munge-key/munge.key ]]; then
        (umask 077; dd if=/dev/urandom of="$S/munge-key/munge.key" bs=1024 count=1 status=none)
    fi
    spawn "$S/log/munged.log" munged --socket="$MUNGE_SOCK" --key-file="$S/munge-key/munge.key" \
        --pid-file="$S/run/munged.pid" --log-file="$S/log/munged.log" \
        --seed-file="$S/munge-key/munged.seed"
    wait $! ||
        die "munged failed to start (see $S/log/munged.log)"
    wait_for 10 munge -S "$MUNGE_SOCK" -n || die "munged not answering"
}

start_mariadb() {
    if [[ ! -d $S/db/mysql ]]; then
        mariadb-install-db --no-defaults --user=root --datadir="$S/db" \
            --auth-root-authentication-method=socket --skip-test-db >>"$S/log/mariadb-install.log" 2>&1 ||
            die "mariadb-install-db failed (see $S/log/mariadb-install.log)"
    fi
    # mariadbd does not daemonize itself; setsid detaches it from our session
    # so a caller's Ctrl-C or pipe does not take it down.
    spawn "$S/log/mariadb.log" setsid mariadbd --no-defaults --user=root --datadir="$S/db" --socket="$S/mysql.sock" \
        --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
        --pid-file="$S/run/mariadbd.pid" --log-error="$S/log/mariadb.log" \
        --innodb-lock-wait-timeout=900
    wait_for 30 mariadb-admin --no-defaults -S "$S/mysql.sock" -u root ping ||
        die "MariaDB did not come up (see $S/log/mariadb.log)"
    # TCP user for slurmdbd: root@localhost only authenticates via unix socket.
    mariadb --no-defaults -S "$S/mysql.sock" -u root -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1';
             GRANT ALL ON *.* TO 'slurm'@'127.0.0.1';" ||
        die "could not create the slurm database user"
}

# Runs a slurm daemon (it daemonizes itself) and waits for its pid file.
start_slurm_daemon() {
    local name=$1; shift
    spawn "$S/log/$name.out" "$@"
    wait $! || die "$name failed to start (see $S/log/$name.log)"
    wait_for 15 daemon_pid "$name" || die "$name did not stay up (see $S/log/$name.log)"
}

cluster_ready() {
    [[ $(sinfo -h -n "$NODE" -o %t 2>/dev/null) == idle ]] && sacct -n -X >/dev/null 2>&1
}

do_start() {
    local alive=() d
    for d in "${DAEMONS[@]}"; do daemon_pid "$d" >/dev/null && alive+=("$d"); done
    if ((${#alive[@]} == ${#DAEMONS[@]})); then
        log "already running in $S, reusing it"
    elif ((${#alive[@]})); then
        die "partially running in $S (${alive[*]}); run '$0 stop $S' first"
    else
        install_packages
        ((${#MUNGE_SOCK} < 100)) || die "STATE_DIR too long for a unix socket path: $S"
        mkdir -p "$S"/{run,log,ctld,slurmd,db}
        write_configs "$NODE"
        # From here on a failure (or Ctrl-C/timeout) must not leave half a cluster.
        trap 'log "start failed, stopping what was started"; do_stop' EXIT
        trap 'exit 130' INT TERM
        start_munge
        start_mariadb
        start_slurm_daemon slurmdbd slurmdbd
        wait_for 30 sacctmgr -n list cluster || die "slurmdbd not answering (see $S/log/slurmdbd.log)"
        # slurmctld only records jobs for a cluster that accounting knows.
        sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER" ||
            sacctmgr -i add cluster "$CLUSTER" >&2 || die "sacctmgr add cluster failed"
        start_slurm_daemon slurmctld slurmctld
        start_slurm_daemon slurmd slurmd -N "$NODE"
    fi
    wait_for "$TIMEOUT" cluster_ready ||
        die "node $NODE not idle or sacct not answering after ${TIMEOUT}s (logs: $S/log)"
    trap - EXIT INT TERM
    log "cluster up: node $NODE, partition $PARTITION"
    echo "export SLURM_CONF=$SLURM_CONF" >&3
}

# Gone or a zombie: our daemons are reparented to PID 1, and some container
# inits reap only every couple of seconds.
is_dead() {
    local st
    { read -r st <"/proc/$1/stat"; } 2>/dev/null || return 0
    st=${st##*) }
    [[ ${st%% *} == Z ]]
}

# SIGTERM, wait up to $3 (15) s, then SIGKILL; returns once the process is gone.
kill_wait() {
    local pid=$1 name=$2
    kill -TERM "$pid" 2>/dev/null || return 0
    if ! wait_for "${3:-15}" is_dead "$pid"; then
        log "$name ($pid) ignored SIGTERM, killing"
        kill -KILL "$pid" 2>/dev/null || true
        wait_for 5 is_dead "$pid" || log "WARNING: $name ($pid) still alive"
    fi
}

# Prints the pids of all descendants of process $1.
descendants() {
    local p st kids=()
    for p in /proc/[0-9]*; do
        { read -r st <"$p/stat"; } 2>/dev/null || continue
        st=${st##*) }; st=${st#* }
        [[ ${st%% *} == "$1" ]] && kids+=("${p#/proc/}")
    done
    for p in ${kids[@]+"${kids[@]}"}; do echo "$p"; descendants "$p"; done
}

# Only needed when scancel could not run (slurmctld dead): step daemons are
# reparented to init, so they have no pid file; they inherited our SLURM_CONF
# from slurmd, which identifies them as ours. They ignore SIGTERM and leave
# the job running, so kill the job's processes first.
kill_stepds() {
    local p pid exe
    for p in /proc/[0-9]*; do
        exe=$(readlink "$p/exe" 2>/dev/null) || continue
        [[ $exe == */slurmstepd || $exe == */slurmstepd-wlm ]] || continue
        tr '\0' '\n' <"$p/environ" 2>/dev/null | grep -qx "SLURM_CONF=$SLURM_CONF" || continue
        pid=${p#/proc/}
        descendants "$pid" | xargs -r kill -KILL 2>/dev/null || true
        kill_wait "$pid" slurmstepd 2
    done
}

no_jobs() { [[ -z $(squeue -h -o %A 2>/dev/null) ]]; }

do_stop() {
    local d pid
    if daemon_pid slurmctld >/dev/null; then
        # Cancel jobs first so their processes die with the cluster.
        squeue -h -o %A 2>/dev/null | xargs -r scancel 2>/dev/null || true
        wait_for 10 no_jobs || true
    fi
    for d in "${DAEMONS[@]}"; do
        if pid=$(daemon_pid "$d"); then
            log "stopping $d ($pid)"
            kill_wait "$pid" "$d"
        fi
        [[ $d == slurmd ]] && kill_stepds
        rm -f "$S/run/$d.pid"
    done
}

do_status() {
    local d pid rc=0
    for d in "${DAEMONS[@]}"; do
        if pid=$(daemon_pid "$d"); then log "$d running ($pid)"; else log "$d not running"; rc=1; fi
    done
    return "$rc"
}

main() {
    [[ $# -eq 2 ]] || { sed -n '2,15p' "$0" >&2; exit 2; }
    [[ $(id -u) -eq 0 ]] || die "must run as root"
    [[ $1 != start ]] || mkdir -p "$2"
    if [[ ! -d $2 ]]; then   # nothing was started there: stop is a no-op
        log "no such directory: $2"
        [[ $1 == stop ]] && exit 0 || exit 1
    fi
    S=$(cd "$2" && pwd -P)
    [[ $S != *[[:space:]]* ]] || die "STATE_DIR must not contain whitespace: $S"
    NODE=$(hostname -s)
    MUNGE_SOCK=$S/munge/munge.socket
    export SLURM_CONF=$S/slurm.conf
    # Only our own cluster: ignore settings leaking in from a surrounding job.
    unset SLURM_JOB_ID SLURM_JOBID SLURM_CLUSTERS
    exec 3>&1 1>&2   # stdout is reserved for the export line
    case $1 in
        start) do_start ;;
        stop) do_stop ;;
        status) do_status ;;
        *) die "unknown command '$1' (start|stop|status)" ;;
    esac
}

main "$@"
