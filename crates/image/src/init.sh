#!/bin/sh
# vireo's /init: a busybox sh script, the same for every architecture.
#
# The vireo CLI depends on this protocol:
# - a guest with the file /vireo/cmd runs `sh /vireo/cmd` on the console after printing
#   the start marker ESC ] v i r e o ; r u n BEL, then reports the exit status through
#   the register named by `vireo.exit=0xADDR` on the kernel command line;
# - otherwise it runs an interactive shell and reports status 0 when that shell exits.
# Nothing else is printed unless the command line has `vireo.debug`, so the CLI can pass
# the guest's output through unchanged.

export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
umask 022

/bin/busybox mount -t devtmpfs devtmpfs /dev >/dev/null 2>&1
/bin/busybox mount -t proc proc /proc >/dev/null 2>&1

DEBUG=
EXIT_ADDR=
read -r CMDLINE </proc/cmdline 2>/dev/null
for arg in $CMDLINE; do
	case "$arg" in
	vireo.debug) DEBUG=1 ;;
	vireo.exit=*) EXIT_ADDR="${arg#vireo.exit=}" ;;
	esac
done

# Keep the console clean for the program's own output unless debugging.
if [ -n "$DEBUG" ]; then
	exec </dev/console >/dev/console 2>&1
	set -x
else
	exec </dev/console >/dev/null 2>&1
fi

/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mkdir -p /dev/pts
/bin/busybox mount -t devpts devpts /dev/pts
/bin/busybox mount -t tmpfs -o mode=1777 tmpfs /tmp
/bin/busybox mount -t tmpfs -o mode=0755 tmpfs /run
/bin/busybox --install -s
echo /sbin/modprobe >/proc/sys/kernel/modprobe
hostname vireo
ip link set lo up

has_virtio() {
	if [ -d /proc/device-tree ] && grep -rqs 'virtio,mmio' /proc/device-tree; then
		return 0
	fi
	for d in /sys/bus/platform/devices/*virtio*; do
		[ -e "$d" ] && return 0
	done
	for v in /sys/bus/pci/devices/*/vendor; do
		[ "$(cat "$v" 2>/dev/null)" = 0x1af4 ] && return 0
	done
	return 1
}

# Load the virtio transports, then only the drivers the devices present ask for (by their
# modalias): each module costs boot time on an emulated CPU. A module that fails (already
# built in, no such hardware) must not stop the rest.
if has_virtio; then
	modprobe virtio_mmio
	modprobe virtio_pci
	for a in /sys/bus/virtio/devices/*/modalias; do
		[ -e "$a" ] && modprobe "$(cat "$a")"
	done
	# Filesystems come on demand (mount -t ext4 asks the kernel, which runs modprobe); plain
	# `mount DEV DIR` only tries loaded ones, so offer ext4 when there is a disk.
	[ -e /sys/block/vda ] && modprobe ext4
fi

if [ -e /sys/class/net/eth0 ]; then
	ip link set eth0 up
	udhcpc -i eth0 -q -n -t 5 -s /etc/vireo/udhcpc.script
fi

# Reports STATUS to the host: 0x5555 means success to a sifive,test0-style finisher,
# (STATUS << 16) | 0x3333 a failure with that code.
vireo_exit() {
	status=$(($1 & 255))
	# Let the console drain first: setting its modes again (unchanged) waits for that, as
	# busybox stty applies them with TCSADRAIN. The serial port starts transmitting
	# asynchronously (runtime PM), so otherwise a command that exits at once can power the
	# machine off before its output, or even the start marker, has left the UART. Bounded:
	# a console that never drains must not keep the machine from stopping.
	timeout 2 stty "$(stty -g </dev/console)" </dev/console 2>/dev/null
	sync
	if [ -n "$EXIT_ADDR" ]; then
		if [ "$status" -eq 0 ]; then
			devmem "$EXIT_ADDR" 32 0x5555
		else
			devmem "$EXIT_ADDR" 32 $(((status << 16) | 0x3333))
		fi
	fi
	poweroff -f
	# Only reached when neither the register nor poweroff stopped the machine; PID 1
	# must not exit.
	while :; do sleep 3600; done
}

cd /root

if [ -f /vireo/cmd ]; then
	# Raw output: the command's bytes reach the host exactly as written. The console stays
	# open on fd 3 throughout: some consoles (hvc) reset their settings on last close.
	exec 3<>/dev/console
	stty -opost -echo <&3
	printf '\033]vireo;run\007' >&3
	sh /vireo/cmd <&3 >&3 2>&3
	vireo_exit $?
fi

export PS1='\u@\h:\w\$ '
# The host shows the console from here on (boot messages before are hidden unless --verbose).
printf '\033]vireo;run\007' >/dev/console
if command -v cttyhack >/dev/null; then
	setsid cttyhack sh -l </dev/console >/dev/console 2>&1
else
	setsid sh -c 'exec sh -l </dev/console >/dev/console 2>&1' </dev/console >/dev/console 2>&1
fi
vireo_exit 0
