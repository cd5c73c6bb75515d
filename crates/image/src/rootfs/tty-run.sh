#!/bin/sh
# busybox telnetd's login program for a command on a pseudo-terminal (agent.sh), as the
# busybox image's /run/vireo-tty: the terminal's size and TERM from /run/vireo/tty, then the
# command, whose status it leaves in /run/vireo/status (telnetd does not return it). It outlives
# signals to its process group (a handler, not SIG_IGN, so the command keeps the default
# dispositions) to write that status. A file of the image, not one written at boot, because
# initramfs-tools mounts /run noexec.
trap : INT QUIT TERM HUP
read -r ROWS COLS TERM </run/vireo/tty
stty rows "$ROWS" cols "$COLS" 2>/dev/null
export TERM
sh /run/vireo/cmd
echo $? >/run/vireo/status
