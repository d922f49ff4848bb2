#!/bin/sh
# Stage 2: PID 1 (dash) in the guest's overlay root, set up by stage 1.
# run.sh copies this file into the per-run read-write share, mounted at
# /run/precopy-vm, next to "job" (cd + environment + exec of the command) and
# "marker"; the exit status goes back as "status". Shell builtins only: each
# exec from the 9p root is slow under TCG.
share=/run/precopy-vm

read -r marker <"$share/marker"
read -r up _ </proc/uptime
echo "precopy-vm: command starts at uptime ${up}s"
# run.sh shows only what is printed between the two marker lines.
echo "$marker begin"
# shellcheck source=/dev/null
(. "$share/job") </dev/null
rc=$?
echo "$marker end"

# 9p without a cache mode writes through to the host: no sync needed.
echo "$rc" >"$share/status"
# Asynchronous: PID 1 must stay alive until the power-off happens, or the
# kernel panics with "Attempted to kill init".
echo o >/proc/sysrq-trigger
while :; do sleep 60; done
