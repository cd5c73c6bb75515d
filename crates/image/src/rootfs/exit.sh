#!/bin/sh
# /usr/lib/vireo/exit STATUS: ends the VM and reports STATUS to the host, as the busybox image's
# /run/vireo-exit does: 0x5555 (success) or (STATUS << 16) | 0x3333 (failure with that code) to
# the sifive,test0-style register named by vireo.exit=0xADDR on the kernel command line. The
# root disk is a throwaway overlay unless the user chose otherwise, and ext4's journal covers an
# unclean stop after a sync, so a sync is all the shutdown the VM needs; an orderly systemd
# shutdown would cost seconds of emulated CPU for nothing kept.
status=$(($1 & 255))
EXIT_ADDR=
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	vireo.exit=*) EXIT_ADDR=${arg#vireo.exit=} ;;
	esac
done
# Let the console drain first (setting its modes again waits for that), bounded.
timeout 2 stty "$(stty -g </dev/console)" </dev/console 2>/dev/null
sync
if [ -n "$EXIT_ADDR" ]; then
	if [ "$status" -eq 0 ]; then
		busybox devmem "$EXIT_ADDR" 32 0x5555
	else
		busybox devmem "$EXIT_ADDR" 32 $(((status << 16) | 0x3333))
	fi
fi
# Only reached without the register: power off, which the host sees as status 0.
systemctl poweroff --force --force
