#!/bin/bash
# Install and start everything vbbackup's build and tests need. Idempotent: a second run
# changes nothing and takes a second or two.
#   1. Debian packages (apt-get only when one is missing)
#   2. .venv with the system site packages (python3-libvirt, python3-libnbd live there)
#   3. /dev/kvm permissions as udev would set them (see fix_kvm_permissions)
#   4. swtpm's local CA owned by its user (see fix_swtpm_localca)
#   5. libvirtd + virtlogd (no systemd here: started as daemons when virsh gets no answer)
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
    qemu-system-x86 qemu-utils qemu-block-extra
    libvirt-daemon-system libvirt-clients libvirt-daemon-driver-qemu
    python3-libvirt python3-libnbd libnbd-bin  # libnbd-bin ships nbdcopy, nbdinfo and nbdfuse
    nbdkit nbdkit-plugin-python
    python3-lz4 python3-lxml python3-click python3-venv python3-pip
    python3-xxhash  # end-to-end checksums (.sums); nbdkit embeds /usr/bin/python3
    fuse3 fdisk e2fsprogs xfsprogs dosfstools
    virtnbdbackup ovmf openssh-server openssh-client openssl
    time  # /usr/bin/time: peak RSS in bench/backup.py
    python3-tqdm python3-paramiko  # virtnbdbackup 2.47 (the anchor), beside Debian's 1.9.15
    debootstrap extlinux syslinux-common  # the test suite's real guest (tests/harness/build_guest.sh)
    libguestfs-tools python3-guestfs linux-image-amd64  # verify --fsck; the appliance's kernel
    swtpm swtpm-tools  # a vTPM domain in the tests (backup warns that its state is not saved)
)

log() { echo "setup: $*" >&2; }

install_packages() {
    local missing=() pkg
    for pkg in "${PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$'; then
            missing+=("$pkg")
        fi
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing ${missing[*]}"
    apt-get update -qq
    local available=()
    for pkg in "${missing[@]}"; do
        local policy
        policy=$(apt-cache policy "$pkg" 2>/dev/null)
        if grep -q 'Candidate: [^(]' <<<"$policy"; then
            available+=("$pkg")
        else
            log "package $pkg is not available here, skipped"
        fi
    done
    [ ${#available[@]} -eq 0 ] && return 0
    # Debian's maintainer scripts try to start services; without systemd that only warns.
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${available[@]}"
}

make_venv() {
    if [ ! -x .venv/bin/python ]; then
        log "creating .venv"
        /usr/bin/python3 -m venv --system-site-packages .venv
    fi
    local stamp=.venv/.vbbackup-pyproject.sha256 hash
    hash=$(sha256sum pyproject.toml | cut -d' ' -f1)
    if [ "$(cat "$stamp" 2>/dev/null)" != "$hash" ] || ! .venv/bin/python -c 'import vbbackup' 2>/dev/null; then
        log "installing vbbackup into .venv (editable, with test extras)"
        .venv/bin/python -m pip install -q -e '.[test]'
        echo "$hash" >"$stamp"
    fi
}

# `virsh version` takes seconds (it probes QEMU); listing domains answers at once.
libvirt_answers() { timeout 10 virsh -c qemu:///system list --name >/dev/null 2>&1; }

start_libvirtd() {
    libvirt_answers && return 0
    log "starting virtlogd and libvirtd"
    # A stale pid file of a daemon from an earlier boot stops the daemon from starting.
    local name
    for name in virtlogd libvirtd; do
        if [ -f "/run/$name.pid" ] && ! kill -0 "$(cat "/run/$name.pid")" 2>/dev/null; then
            rm -f "/run/$name.pid"
        fi
    done
    pgrep -x virtlogd >/dev/null || virtlogd -d
    pgrep -x libvirtd >/dev/null || libvirtd -d
    local i
    for i in $(seq 1 60); do
        libvirt_answers && return 0
        sleep 0.5
    done
    log "libvirtd does not answer on qemu:///system"
    return 1
}

# Without udev /dev/kvm stays root:root 0600. libvirt's QEMU probe opens it before dropping to
# libvirt-qemu and records KVM as present, then finds it unusable for libvirt-qemu and throws the
# cache away: every domain start re-probed QEMU for 10-110 s. Debian's udev rule sets root:kvm 0660.
# (The test domains are type='qemu' all the same.)
fix_kvm_permissions() {
    [ -c /dev/kvm ] || return 0
    getent group kvm >/dev/null || return 0
    if [ "$(stat -c %G:%a /dev/kvm)" != kvm:660 ]; then
        log "giving /dev/kvm to group kvm, mode 0660 (what udev would do)"
        chgrp kvm /dev/kvm
        chmod 0660 /dev/kvm
    fi
}

# libvirt runs swtpm_setup as user tss, or as root when there was no tss user when libvirtd
# started (before swtpm-tools was installed). Root leaves root-owned files in the local CA's
# directory, and every later vTPM start by a libvirtd that knows tss fails ("Need read/write
# rights on /var/lib/swtpm-localca/.lock.swtpm-localca for user tss"). Give them back to tss.
fix_swtpm_localca() {
    local dir=/var/lib/swtpm-localca
    [ -d "$dir" ] && getent passwd tss >/dev/null || return 0
    if [ -n "$(find "$dir" ! -user tss -print -quit)" ]; then
        log "giving $dir back to user tss (files made by a libvirtd that ran swtpm as root)"
        chown -R tss:root "$dir"
    fi
}

# virtnbdbackup 2.47, the release most users run, in a venv of its own (never the project's):
# interop tests restore our sets with it. Its wheel lives in ../shared/anchors.
VNB_247=/var/tmp/vnb-2.47
install_vnb_247() {
    local wheel=../shared/anchors/virtnbdbackup-2.47-py3-none-any.whl
    [ -x "$VNB_247/bin/virtnbdrestore" ] && return 0
    if [ ! -f "$wheel" ]; then
        log "no $wheel: the virtnbdbackup 2.47 interop tests will not run"
        return 0
    fi
    log "installing virtnbdbackup 2.47 into $VNB_247"
    /usr/bin/python3 -m venv --system-site-packages "$VNB_247"
    "$VNB_247/bin/pip" install -q "$wheel"
}

install_packages
install_vnb_247
make_venv
fix_kvm_permissions
fix_swtpm_localca
start_libvirtd
