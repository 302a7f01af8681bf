#!/bin/busybox sh
# /init of the enforcer test VMs (staged by xtask/src/vm/initramfs.rs).
# Markers on the console, parsed by xtask/src/vm/qemu.rs:
#   ENFORCER-VM-USERSPACE   the kernel booted and started init
#   ENFORCER-VM-READY ...   mounts done, about to run the script
#   ENFORCER-VM-EXIT <code> the script finished with <code>
/bin/busybox echo ENFORCER-VM-USERSPACE
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin:/sbin HOME=/root

try() { "$@" || echo "init: warning: '$*' failed"; }
try mount -t proc proc /proc
try mount -t sysfs sysfs /sys
try mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts
try mount -t devpts devpts /dev/pts
try mount -t securityfs securityfs /sys/kernel/security
try mount -t bpf bpf /sys/fs/bpf
try mount -t cgroup2 cgroup2 /sys/fs/cgroup
try mount -t tmpfs tmpfs /tmp
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up

# What a coding agent's machine holds: a workspace and a home with secrets (all fake).
mkdir -p /workspace /root/.aws /root/.ssh
printf '# ~/.bashrc\nexport PS1="$ "\n' > /root/.bashrc
printf '[default]\naws_access_key_id = AKIAFAKEFAKEFAKEFAKE\naws_secret_access_key = fake/secret/key/not/real\n' > /root/.aws/credentials
printf -- '-----BEGIN OPENSSH PRIVATE KEY-----\nZmFrZSBrZXksIG5vdCByZWFs\n-----END OPENSSH PRIVATE KEY-----\n' > /root/.ssh/id_rsa
chmod 600 /root/.aws/credentials /root/.ssh/id_rsa

echo "ENFORCER-VM-READY kernel=$(uname -r) lsm=$(cat /sys/kernel/security/lsm)"
cd /workspace
sh /enforcer-vm/script.sh </dev/null
echo "ENFORCER-VM-EXIT $?"
sync
poweroff -f
