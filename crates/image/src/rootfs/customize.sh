#!/bin/sh
# mmdebstrap's customize hook, run in the finished tree (chrooted; its programs run under
# qemu-user): what makes every boot of a throwaway VM start straight into a running system.
# vireo removes this script from the tree when it is done.
set -eu

# mmdebstrap copied the host's name and resolver in; neither belongs to the guest (which has
# no network unless given one).
echo vireo >/etc/hostname
printf '127.0.0.1\tlocalhost\n127.0.1.1\tvireo\n::1\tlocalhost ip6-localhost ip6-loopback\n' >/etc/hosts
rm -f /etc/resolv.conf
# The root is the first virtio disk, mounted read-write by the initramfs (root=/dev/vda rw).
# No fsck pass: each boot starts from a fresh overlay on a base that was clean when made.
printf '/dev/vda\t/\text4\tdefaults\t0\t0\n' >/etc/fstab
# An empty machine-id: systemd makes a new one at each boot (every VM is a machine of its
# own) without the first-boot setup that "uninitialized" or a missing file would start.
: >/etc/machine-id
# The console logs root in without a password (serial-getty's vireo.conf); other logins
# take none either. Nothing listens on a network in this image.
passwd -d root >/dev/null

systemctl enable vireo-agent.service
# Masked, because in a vireo VM they cannot do their work or there is none for them:
# - modprobe@drm: the DRM core for early graphics; vireo's boards have no display, and the
#   load alone took 20 s of an emulated boot.
# - modprobe@efi_pstore: vireo boots without UEFI; the module finds nothing to attach to.
# - getty@tty1: a login on a virtual terminal of a display nobody sees; the console is
#   serial (ttyS0, or hvc0), where the generator starts serial-getty.
# - apt-daily, apt-daily-upgrade: package list refreshes and upgrades for a throwaway root
#   that has no network by default; they would only fail or spend the emulated CPU.
systemctl mask modprobe@drm.service modprobe@efi_pstore.service getty@tty1.service \
	apt-daily.timer apt-daily-upgrade.timer

# Kernel modules a boot loads, and the drivers of vireo's devices, uncompressed and without
# their signatures: the kernel checks a module's signature by hashing all of it, which on an
# emulated CPU took 18 s for a 12 MB module, and xz costs as much again. The others stay
# as Debian ships them.
kver=$(ls /usr/lib/modules)
MODULES="virtio_mmio virtio_pci virtio_blk ext4 virtio_net virtio_rng vmw_vsock_virtio_transport
	autofs4 configfs nfnetlink ip_tables x_tables"
# A signed module ends with the signature, a 12-byte struct module_signature whose last 4
# bytes are the signature's length (big-endian), and this 28-byte marker.
MARKER='~Module signature appended~'
for m in $MODULES; do
	modprobe -S "$kver" --show-depends "$m"
done >/tmp/vireo-modules
sed -n 's/^insmod \([^ ]*\).*/\1/p' /tmp/vireo-modules | sort -u | while read -r f; do
	case "$f" in
	*.ko.xz)
		busybox unxz "$f"
		f=${f%.xz}
		;;
	esac
	# $(...) drops the marker's newline.
	[ "$(tail -c 28 "$f")" = "$MARKER" ] || continue
	set -- $(tail -c 32 "$f" | head -c 4 | od -An -tu1)
	sig=$((($1 << 24) | ($2 << 16) | ($3 << 8) | $4))
	truncate -s $(($(stat -c %s "$f") - 28 - 12 - sig)) "$f"
done
rm /tmp/vireo-modules
depmod "$kver"
# The first and only initrd (vireo runs mmdebstrap with INITRD=No, so the kernel's own hook
# made none), with these modules.
update-initramfs -c -k "$kver"

# The work that ConditionNeedsUpdate units (ldconfig, hwdb, journal catalog) would otherwise
# redo at every boot of a fresh overlay, done once, and marked done.
journalctl --update-catalog
systemd-hwdb update
/usr/lib/systemd/systemd-update-done

rm -f /usr/lib/vireo/customize
