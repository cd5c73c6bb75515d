#!/bin/sh
# initramfs-tools hook: the root is ext4 on virtio-blk (virtio-mmio on vireo's emu board,
# virtio-pci with --virtio-transport pci). With MODULES=list (conf.d/vireo.conf) these modules
# and their dependencies are all the initrd carries, and they are loaded before the root disk
# is looked for.
# It runs after the udev hook to take udev's hardware database (13 MB, half the initrd) back
# out: it describes input devices, sensors and the like, nothing the initrd's udev needs to
# find a virtio disk, and the guest kernel would unpack it on an emulated CPU at every boot.
# The root filesystem keeps its own copy.
PREREQ="udev"
prereqs() { echo "$PREREQ"; }
case "$1" in
prereqs)
	prereqs
	exit 0
	;;
esac
. /usr/share/initramfs-tools/hook-functions
for m in virtio_mmio virtio_pci virtio_blk ext4; do
	force_load "$m"
done
rm -f "${DESTDIR}/usr/lib/udev/hwdb.bin"
