#!/bin/sh
# The serial getty's login program (serial-getty@.service.d/vireo.conf passes the tty's name):
# on the console of an interactive guest, root's shell at once, as in the busybox image: the
# start marker first (the CLI shows the console from there on), then a login shell whose exit
# status ends the VM. Other terminals, and the console while a command runs, get a normal login.
set -- "$1" $(cat /sys/class/tty/console/active 2>/dev/null)
tty=$1
eval "console=\${$#}"
if [ "$tty" != "$console" ] || [ -f /run/vireo/cmd ]; then
	exec /bin/login
fi
printf '\033]vireo;run\007'
cd /root
export HOME=/root USER=root LOGNAME=root SHELL=/bin/bash
bash -l
exec /usr/lib/vireo/exit $?
