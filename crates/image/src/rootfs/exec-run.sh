#!/bin/sh
# The main process of a `vireo exec` command's transient service (agent.sh): its exit status
# is the command's, which `systemd-run --wait` passes on. `signal N` from the host signals the
# whole service; this outlives the signal (a handler, not SIG_IGN, so the command keeps the
# default dispositions) and exits 128+N as a shell would, where systemd would count a main
# process killed by SIGINT, SIGTERM, SIGHUP or SIGPIPE a success and systemd-run would say 0.
trap : INT QUIT TERM HUP
sh /run/vireo/exec.sh
exit $?
