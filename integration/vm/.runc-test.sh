#!/bin/bash
set -u
echo "== overlay with upper on the overlay root:"
mkdir -p /var/lib/ovtest/{l,u,w,m} && mount -t overlay -o lowerdir=/var/lib/ovtest/l,upperdir=/var/lib/ovtest/u,workdir=/var/lib/ovtest/w ov /var/lib/ovtest/m && echo ok
echo "== overlay with upper on /tmp:"
mkdir -p /tmp/ov/{l,u,w,m} && mount -t overlay -o lowerdir=/tmp/ov/l,upperdir=/tmp/ov/u,workdir=/tmp/ov/w ov /tmp/ov/m && echo ok
echo "== overlay with lower on the overlay root (host dir), upper on /tmp:"
mkdir -p /tmp/ov2/{u,w,m} && mount -t overlay -o lowerdir=/usr/share/doc,upperdir=/tmp/ov2/u,workdir=/tmp/ov2/w ov /tmp/ov2/m && echo ok
echo "== runc:"
mkdir -p /tmp/b/rootfs/bin && cp /bin/busybox /tmp/b/rootfs/bin/ && ln -s busybox /tmp/b/rootfs/bin/sh
cd /tmp/b && runc spec && sed -i 's/"terminal": true/"terminal": false/; s/"sh"/"sh","-c","echo hello from runc; cat \/proc\/self\/cgroup"/' config.json
runc run t1 </dev/null; echo "runc rc=$?"
ls /dev/net/tun 2>&1
