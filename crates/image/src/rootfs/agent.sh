#!/bin/sh
# vireo's agent in the systemd image (debian-riscv64-rootfs), run by vireo-agent.service. It
# serves the command channel that vireo's busybox /init serves in the initramfs image, with the
# same protocol (crates/image/src/init.sh has the whole of it in its header):
# - With /run/vireo/cmd (the CLI's /vireo/cmd, which the initramfs hook keeps past switch_root),
#   it waits until the system has finished starting (`systemctl is-system-running --wait`:
#   running or degraded), writes `started` on vireo.ctl and runs `sh /run/vireo/cmd` with its
#   standard streams on vireo.stdin, vireo.stdout and vireo.stderr, or, with /run/vireo/tty, on
#   a pseudo-terminal relayed by busybox telnetd; it then ends the VM with the command's status
#   (/usr/lib/vireo/exit, through the register named by vireo.exit=0xADDR).
# - vireo.ctl carries `poweroff` from the host and, in an interactive guest, `exec SCRIPT`
#   (octal-escaped) and `signal N` for `vireo exec`. Each SCRIPT runs as a transient service
#   (systemd-run), so it starts with default signal dispositions whatever this script inherited,
#   a signal reaches all of it (its cgroup), and what it leaves running stops with it: a port
#   has one opener at a time, and a leftover holding the streams would fail the next exec. The
#   agent answers `exited STATUS` (exec-run keeps a signal's 128+N, which systemd would call a
#   success).
# - It writes `ip ADDR` on vireo.ctl when eth0 has an IPv4 address.
# - `generation [nics]` from the host after a restore: report the address; with `nics` (a
#   clone) bind the NICs again first (see renew_net).
# The console's getty logs root in for an interactive guest (/usr/lib/vireo/session).

EXIT=/usr/lib/vireo/exit
DIR=/run/vireo

# Waits (at most 60 s: udev loads virtio_console while the system starts) for vireo's ports and
# sets CIN, COUT, CERR, CCTL to their devices.
find_ports() {
	i=0
	while [ $i -lt 600 ]; do
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
		sleep 0.1
		i=$((i + 1))
	done
	return 1
}

# Runs one `vireo exec` script (octal-escaped, as the host sends it) and reports its status.
run_exec() {
	printf "$1" >"$DIR/exec.sh"
	systemd-run --quiet --wait --collect --unit=vireo-exec --service-type=exec \
		-p StandardInput=file:"$CIN" -p StandardOutput=file:"$COUT" \
		-p StandardError=file:"$CERR" -p WorkingDirectory=/root -p IgnoreSIGPIPE=no \
		-E HOME=/root /usr/lib/vireo/exec-run
	echo "exited $?" >&4
}

# Serves the host's requests on fd 4 (vireo.ctl).
ctl_loop() {
	while read -r verb arg <&4; do
		case "$verb" in
		poweroff) "$EXIT" 0 ;;
		exec) run_exec "$arg" & ;;
		signal) systemctl kill --signal="$arg" vireo-exec.service 2>/dev/null ;;
		generation) if [ "$arg" = nics ]; then renew_net & else tell_ip; fi ;;
		esac
	done
}

# As in init.sh: after a clone (`generation nics`), bind the NICs again so they read
# their (possibly new) MAC addresses; whatever configures the network sees new links (this
# image configures none yet). Then tell the host the address, once there is one (at most 30 s).
renew_net() {
	d=/sys/bus/virtio/drivers/virtio_net
	for dev in "$d"/virtio*; do
		[ -e "$dev" ] || continue
		echo "${dev##*/}" >"$d/unbind"
		echo "${dev##*/}" >"$d/bind"
	done
	i=0
	while [ $i -lt 300 ]; do
		busybox ip -o -4 addr show dev eth0 2>/dev/null | grep -q inet && break
		sleep 0.1
		i=$((i + 1))
	done
	tell_ip
}

tell_ip() {
	[ -e /sys/class/net/eth0 ] || return 0
	set -- $(busybox ip -o -4 addr show dev eth0 2>/dev/null)
	[ -n "$4" ] && echo "ip ${4%/*}" >&4
}

mkdir -p "$DIR"
if [ -f "$DIR/cmd" ]; then
	if ! find_ports; then
		echo "vireo: agent: the command channel (virtio-serial ports vireo.*) did not appear" >/dev/console
		"$EXIT" 125
	fi
	exec 4<>"$CCTL"
	ctl_loop &
	# The command runs in the system it was booted for, once that has started.
	systemctl is-system-running --wait >/dev/null 2>&1
	tell_ip
	echo started >&4
	if [ -f "$DIR/tty" ]; then
		# As in init.sh: telnetd puts the command on a new pseudo-terminal (its controlling
		# tty) relayed over the ports with telnet framing; tty-run runs it.
		busybox telnetd -i -l /usr/lib/vireo/tty-run -f /nonexistent <"$CIN" >"$COUT" 2>"$CERR" 4>&-
		status=$(cat "$DIR/status" 2>/dev/null)
		"$EXIT" "${status:-125}"
	fi
	sh "$DIR/cmd" <"$CIN" >"$COUT" 2>"$CERR" 4>&-
	"$EXIT" $?
fi

# Interactive: the console's session is the getty's; here only the host's requests.
find_ports || exit 0
exec 4<>"$CCTL"
tell_ip
ctl_loop
