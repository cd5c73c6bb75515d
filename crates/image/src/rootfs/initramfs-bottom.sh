#!/bin/sh
# initramfs-tools init-bottom script: the CLI appends /vireo/cmd (and /vireo/tty) to the initrd
# for a command to run; the initramfs is emptied at switch_root while /run is moved onto the
# new root, so the files go to /run/vireo for the agent. klibc's tools have no cp: cat.
PREREQ=""
prereqs() { echo "$PREREQ"; }
case "$1" in
prereqs)
	prereqs
	exit 0
	;;
esac
if [ -d /vireo ]; then
	mkdir -p /run/vireo
	for f in /vireo/*; do
		[ -f "$f" ] && cat "$f" >"/run/vireo/${f##*/}"
	done
fi
exit 0
