#!/bin/busybox sh
# /init of the enforcer test VMs (staged by xtask/src/vm/initramfs.rs).
# Markers on the console, parsed by xtask/src/vm/qemu.rs:
#   ENFORCER-VM-USERSPACE   the kernel booted and started init
#   ENFORCER-VM-READY ...   mounts done, about to run the script
#   ENFORCER-VM-EXIT <code> the script finished with <code>
# With a root filesystem image (/enforcer-vm/disk), it runs twice: in the
# initramfs, where it mounts the image, copies the VM's files into it and
# switches to it, then from the image (ENFORCER_VM_ON_DISK set), with the
# image's own tools and busybox's mount and poweroff.
if [ -n "$ENFORCER_VM_ON_DISK" ]; then
    export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
    # (The image need not have mount: Debian's minimal variant lacks it.)
    mount() { /enforcer-vm/busybox mount "$@"; }
    poweroff() { /enforcer-vm/busybox poweroff "$@"; }
else
    /bin/busybox echo ENFORCER-VM-USERSPACE
    /bin/busybox --install -s /bin
    export PATH=/bin:/usr/bin:/sbin HOME=/root
fi

if [ -d /enforcer-vm/disk ] && [ -z "$ENFORCER_VM_ON_DISK" ]; then
    mount -t devtmpfs devtmpfs /dev
    for module in /enforcer-vm/disk/modules/*.ko; do
        [ -e "$module" ] && { insmod "$module" || echo "init: cannot load $module"; }
    done
    waited=0
    while [ ! -b /dev/vda ] && [ $waited -lt 100 ]; do sleep 0.1; waited=$((waited + 1)); done
    mkdir -p /newroot
    if ! mount -t ext4 /dev/vda /newroot; then
        echo "init: cannot mount the root filesystem image (/dev/vda)"
        poweroff -f
    fi
    [ -d /enforcer-vm/disk/files ] && cp -a /enforcer-vm/disk/files/. /newroot/
    # The libraries of the staged programs, where the image has none of its own.
    [ -d /enforcer-vm/disk/libs ] && cp -an /enforcer-vm/disk/libs/. /newroot/
    mkdir -p /newroot/enforcer-vm
    cp /bin/busybox /newroot/enforcer-vm/busybox
    cp /init /newroot/enforcer-vm/init
    cp /enforcer-vm/script.sh /newroot/enforcer-vm/script.sh
    umount /dev
    export ENFORCER_VM_ON_DISK=1
    exec switch_root /newroot /enforcer-vm/busybox sh /enforcer-vm/init
fi

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
# On the disk by the image's /bin/sh: busybox's sh would run its own applets
# (date without %N, ...) for the script's bare command names.
if [ -n "$ENFORCER_VM_ON_DISK" ]; then /bin/sh /enforcer-vm/script.sh; else sh /enforcer-vm/script.sh; fi </dev/null
echo "ENFORCER-VM-EXIT $?"
sync
poweroff -f
