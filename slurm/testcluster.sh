#!/usr/bin/env bash
# testcluster.sh: a real single-node Slurm cluster on this machine, for the tests.
#   testcluster.sh start DIR   writes DIR/slurm.conf, starts munged, slurmctld and slurmd
#   testcluster.sh stop DIR    stops them
# Needs root and Debian's slurm-wlm and munge packages. Clients must use SLURM_CONF=DIR/slurm.conf.
set -euo pipefail
cmd=${1:?start|stop}; dir=${2:?directory}
mkdir -p "$dir"; dir=$(cd "$dir" && pwd)
host=$(hostname -s)
case "$cmd" in
start)
  mkdir -p "$dir/state" "$dir/spool" "$dir/log" /run/munge /var/log/munge /etc/munge
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown -R root:root /etc/munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
  chmod 0700 /etc/munge; chmod 0400 /etc/munge/munge.key
  pgrep -x munged >/dev/null || munged --force
  cpus=$(getconf _NPROCESSORS_ONLN); mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512 ))
  cat > "$dir/slurm.conf" <<CONF
ClusterName=dstraintest
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
SlurmctldPort=16817
SlurmdPort=16818
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobRequeue=1
KillWait=30
MinJobAge=300
InactiveLimit=0
Waittime=0
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
  export SLURM_CONF="$dir/slurm.conf"
  slurmctld -f "$dir/slurm.conf"
  slurmd -f "$dir/slurm.conf"
  for _ in $(seq 1 30); do
    if sinfo -h -o %T 2>/dev/null | grep -q -E "idle|mixed|alloc"; then echo "slurm test cluster up ($host)"; exit 0; fi
    sleep 1
  done
  echo "slurm test cluster did not come up; logs in $dir/log" >&2; exit 1 ;;
stop)
  for f in slurmd slurmctld; do
    [ -f "$dir/$f.pid" ] && kill "$(cat "$dir/$f.pid")" 2>/dev/null || true
  done
  sleep 1 ;;
*) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
