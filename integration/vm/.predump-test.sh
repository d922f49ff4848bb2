#!/bin/bash
set -eu
cd /tmp && mkdir d1 d2
# 64 MiB touched, then (after the pre-dump) only 1 MiB re-dirtied
setsid python3 -c '
import time, os
m = bytearray(64 << 20)
for i in range(0, len(m), 4096): m[i] = 1
open("/tmp/ready", "w").close()
while not os.path.exists("/tmp/go"): time.sleep(0.1)
for i in range(0, 1 << 20, 4096): m[i] = 2
open("/tmp/done", "w").close()
time.sleep(1000)' </dev/null >/dev/null 2>&1 &
pid=$!
until [ -e /tmp/ready ]; do sleep 0.1; done
criu pre-dump -t "$pid" -D /tmp/d1 --shell-job -o pre.log && echo "pre-dump ok"
touch /tmp/go; until [ -e /tmp/done ]; do sleep 0.1; done
criu dump -t "$pid" -D /tmp/d2 --prev-images-dir ../d1 --track-mem --shell-job -o dump.log && echo "dump ok"
du -sh d1/pages-*.img d2/pages-*.img
