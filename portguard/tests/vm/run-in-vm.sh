#!/bin/bash
# Runs a command as root in a Debian kernel under QEMU, with this machine's filesystem as the
# guest's root (read-only, over 9p; /run, /tmp and bpffs are the guest's own), and exits with
# the command's status.
#
# Why: some kernels refuse every trampoline-based BPF program (freplace, fentry) even to root,
# and the libxdp multi-program tests (tests/multiprog.rs) then have nothing to test. A stock
# Debian kernel allows them. `cargo xtask vmtest` builds the tests and runs them through this;
# by hand, from the workspace root:
#
#   cargo test -p portguard --test multiprog --no-run
#   portguard/tests/vm/run-in-vm.sh env PORTGUARD_REQUIRE_SHARING=1 \
#       target/debug/deps/multiprog-<hash> --test-threads=1
#
# Emulation only (TCG): correct, but slow, and its timings are not the host's. Needs
# qemu-system-x86, busybox-static and the kernel package, which it installs or downloads (with
# apt) into ~/.cache/portguard/vm on first use.
set -euo pipefail

[ $# -ge 1 ] || { echo "usage: $0 COMMAND [ARGS...]" >&2; exit 2; }
cache="${HOME}/.cache/portguard/vm"
mkdir -p "$cache"

missing=()
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
ldd /bin/busybox 2>&1 | grep -q "not a dynamic" || missing+=(busybox-static)
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

modules="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci 9pnet 9pnet_virtio netfs fscache 9p veth"

# The newest Debian 6.1 kernel image the archive has: its vmlinuz and the few modules above,
# kept; the rest of the package is not.
if [ ! -e "$cache/kernel/vmlinuz" ]; then
    search() { apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' | awk '{print $1}' | sort -V | tail -1; }
    pkg=$(search)
    [ -n "$pkg" ] || { apt-get update -qq && pkg=$(search); }
    [ -n "$pkg" ] || { echo "no linux-image-6.1.0-*-amd64 in apt's lists (apt-get update?)" >&2; exit 1; }
    tmp="$cache/unpack"
    rm -rf "$tmp" "$cache/kernel" && mkdir -p "$tmp" "$cache/kernel/mod"
    (cd "$tmp" && apt-get download "$pkg" >/dev/null 2>&1)
    dpkg-deb -x "$tmp"/linux-image-*.deb "$tmp/root"
    for m in $modules; do
        f=$(find "$tmp/root/lib/modules" -name "$m.ko*" | head -1)
        [ -n "$f" ] && cp "$f" "$cache/kernel/mod/"
    done
    cp "$tmp"/root/boot/vmlinuz-* "$cache/kernel/vmlinuz"
    rm -rf "$tmp"
fi

# This run's own directory: two runs at once (two worktrees) never share an initramfs.
run=$(mktemp -d "$cache/run.XXXXXX")
trap 'rm -rf "$run"' EXIT

# initramfs: busybox, the modules for virtio, 9p and veth (in dependency order), and an init
# that mounts the host's root and runs the command in it.
ir="$run/initramfs"
mkdir -p "$ir/bin"
cp /bin/busybox "$ir/bin/busybox"
cp -r "$cache/kernel/mod" "$ir/mod"
{ printf 'cd %q && ' "$(pwd)"; printf '%q ' "$@"; } > "$ir/cmd"
cat > "$ir/init" <<EOF
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $modules; do [ -e /mod/\$m.ko ] && insmod /mod/\$m.ko; done
mkdir -p /mnt && mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 host /mnt
mount -t proc proc /mnt/proc; mount -t sysfs sys /mnt/sys; mount -t devtmpfs dev /mnt/dev
mount -t tmpfs tmpfs /mnt/run; mount -t tmpfs tmpfs /mnt/tmp; mount -t bpf bpf /mnt/sys/fs/bpf
echo "vm: \$(uname -r)"
chroot /mnt /bin/bash -c "export PATH=$PATH HOME=$HOME; \$(cat /cmd)"
echo "vm-exit=\$?"
poweroff -f
EOF
chmod +x "$ir/init"
(cd "$ir" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1) > "$run/initrd.gz"

log="$run/console.log"
timeout "${VM_TIMEOUT:-1800}" qemu-system-x86_64 -accel tcg,thread=multi,tb-size=512 -cpu max \
    -smp 2 -m 2048 -kernel "$cache/kernel/vmlinuz" -initrd "$run/initrd.gz" \
    -append "console=ttyS0 quiet panic=-1" -display none -serial stdio -no-reboot \
    -virtfs local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap \
    | tee "$log" | sed -n '/^vm: /,$p' | grep -v '^vm-exit=\|reboot: Power down'
status=$(grep -a -o 'vm-exit=[0-9]*' "$log" | tail -1 | cut -d= -f2)
# The last run's transcript, boot messages included, for a look after a failure.
cp "$log" "$cache/console.log"
exit "${status:-1}"
