#!/bin/busybox sh
# PID 1 of a lab guest: mount the kernel file systems, load the virtio drivers, then hand
# the first serial port (ttyS0) to a root shell that the lab drives over a unix socket.
# The kernel's own console is ttyS1, which QEMU writes to a log file, so kernel messages
# (an OOM kill, say) never land in the middle of a command's output.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

# virtio_balloon stays out when the kernel command line says balloond.nodriver=1, so one
# image serves guests with and without the driver.
modules="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk"
case " $(cat /proc/cmdline) " in
*" balloond.nodriver=1 "*) echo "lab-init: virtio_balloon not loaded (balloond.nodriver=1)" ;;
*) modules="$modules virtio_balloon" ;;
esac
for m in $modules; do
    # A module missing from the image was built into the kernel (the builder checked).
    if [ -e "/lib/modules/$m.ko" ]; then
        insmod "/lib/modules/$m.ko" || echo "lab-init: insmod $m failed"
    fi
done

# The console shell must survive the memory pressure the tests create: the OOM killer
# never picks it. Everything it starts inherits this; memhog resets its own score to 0.
echo -1000 >/proc/self/oom_score_adj
export PS1='lab# ' HOME=/root
mkdir -p /root /tmp
echo "lab-init: shell on ttyS0"
exec setsid sh -c 'exec sh </dev/ttyS0 >/dev/ttyS0 2>&1'
