#!/bin/bash
# Build the test suite's real guest: Debian bookworm from Debian's packages, self-booting
# (MBR + extlinux, one ext4 root partition) plus a second disk with an ext4 file system
# mounted at /data at boot. Driven only through qemu-guest-agent; a root shell on ttyS0.
#
#   build_guest.sh OUTDIR        writes OUTDIR/root.raw and OUTDIR/data.raw
#
# tests/harness/guest.py caches the result under a key of this file's content: change
# anything here and the next run builds again. Needs root, debootstrap, extlinux and a
# loop device (only to install extlinux; the file systems are made with mkfs -d).
set -euo pipefail

out=${1:?usage: build_guest.sh OUTDIR}
mirror=${GUEST_MIRROR:-http://deb.debian.org/debian}
root_size=1536M
data_size=128M
work=$(mktemp -d /var/tmp/vbguest-build.XXXXXX)
loop=
cleanup() {
    mountpoint -q "$work/mnt" && umount "$work/mnt"
    [ -n "$loop" ] && losetup -d "$loop"
    rm -rf "$work"
}
trap cleanup EXIT

tree=$work/tree
debootstrap --variant=minbase \
    --include=linux-image-amd64,systemd-sysv,udev,qemu-guest-agent,e2fsprogs,kmod \
    bookworm "$tree" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -20 "$work/debootstrap.log" >&2
    exit 1
}

echo vbguest >"$tree/etc/hostname"
cat >"$tree/etc/fstab" <<'EOF'
LABEL=vbroot / ext4 errors=remount-ro 0 1
LABEL=vbdata /data ext4 defaults,nofail 0 2
EOF
mkdir -p "$tree/data"
# a root shell on the serial console (the console tail of verify --boot shows it)
mkdir -p "$tree/etc/systemd/system/serial-getty@ttyS0.service.d"
cat >"$tree/etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf" <<'EOF'
[Service]
ExecStart=
ExecStart=-/sbin/agetty --autologin root --keep-baud 115200 %I $TERM
EOF
# no network, no timers: a quiet guest boots faster under TCG
chroot "$tree" systemctl mask apt-daily.timer apt-daily-upgrade.timer \
    e2scrub_all.timer fstrim.timer systemd-networkd-wait-online.service >/dev/null 2>&1 || true
# the initramfs holds what a virtio guest needs, not every driver (a smaller, faster boot)
echo MODULES=list >"$tree/etc/initramfs-tools/conf.d/vbguest"
printf 'virtio_pci\nvirtio_blk\nvirtio_console\next4\n' >>"$tree/etc/initramfs-tools/modules"
kver=$(basename "$(ls -d "$tree"/lib/modules/*)")
chroot "$tree" update-initramfs -u -k "$kver" >/dev/null 2>&1 ||
    chroot "$tree" update-initramfs -c -k "$kver" >/dev/null
mkdir -p "$tree/boot/extlinux"
cat >"$tree/boot/extlinux/extlinux.conf" <<EOF
DEFAULT debian
TIMEOUT 1
SERIAL 0 115200
LABEL debian
    LINUX /boot/vmlinuz-$kver
    INITRD /boot/initrd.img-$kver
    APPEND root=LABEL=vbroot ro console=ttyS0,115200 quiet systemd.show_status=1
EOF
echo "vbguest: built" >"$tree/etc/vbguest-release"
rm -rf "$tree"/var/cache/apt/archives/*.deb "$tree"/var/lib/apt/lists/* \
    "$tree"/usr/share/doc/* "$tree"/usr/share/man/*

# the root disk: MBR, partition 1 from 1 MiB, bootable, ext4 made from the tree
truncate -s "$root_size" "$work/root.raw"
echo 'start=2048, type=83, bootable' | sfdisk -q "$work/root.raw"
start=$((2048 * 512))
part_size=$(($(stat -c %s "$work/root.raw") - start))
truncate -s "$part_size" "$work/part.raw"
# 32-bit ext4 without metadata_csum_seed: what extlinux 6.04 can read
mkfs.ext4 -q -F -L vbroot -O ^64bit,^metadata_csum_seed -d "$tree" "$work/part.raw"
dd if="$work/part.raw" of="$work/root.raw" bs=1M seek=1 conv=notrunc,sparse status=none
rm "$work/part.raw"
loop=$(losetup --find --show --offset "$start" --sizelimit "$part_size" "$work/root.raw")
mkdir "$work/mnt"
mount "$loop" "$work/mnt"
extlinux --install "$work/mnt/boot/extlinux" >/dev/null 2>&1
umount "$work/mnt"
losetup -d "$loop"
loop=
dd if=/usr/lib/syslinux/mbr/mbr.bin of="$work/root.raw" conv=notrunc status=none

# the data disk: a file system on the whole disk, one file to find
mkdir -p "$work/data"
echo "vbguest data disk" >"$work/data/README"
truncate -s "$data_size" "$work/data.raw"
mkfs.ext4 -q -F -L vbdata -d "$work/data" "$work/data.raw"

mkdir -p "$out"
mv "$work/root.raw" "$work/data.raw" "$out/"
