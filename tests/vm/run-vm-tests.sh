#!/bin/bash
# run-vm-tests.sh BUILD_DIR: end-to-end tests of the built `plugboard` against the real Linux
# USB/IP client (vhci-hcd + Debian's usbip tools) inside a QEMU (TCG) guest.
#
# The kernel is Debian's (the package linux-image-amd64 depends on), downloaded once, unpacked and
# cached under BUILD_DIR/vm-cache. The initramfs is rebuilt each run: static busybox, the module
# closure, Debian's usbip/usbipd, BUILD_DIR/src/cli/plugboard with its libraries and a test ext4 image.
# The guest's /init runs the scenarios and prints one `RESULT name PASS|FAIL reason` line each.
#
# Exit status: 0 when every expected RESULT line says PASS and the kernel complained about nothing.
set -euo pipefail

BUILD_DIR=$(realpath "${1:?usage: run-vm-tests.sh BUILD_DIR}")
PLUGBOARD=$BUILD_DIR/src/cli/plugboard
CACHE=$BUILD_DIR/vm-cache
VM_TIMEOUT=${VM_TIMEOUT:-240}
EXPECTED=(A-msc A-keyboard)

[ -x "$PLUGBOARD" ] || { echo "vm: $PLUGBOARD not built" >&2; exit 1; }
mkdir -p "$CACHE"
cd "$CACHE"

# ---- host tools: install only what is missing ----
need=()
for p in qemu-system-x86 busybox-static usbip kmod cpio xz-utils e2fsprogs; do
  dpkg-query -W -f '${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed' || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "vm: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null ||
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; }
fi
BUSYBOX=$(command -v busybox)

# ---- kernel: download once, unpack, depmod, extract the uncompressed vmlinux (PVH direct boot) ----
KPKG=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
[ -n "$KPKG" ] || { echo "vm: cannot find the kernel package linux-image-amd64 depends on" >&2; exit 1; }
KV=${KPKG#linux-image-}
KDIR=$CACHE/kpkg
if [ ! -f "$KDIR/boot/vmlinuz-$KV" ]; then
  rm -rf "$KDIR" "$CACHE"/linux-image-*.deb
  (cd "$CACHE" && apt-get download "$KPKG")
  dpkg -x "$CACHE/${KPKG}"_*.deb "$KDIR"
fi
[ -f "$KDIR/lib/modules/$KV/modules.dep" ] || depmod -b "$KDIR" "$KV"
VMLINUX=$CACHE/vmlinux-$KV
if [ ! -f "$VMLINUX" ]; then
  off=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$KDIR/boot/vmlinuz-$KV" | head -1 | cut -d: -f1 || true)
  [ -n "$off" ] || { echo "vm: no xz payload in vmlinuz-$KV" >&2; exit 1; }
  # tail is killed by SIGPIPE once xz has read the single stream: not an error.
  { tail -c +$((off + 1)) "$KDIR/boot/vmlinuz-$KV" | xz -dc --single-stream > "$VMLINUX.tmp"; } || true
  [ "$(head -c4 "$VMLINUX.tmp")" = $'\x7fELF' ] || { echo "vm: vmlinux extraction failed" >&2; exit 1; }
  mv "$VMLINUX.tmp" "$VMLINUX"
fi

# ---- test disk: ext4, 32 MiB, holding a known file of random data ----
rm -rf "$CACHE/diskroot" "$CACHE/disk.img"
mkdir "$CACHE/diskroot"
head -c 4M /dev/urandom > "$CACHE/diskroot/known.bin"
KNOWN_SHA=$(sha256sum "$CACHE/diskroot/known.bin" | cut -c1-64)
mke2fs -q -t ext4 -d "$CACHE/diskroot" "$CACHE/disk.img" 32M

# ---- initramfs ----
R=$CACHE/rootfs
rm -rf "$R"
mkdir -p "$R"/{bin,usr/sbin,usr/share/misc,proc,sys,dev,tmp,run,mnt,img,etc,lib64,var}
ln -s ../run "$R/var/run"
cp "$BUSYBOX" "$R/bin/busybox"
for a in $("$R/bin/busybox" --list); do [ "$a" = busybox ] || ln -sf busybox "$R/bin/$a"; done

copy_with_libs() { # copy a binary to DEST and every library ldd lists at its own path
  local bin=$1 dest=$2 l
  mkdir -p "$R$(dirname "$dest")"
  cp "$bin" "$R$dest"
  for l in $(ldd "$bin" | grep -oE '/[^ ]+\.so[^ ]*'); do
    [ -e "$R$l" ] && continue
    mkdir -p "$R$(dirname "$l")"
    cp -L "$l" "$R$l"
  done
}
copy_with_libs /usr/sbin/usbip /usr/sbin/usbip
copy_with_libs /usr/sbin/usbipd /usr/sbin/usbipd
copy_with_libs "$PLUGBOARD" /usr/bin/plugboard
for ids in /usr/share/misc/usb.ids /usr/share/hwdata/usb.ids /var/lib/usbutils/usb.ids; do
  [ -e "$ids" ] && { cp -L "$ids" "$R/usr/share/misc/usb.ids"; break; }
done
echo 'root:x:0:0::/:/bin/sh' > "$R/etc/passwd"
cp "$CACHE/disk.img" "$R/img/disk.img"

MODULES="usbip-core vhci-hcd usb-storage sd_mod usbhid hid-generic evdev cdc-acm crc32c_generic ext4 loop usbmon"
for m in $MODULES; do
  modprobe -d "$KDIR" -S "$KV" --show-depends "$m"
done | awk '$1 == "insmod" {print $2}' | sort -u | while read -r f; do
  rel=${f#"$KDIR"/}
  mkdir -p "$R/$(dirname "$rel")"
  cp "$f" "$R/$rel"
done
cp "$KDIR/lib/modules/$KV"/modules.{order,builtin,builtin.modinfo} "$R/lib/modules/$KV/"
depmod -b "$R" "$KV"

cat > "$R/init" <<'EOF'
#!/bin/sh
export PATH=/bin:/usr/sbin:/usr/bin
mount -t proc p /proc; mount -t sysfs s /sys; mount -t devtmpfs d /dev; mount -t tmpfs t /tmp
ip link set lo up
KNOWN_SHA=
for a in $(cat /proc/cmdline); do case $a in vmtest.sha=*) KNOWN_SHA=${a#*=};; esac; done
log() { echo "### [$(cut -d' ' -f1 /proc/uptime)] $*"; }
waitfor() { # CONDITION TENTHS: poll a shell condition every 0.1 s
  i=0; while ! eval "$1"; do [ $i -ge ${2:-300} ] && return 1; sleep 0.1; i=$((i+1)); done; return 0; }
stop_server() { # the pid is in a file: scenarios run in a subshell
  [ -f /tmp/server.pid ] || return 0
  pid=$(cat /tmp/server.pid); rm -f /tmp/server.pid
  kill $pid 2>/dev/null; waitfor "[ ! -d /proc/$pid ]" 50 || kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null; return 0; }
start_server() { # LOG ARGS...: start plugboard serve, wait for its listening line
  out=$1; shift
  plugboard serve "$@" > $out 2>&1 &
  echo $! > /tmp/server.pid
  waitfor "grep -q '^listening' $out" 100 || { cat $out; return 1; }
  cat $out
}
vhci_port() { usbip port 2>/dev/null | sed -n 's/^Port \([0-9]*\):.*/\1/p' | head -1; }
detach_all() { p=$(vhci_port); [ -n "$p" ] && usbip detach -p $p; }

echo; log "init start, kernel $(uname -r)"
modprobe -a usbip-core vhci-hcd usb-storage sd_mod usbhid hid-generic evdev cdc-acm crc32c_generic ext4
modprobe loop 2>/dev/null
modprobe usbmon 2>/dev/null && mount -t debugfs none /sys/kernel/debug

# ---- A1: mass storage backed by an ext4 image, imported by Linux's usbip attach ----
a_msc() {
  start_server /tmp/serve-msc.log --listen 127.0.0.1 --port 3240 --virtual msc:/img/disk.img ||
    { echo "server did not start"; return 1; }
  usbip list -r 127.0.0.1
  usbip attach -r 127.0.0.1 -b 100-1 || { echo "usbip attach failed"; return 1; }
  vdisk() { for b in /sys/block/sd*; do case $(readlink -f $b) in *vhci_hcd*) DISK=${b##*/}; return 0;; esac; done; return 1; }
  waitfor 'vdisk && [ -b /dev/$DISK ]' 300 || { echo "no /dev/sd* appeared on vhci"; return 1; }
  log "vhci disk /dev/$DISK: $(cat /sys/block/$DISK/size) sectors"
  usbip port
  mount -t ext4 /dev/$DISK /mnt || { echo "mount /dev/$DISK failed"; return 1; }
  s=$(sha256sum /mnt/known.bin | cut -c1-64)
  [ "$s" = "$KNOWN_SHA" ] || { umount /mnt; echo "known.bin sha256 $s, expected $KNOWN_SHA"; return 1; }
  log "known.bin sha256 matches the host's"
  dd if=/dev/urandom of=/tmp/new.bin bs=1024 count=1024 2>/dev/null
  [ "$(wc -c < /tmp/new.bin)" -eq 1048576 ] || { umount /mnt; echo "could not make a 1 MiB random new.bin"; return 1; }
  NEW_SHA=$(sha256sum /tmp/new.bin | cut -c1-64)
  cp /tmp/new.bin /mnt/new.bin || { umount /mnt; echo "writing new.bin failed"; return 1; }
  sync
  umount /mnt || { echo "umount failed"; return 1; }
  detach_all || { echo "usbip detach failed"; return 1; }
  waitfor '[ ! -b /dev/$DISK ]' 100 || { echo "/dev/$DISK still there after detach"; return 1; }
  stop_server
  cat /tmp/serve-msc.log
  mount -t ext4 -o loop,ro /img/disk.img /mnt || { echo "loop mount of the image failed"; return 1; }
  s=$(sha256sum /mnt/new.bin 2>/dev/null | cut -c1-64)
  umount /mnt
  [ "$s" = "$NEW_SHA" ] || { echo "new.bin in the image has sha256 '$s', expected $NEW_SHA"; return 1; }
  log "new.bin written through usbip is in the image"
  return 0
}

# ---- A2: keyboard typing "abc" on import ----
# The kernel's VT keyboard handler opens every new keyboard while hid-generic is still probing it, so
# usbhid polls at once; evdev would only see events once we open it, which is too late. So the check
# reads tty1 (raw mode, opened before the attach): keyboard -> vhci -> usbhid -> input core -> VT.
# Reports that arrive before the HID driver's probe returns are dropped by the HID core (it holds
# driver_input_lock during probe): a server that types the moment it is first polled loses the text.
# The usbmon trace printed on failure shows what the server delivered and when.
a_keyboard() {
  start_server /tmp/serve-kbd.log --listen 127.0.0.1 --port 3241 --virtual keyboard --type abc ||
    { echo "server did not start"; return 1; }
  # One open across stty and cat: the VT driver resets termios on the last close.
  timeout 20 sh -c 'stty raw -echo && exec cat' < /dev/tty1 > /tmp/tty1.txt &
  rd=$!
  timeout 25 cat /sys/kernel/debug/usb/usbmon/0u > /tmp/usbmon.txt 2>/dev/null &
  usbip --tcp-port 3241 attach -r 127.0.0.1 -b 100-1 || { kill $rd; echo "usbip attach failed"; return 1; }
  vev() { for e in /sys/class/input/event*; do case $(readlink -f $e) in *vhci_hcd*) EV=${e##*/}; return 0;; esac; done; return 1; }
  waitfor 'vev && [ -c /dev/input/$EV ]' 300 || { kill $rd; echo "no vhci input event device appeared"; return 1; }
  log "vhci keyboard /dev/input/$EV"
  waitfor '[ "$(cat /tmp/tty1.txt)" = abc ]' 150
  kill $rd 2>/dev/null; wait $rd 2>/dev/null
  got=$(od -An -c /tmp/tty1.txt | tr -s ' ' | sed 's/^ //')
  detach_all
  stop_server
  cat /tmp/serve-kbd.log
  if [ "$(cat /tmp/tty1.txt)" != abc ]; then
    echo "usbmon trace of the attempt:"; cat /tmp/usbmon.txt
    n=$(grep -cE ' C Ii:[0-9]+:[0-9]+:1 0:8 8 = 0000(0[1-9a-f]|[1-9a-f][0-9a-f])' /tmp/usbmon.txt)
    [ "$n" -gt 0 ] && why="; usbmon saw $n key-down report(s) delivered by the server, lost in the kernel (sent before hid-generic finished probing?)"
    echo "tty1 received '$got', expected 'a b c'$why"; return 1
  fi
  log "tty1 received: $got"
  return 0
}

run() { # NAME FUNCTION: the function's last output line is the failure reason
  { $2; echo $? > /tmp/$1.rc; } 2>&1 | tee /tmp/$1.out
  rc=$(cat /tmp/$1.rc)
  if [ $rc = 0 ]; then echo "RESULT $1 PASS"; else echo "RESULT $1 FAIL $(tail -1 /tmp/$1.out)"; fi
  stop_server
}
run A-msc a_msc
run A-keyboard a_keyboard

log "kernel log follows"
echo "### dmesg begin"
dmesg
echo "### dmesg end"
log "done"
poweroff -f
EOF
chmod +x "$R/init"
(cd "$R" && find . | cpio -o -H newc --quiet) | gzip -1 > "$CACHE/initramfs.cpio.gz"

# ---- boot ----
echo "vm: booting $KV (TCG), timeout ${VM_TIMEOUT}s"
START=$(date +%s%N)
set +e
timeout "$VM_TIMEOUT" qemu-system-x86_64 -accel tcg -cpu max -smp 2 -m 1024 -nographic -no-reboot \
  -nic none -kernel "$VMLINUX" -initrd "$CACHE/initramfs.cpio.gz" \
  -append "console=ttyS0 panic=-1 loglevel=4 vmtest.sha=$KNOWN_SHA" < /dev/null 2>&1 |
  tr -d '\r' > "$CACHE/console.log"
QRC=${PIPESTATUS[0]}
set -e
echo "vm: wall time $(( ($(date +%s%N) - START) / 1000000 )) ms, console log $CACHE/console.log"

passed=0; failed=0
grep -a '^###' "$CACHE/console.log" || true
for t in "${EXPECTED[@]}"; do
  line=$(grep -a "^RESULT $t " "$CACHE/console.log" | tail -1 || true)
  case $line in
    "RESULT $t PASS"*) echo "$line"; passed=$((passed + 1));;
    "") echo "RESULT $t FAIL missing RESULT line"; failed=$((failed + 1));;
    *) echo "$line"; failed=$((failed + 1));;
  esac
done
if [ "$QRC" = 124 ]; then echo "vm: FAIL timeout after ${VM_TIMEOUT}s"; failed=$((failed + 1)); fi
# Kernel lines only (timestamped): our own output cannot match.
complaints=$(grep -aE '^\[ *[0-9]+\.[0-9]+\]' "$CACHE/console.log" |
  grep -aE 'WARNING|BUG|unknown pdu|malicious|hung_task' | sort -u || true)
if [ -n "$complaints" ]; then
  echo "vm: FAIL the kernel complained:"
  echo "$complaints"
  failed=$((failed + 1))
fi
echo "vm: $passed passed, $failed failed"
[ "$failed" = 0 ]
