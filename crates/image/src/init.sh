#!/bin/sh
# vireo's /init: a busybox sh script, the same for every architecture.
#
# The vireo CLI depends on this protocol:
# - With the file /vireo/cmd (a shell-quoted command line), /init finds the virtio-serial ports
#   named vireo.stdin, vireo.stdout, vireo.stderr and vireo.ctl (in
#   /sys/class/virtio-ports/*/name) and runs `sh /vireo/cmd` with its standard streams on the
#   first three. With /vireo/tty too ("ROWS COLS TERM"), the command runs on a pseudo-terminal
#   of that size instead, relayed by busybox telnetd over vireo.stdin and vireo.stdout (telnet
#   framing: 0xff doubled, IAC negotiations, NAWS for window sizes). It then reports the
#   command's status through the register named by `vireo.exit=0xADDR` on the kernel command
#   line. If the ports do not appear, it prints why on the console and reports 125.
# - Without /vireo/cmd it runs an interactive shell on the console, after printing the start
#   marker ESC ] v i r e o ; r u n BEL, and reports that shell's exit status.
# - vireo.ctl carries lines from the host: `poweroff` (sync and power off now), and in an
#   interactive guest `exec SCRIPT` (run a command on the three streams ports, for
#   `vireo exec`; SCRIPT is octal-escaped) and `signal N` (to that command); `generation
#   [nics]` after a restore or clone (see renew_net). /init writes
#   `started` on it just before it runs the command, `exited STATUS` after an exec, and
#   `ip ADDR` once it knows its IPv4 address.
# - poweroff, halt and reboot are vireo's own (below): they sync, then power off or reset the
#   machine, so the host sees the request; `-f` skips nothing that matters here.
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

# /run/vireo-exit STATUS EXIT_ADDR reports STATUS to the host: 0x5555 means success to a
# sifive,test0-style finisher, (STATUS << 16) | 0x3333 a failure with that code. A script of
# its own, so that processes other than this one (the control loop, the interactive session
# under busybox init) can end the VM too.
cat >/run/vireo-exit <<'EOF'
#!/bin/sh
status=$(($1 & 255))
EXIT_ADDR=$2
# Let the console drain first: setting its modes again (unchanged) waits for that, as
# busybox stty applies them with TCSADRAIN. The serial port starts transmitting
# asynchronously (runtime PM), so otherwise a shell that exits at once can power the
# machine off before its output has left the UART. Bounded: a console that never drains
# must not keep the machine from stopping.
timeout 2 stty "$(stty -g </dev/console)" </dev/console 2>/dev/null
sync
if [ -n "$EXIT_ADDR" ]; then
	if [ "$status" -eq 0 ]; then
		devmem "$EXIT_ADDR" 32 0x5555
	else
		devmem "$EXIT_ADDR" 32 $(((status << 16) | 0x3333))
	fi
fi
/bin/busybox poweroff -f
# Only reached when neither the register nor poweroff stopped the machine; PID 1
# must not exit.
while :; do sleep 3600; done
EOF
chmod 755 /run/vireo-exit
vireo_exit() {
	/run/vireo-exit "$1" "$EXIT_ADDR"
}

# Waits (at most 10 s) for vireo's ports and sets CIN, COUT, CERR, CCTL to their devices: the
# names arrive from the host after the driver binds. One pass over the ports per try, with
# the shell's own read: every fork costs on an emulated CPU.
find_ports() {
	i=0
	while [ $i -lt 200 ]; do
		CIN= COUT= CERR= CCTL=
		for d in /sys/class/virtio-ports/*; do
			read -r name 2>/dev/null <"$d/name" || continue
			case "$name" in
			vireo.stdin) CIN=/dev/${d##*/} ;;
			vireo.stdout) COUT=/dev/${d##*/} ;;
			vireo.stderr) CERR=/dev/${d##*/} ;;
			vireo.ctl) CCTL=/dev/${d##*/} ;;
			esac
		done
		[ -e "$CIN" ] && [ -e "$COUT" ] && [ -e "$CERR" ] && [ -e "$CCTL" ] && return 0
		usleep 50000
		i=$((i + 1))
	done
	return 1
}

# Serves the host's requests on fd 4 (vireo.ctl), in the background.
ctl_loop() {
	while read -r verb arg <&4; do
		case "$verb" in
		poweroff) vireo_exit 0 ;;
		exec) [ -p /run/vireo-exec.fifo ] && echo "$arg" >/run/vireo-exec.fifo & ;;
		signal)
			pid=$(cat /run/vireo-exec.pid 2>/dev/null)
			[ -n "$pid" ] && kill -"$arg" -"$pid" 2>/dev/null
			;;
		generation) if [ "$arg" = nics ]; then renew_net & else tell_ip; fi ;;
		esac
	done
}

# The host's `generation [nics]` on vireo.ctl: this machine with NICs was restored from a
# snapshot or cloned, and its VMM has not heard the first `ip`. With `nics` (a clone) its NICs
# have new MAC addresses, which virtio-net reads only when it binds: bind every NIC again and
# ask for an address first.
renew_net() {
	d=/sys/bus/virtio/drivers/virtio_net
	for dev in "$d"/virtio*; do
		[ -e "$dev" ] || continue
		echo "${dev##*/}" >"$d/unbind"
		echo "${dev##*/}" >"$d/bind"
	done
	[ -e /sys/class/net/eth0 ] || return 0
	ip link set eth0 up
	udhcpc -i eth0 -q -n -t 5 -s /etc/vireo/udhcpc.script
	tell_ip
}

# Tells the host the guest's IPv4 address (`ip ADDR` on vireo.ctl), when it has a NIC with one.
tell_ip() {
	[ -e /sys/class/net/eth0 ] || return 0
	set -- $(ip -o -4 addr show dev eth0 2>/dev/null)
	[ -n "$4" ] && echo "ip ${4%/*}" >&4
}

cd /root

if [ -f /vireo/cmd ]; then
	if ! find_ports; then
		echo "vireo: /init: the command channel (virtio-serial ports vireo.*) did not appear" >/dev/console
		vireo_exit 125
	fi
	exec 4<>"$CCTL"
	ctl_loop &
	tell_ip
	echo started >&4
	if [ -f /vireo/tty ]; then
		read -r ROWS COLS TERM </vireo/tty
		# busybox telnetd in inetd mode puts the command on a new pseudo-terminal (its
		# controlling tty, so Ctrl-C from the host is SIGINT here) and relays it over
		# vireo.stdin/vireo.stdout with the telnet framing the host undoes (IAC escapes,
		# NAWS window sizes). It does not return the command's status: the command leaves
		# it in a file. The wrapper outlives signals to its process group (a handler, not
		# SIG_IGN, so the command keeps the default dispositions) to write that status.
		cat >/run/vireo-tty <<-EOF
			#!/bin/sh
			trap : INT QUIT TERM HUP
			stty rows $ROWS cols $COLS 2>/dev/null
			export TERM=$TERM
			sh /vireo/cmd
			echo \$? >/run/vireo.status
		EOF
		chmod 755 /run/vireo-tty
		telnetd -i -l /run/vireo-tty -f /nonexistent <"$CIN" >"$COUT" 2>"$CERR" 4>&-
		status=$(cat /run/vireo.status 2>/dev/null)
		vireo_exit "${status:-125}"
	fi
	sh /vireo/cmd <"$CIN" >"$COUT" 2>"$CERR" 4>&-
	vireo_exit $?
fi

# Interactive: the host may still ask for a power-off, and run commands (`vireo exec`).
# Those run from /run/vireo-exec-runner, which busybox init starts: a child of this script's
# background loop would inherit SIGINT and SIGQUIT ignored (a non-interactive shell's `&`
# does that, and nothing below can undo it), so Ctrl-C could not reach the command. The
# runner takes one script at a time from a FIFO (each byte of the shell command as a \NNN
# octal escape, which printf turns back, so no byte can break the line protocol), runs it on
# the streams ports in a session of its own so that a signal reaches all of it (and what it
# leaves running ends with it: a port has one opener at a time, and a leftover holding the
# streams would fail the next exec), and reports `exited STATUS` through a second FIFO that
# a relay copies to vireo.ctl.
EXEC_RUNNER=
if find_ports; then
	exec 4<>"$CCTL"
	ctl_loop &
	tell_ip
	mkfifo /run/vireo-exec.fifo /run/vireo-status.fifo
	(while :; do cat /run/vireo-status.fifo; done >&4 2>/dev/null) &
	cat >/run/vireo-exec-runner <<-EOF
		#!/bin/sh
		exec </dev/null >/dev/null 2>&1
		while :; do
			read -r script </run/vireo-exec.fifo || continue
			printf "\$script" >/run/vireo-exec.sh
			setsid sh -c 'echo \$\$ >/run/vireo-exec.pid; exec sh /run/vireo-exec.sh' \\
				<"$CIN" >"$COUT" 2>"$CERR"
			status=\$?
			pid=\$(cat /run/vireo-exec.pid)
			rm -f /run/vireo-exec.pid
			if kill -0 -"\$pid" 2>/dev/null; then
				kill -HUP -"\$pid" 2>/dev/null
				sleep 1
				kill -KILL -"\$pid" 2>/dev/null
			fi
			echo "exited \$status" >/run/vireo-status.fifo
		done
	EOF
	chmod 755 /run/vireo-exec-runner
	EXEC_RUNNER='::respawn:/run/vireo-exec-runner\n'
fi

export PS1='\u@\h:\w\$ '
# The host shows the console from here on (boot messages before are hidden unless --verbose).
printf '\033]vireo;run\007' >/dev/console
# busybox init becomes PID 1 for the interactive shell, so that poweroff, halt and reboot (which
# signal PID 1) work as on a real machine; a shell script cannot take those signals while it
# waits for the shell. The session ends the VM with the shell's exit status.
cat >/run/vireo-session <<-EOF
	#!/bin/sh
	cd /root
	sh -l 4>&-
	exec /run/vireo-exit \$? "$EXIT_ADDR"
EOF
chmod 755 /run/vireo-session
# The console's own device (the last one listed is /dev/console's): opened by init for the
# session, it becomes the shell's controlling terminal, so Ctrl-C and job control work.
set -- $(cat /sys/class/tty/console/active 2>/dev/null)
eval "CONSOLE_TTY=\${$#}"
printf "%s::once:/run/vireo-session\n${EXEC_RUNNER}::shutdown:/bin/sync\n" "$CONSOLE_TTY" >/etc/inittab
exec /bin/busybox init
