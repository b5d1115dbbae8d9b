#!/bin/bash
# run-vm-tests.sh BUILD_DIR: end-to-end tests of the built `plugboard` against the real Linux USB/IP
# stack (vhci-hcd, usbip-host and Debian's usbip tools) inside a QEMU (TCG) guest.
#
# The kernel is Debian's (the package linux-image-amd64 depends on), downloaded once, unpacked and
# cached under BUILD_DIR/vm-cache. The initramfs is rebuilt each run: static busybox, the module
# closure, Debian's usbip/usbipd, dmsetup, BUILD_DIR/src/cli/plugboard with its libraries, a test
# ext4 image and guest-init.sh as /init, which runs the scenarios and prints one
# `RESULT name PASS|FAIL reason` line each, and `BENCH config read|write MiB/s` figures.
#
# The guest has QEMU's usb-storage stick (the same ext4 image plus scratch space) on an xHCI
# controller, and user networking: the host reaches the guest's usbipd through a hostfwd on
# 127.0.0.1, and the guest reaches a `plugboard serve` on the host's 127.0.0.1 through slirp's
# host address 10.0.2.2. That host server is PB_VM_HOST_PLUGBOARD when set (tools/test passes the
# AddressSanitizer build), so a real kernel drives a sanitized server.
#
# Exit status: 0 when every expected RESULT line says PASS and the kernel complained about nothing.
set -euo pipefail

BUILD_DIR=$(realpath "${1:?usage: run-vm-tests.sh BUILD_DIR}")
PLUGBOARD=$BUILD_DIR/src/cli/plugboard
CACHE=$BUILD_DIR/vm-cache
HOST_PLUGBOARD=${PB_VM_HOST_PLUGBOARD:-$PLUGBOARD}
VM_DIR=$(dirname "$(realpath "$0")")
VM_TIMEOUT=${VM_TIMEOUT:-600}
VM_ONLY=${PB_VM_ONLY:-}   # a comma-separated subset of scenarios (and "bench"), for development
EXPECTED=(A-msc A-keyboard A-serial C-msc C-keyboard C-serial D-msc D-keyboard D-serial B-usbip-host
          F-host-list F-host-serve F-host-serve-image E-kill-server E-detach-io E-stall G-share-msc G-share-attach G-share-keyboard G-share-serial G-unplug G-replug)
if [ -n "$VM_ONLY" ]; then
  only=(); for t in "${EXPECTED[@]}"; do [[ ",$VM_ONLY," == *",${t%-image},"* ]] && only+=("$t"); done
  EXPECTED=("${only[@]}")
fi

[ -x "$PLUGBOARD" ] || { echo "vm: $PLUGBOARD not built" >&2; exit 1; }
mkdir -p "$CACHE"
cd "$CACHE"

# ---- host tools: install only what is missing ----
need=()
for p in qemu-system-x86 busybox-static usbip kmod cpio xz-utils e2fsprogs dmsetup python3; do
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

# ---- test disks: ext4, 32 MiB, holding a known file of random data ----
# disk.img goes into the initramfs (for the guest's virtual disks), host-disk.img is served by the
# host for scenario F, stick.img is QEMU's usb-storage: the same file system, then scratch space up
# to 96 MiB for the write benchmark.
rm -rf "$CACHE/diskroot" "$CACHE"/{disk,host-disk,stick}.img "$CACHE"/{qmp,ftdi}.sock
mkdir "$CACHE/diskroot"
head -c 4M /dev/urandom > "$CACHE/diskroot/known.bin"
KNOWN_SHA=$(sha256sum "$CACHE/diskroot/known.bin" | cut -c1-64)
mke2fs -q -t ext4 -d "$CACHE/diskroot" "$CACHE/disk.img" 32M
cp "$CACHE/disk.img" "$CACHE/host-disk.img"
cp "$CACHE/disk.img" "$CACHE/stick.img"
truncate -s 96M "$CACHE/stick.img"

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
copy_with_libs "$(command -v dmsetup)" /usr/sbin/dmsetup
# udevd, so that libusb hears of hot-plug as on a desktop (its udev backend listens to udevd,
# not to the kernel). Debian's udev package, downloaded once; no rules are installed.
if [ ! -x "$CACHE/udev/bin/udevadm" ]; then
  rm -rf "$CACHE/udev" "$CACHE"/udev_*.deb
  (cd "$CACHE" && apt-get download udev)
  dpkg -x "$CACHE"/udev_*.deb "$CACHE/udev"
fi
copy_with_libs "$CACHE/udev/bin/udevadm" /bin/udevadm
mkdir -p "$R/lib/systemd" && ln -sf /bin/udevadm "$R/lib/systemd/systemd-udevd"
copy_with_libs "$PLUGBOARD" /usr/bin/plugboard
for ids in /usr/share/misc/usb.ids /usr/share/hwdata/usb.ids /var/lib/usbutils/usb.ids; do
  [ -e "$ids" ] && { cp -L "$ids" "$R/usr/share/misc/usb.ids"; break; }
done
echo 'root:x:0:0::/:/bin/sh' > "$R/etc/passwd"
cp "$CACHE/disk.img" "$R/img/disk.img"

MODULES="usbip-core usbip-host vhci-hcd xhci-pci usb-storage sd_mod usbhid hid-generic evdev cdc-acm crc32c_generic
  ext4 loop usbmon dm-mod virtio_net virtio_pci ftdi_sio"
for m in $MODULES; do
  modprobe -d "$KDIR" -S "$KV" --show-depends "$m"
done | awk '$1 == "insmod" {print $2}' | sort -u | while read -r f; do
  rel=${f#"$KDIR"/}
  mkdir -p "$R/$(dirname "$rel")"
  cp "$f" "$R/$rel"
done
cp "$KDIR/lib/modules/$KV"/modules.{order,builtin,builtin.modinfo} "$R/lib/modules/$KV/"
depmod -b "$R" "$KV"

cp "$VM_DIR/guest-init.sh" "$R/init"
chmod +x "$R/init"
(cd "$R" && find . | cpio -o -H newc --quiet) | gzip -1 > "$CACHE/initramfs.cpio.gz"

# ---- host side of scenario F ----
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
HOST_SERVE_PORT=$(free_port); HOST_FWD_PORT=$(free_port); HOST_SIGNAL_PORT=$(free_port)
HOST_LOG=$CACHE/host-serve.log
echo "vm: host server $HOST_PLUGBOARD on 127.0.0.1:$HOST_SERVE_PORT"
# The sanitizers' settings of the asan test setup (meson.build); harmless for a plain build.
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1 \
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
LSAN_OPTIONS=suppressions=$VM_DIR/../lsan.supp \
"$HOST_PLUGBOARD" serve --listen 127.0.0.1 --port "$HOST_SERVE_PORT" --virtual "msc:$CACHE/host-disk.img" \
  > "$HOST_LOG" 2>&1 &
HOST_PID=$!
for _ in $(seq 100); do grep -q '^listening' "$HOST_LOG" && break; sleep 0.1; done

host_results=()
signal_guest() { # the guest waits for a connection on its port 5555 (behind a hostfwd)
  exec 7<> "/dev/tcp/127.0.0.1/$HOST_SIGNAL_PORT" && exec 7>&-
}
host_list_probe() { # when the guest says its usbipd is up: read it through the hostfwd port
  local busid=$1 out=$CACHE/host-list.txt why=
  if ! "$PLUGBOARD" list -r 127.0.0.1 -p "$HOST_FWD_PORT" > "$out" 2>&1; then why="plugboard list failed"
  elif ! grep -q "$busid: .*(46f4:0001)" "$out"; then why="the stick $busid (46f4:0001) is not in the list"
  elif ! "$PLUGBOARD" probe -r 127.0.0.1 -p "$HOST_FWD_PORT" -b "$busid" >> "$out" 2>&1; then why="plugboard probe failed"
  elif ! grep -q 'bInterfaceClass *8 Mass Storage' "$out"; then why="probe shows no mass storage interface"
  fi
  sed 's/^/vm: host: /' "$out"
  host_results+=("RESULT F-host-list ${why:+FAIL }${why:-PASS}")
  signal_guest
}

qmp() { # COMMAND JSON-ARGUMENTS: one QMP command on QEMU's monitor socket
  python3 - "$CACHE/qmp.sock" "$1" "$2" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f = s.makefile("rw")
def call(cmd, args):
    f.write(json.dumps({"execute": cmd, "arguments": args}) + "\n"); f.flush()
    while True:
        reply = json.loads(f.readline())
        if "return" in reply or "error" in reply:
            return reply
json.loads(f.readline())  # greeting
call("qmp_capabilities", {})
print("vm: host: %s: %s" % (sys.argv[2], call(sys.argv[2], json.loads(sys.argv[3]))))
PY
}
host_press_keys() { # a, b, c pressed and released on QEMU's usb-kbd, then let the guest go on
  local k
  for k in a b c; do
    for down in true false; do
      qmp input-send-event "{\"events\": [{\"type\": \"key\", \"data\": {\"down\": $down, \"key\": {\"type\": \"qcode\", \"data\": \"$k\"}}}]}"
      sleep 0.1
    done
  done
  signal_guest
}

host_replug_stick() { # QMP device_add of the stick again, then let the guest go on
  qmp device_add '{"driver": "usb-storage", "bus": "usb.0", "drive": "stick", "serial": "PBSTICK", "id": "stickdev"}'
  signal_guest
}

host_unplug_stick() { # QMP device_del of the stick, then let the guest go on
  qmp device_del '{"id": "stickdev"}'
  signal_guest
}

# ---- boot ----
echo "vm: booting $KV (TCG), timeout ${VM_TIMEOUT}s"
START=$(date +%s%N)
: > "$CACHE/console.log"
timeout "$VM_TIMEOUT" qemu-system-x86_64 -accel tcg -cpu max -smp 2 -m 1024 -nographic -no-reboot \
  -kernel "$VMLINUX" -initrd "$CACHE/initramfs.cpio.gz" \
  -append "console=ttyS0 panic=-1 loglevel=4 vmtest.sha=$KNOWN_SHA vmtest.hserve=$HOST_SERVE_PORT vmtest.only=$VM_ONLY vmtest.mb=${VM_BENCH_MB:-32}" \
  -netdev "user,id=net0,net=10.0.2.0/24,hostfwd=tcp:127.0.0.1:$HOST_FWD_PORT-10.0.2.15:3250,hostfwd=tcp:127.0.0.1:$HOST_SIGNAL_PORT-10.0.2.15:5555" \
  -device virtio-net-pci,netdev=net0 \
  -device qemu-xhci,id=usb -blockdev "driver=raw,node-name=stick,file.driver=file,file.filename=$CACHE/stick.img" \
  -device usb-storage,bus=usb.0,drive=stick,serial=PBSTICK,id=stickdev -device usb-kbd,bus=usb.0,id=kbd \
  -chardev "socket,id=ftdi,path=$CACHE/ftdi.sock,server=on,wait=off" -device usb-serial,bus=usb.0,chardev=ftdi,id=ftdidev -qmp "unix:$CACHE/qmp.sock,server=on,wait=off" \
  < /dev/null 2>&1 | stdbuf -oL tr -d '\r' > "$CACHE/console.log" &  # line-buffered: the host watches it
QEMU_PIPE=$!
# The far end of QEMU's FTDI serial port: echo every byte back (G-share-serial).
python3 - "$CACHE/ftdi.sock" > "$CACHE/ftdi-echo.log" 2>&1 <<'PY' &
import socket, sys, time
for _ in range(600):
    try:
        s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); break
    except OSError:
        time.sleep(0.1)
total = 0
while True:
    data = s.recv(65536)
    if not data:
        break
    s.sendall(data); total += len(data)
print("echoed", total, "bytes")
PY
ECHO_PID=$!
listed=; unplugged=; pressed=; replugged=
while kill -0 "$QEMU_PIPE" 2>/dev/null; do
  if [ -z "$pressed" ] && grep -a -q 'G-keyboard ready' "$CACHE/console.log"; then
    pressed=1; host_press_keys
  fi
  if [ -z "$listed" ] && line=$(grep -a -m1 'F-list ready busid=' "$CACHE/console.log"); then
    listed=1; host_list_probe "${line##*busid=}"
  fi
  if [ -z "$unplugged" ] && grep -a -q 'G-unplug ready' "$CACHE/console.log"; then
    unplugged=1; host_unplug_stick
  fi
  if [ -z "$replugged" ] && grep -a -q 'G-replug ready' "$CACHE/console.log"; then
    replugged=1; host_replug_stick
  fi
  sleep 0.5
done
QRC=0; wait "$QEMU_PIPE" || QRC=$?
kill "$ECHO_PID" 2>/dev/null || true; wait "$ECHO_PID" 2>/dev/null || true
echo "vm: wall time $(( ($(date +%s%N) - START) / 1000000 )) ms, console log $CACHE/console.log"

# The host server: stop it, then judge its log (sanitizers) and what the guest wrote into its image.
kill -TERM "$HOST_PID" 2>/dev/null; HOST_RC=0; wait "$HOST_PID" || HOST_RC=$?
sed 's/^/vm: host server: /' "$HOST_LOG"
guest_sha=$(sed -n 's/.*F-serve wrote from-guest.bin sha256 \([0-9a-f]*\).*/\1/p' "$CACHE/console.log" | tail -1)
image_sha=$(debugfs -R 'cat /from-guest.bin' "$CACHE/host-disk.img" 2>/dev/null | sha256sum | cut -c1-64)
why=
if [ "$HOST_RC" != 0 ]; then why="the host server exited with status $HOST_RC"
elif grep -qE 'AddressSanitizer|LeakSanitizer|runtime error' "$HOST_LOG"; then why="the sanitizers reported on the host server"
elif ! grep -q '^import 100-1' "$HOST_LOG"; then why="the host server saw no import"
elif [ -z "$guest_sha" ] || [ "$image_sha" != "$guest_sha" ]; then why="from-guest.bin in the host's image has sha256 $image_sha, the guest wrote ${guest_sha:-nothing}"
fi
host_results+=("RESULT F-host-serve-image ${why:+FAIL }${why:-PASS}")

passed=0; failed=0
grep -a '^###' "$CACHE/console.log" | grep -av '^### dmesg' || true
for t in "${EXPECTED[@]}"; do
  line=$({ grep -a "^RESULT $t " "$CACHE/console.log"; printf '%s\n' "${host_results[@]}" | grep "^RESULT $t "; } | tail -1 || true)
  case $line in
    "RESULT $t PASS"*) echo "$line"; passed=$((passed + 1));;
    "") echo "RESULT $t FAIL missing RESULT line"; failed=$((failed + 1));;
    *) echo "$line"; failed=$((failed + 1));;
  esac
done
if [ "$QRC" = 124 ]; then echo "vm: FAIL timeout after ${VM_TIMEOUT}s"; failed=$((failed + 1)); fi
# Kernel lines only (timestamped): our own output cannot match.
complaints=$(grep -aE '^\[ *[0-9]+\.[0-9]+\]' "$CACHE/console.log" |
  grep -aE 'WARNING|BUG|unknown pdu|malicious|hung_task|blocked for more than' | sort -u || true)
if [ -n "$complaints" ]; then
  echo "vm: FAIL the kernel complained:"
  echo "$complaints"
  failed=$((failed + 1))
fi

# ---- benchmark table: medians from this boot, ratios against the kernel's usbip-host export ----
figure() { { grep -a "^BENCH $1 $2 " "$CACHE/console.log" || true; } | tail -1 | awk '{print $4}'; }
echo "vm: dd O_DIRECT through vhci, MiB/s (median of 3 runs of ${VM_BENCH_MB:-32} MiB, TCG guest):"
printf 'vm: %-24s %8s %8s %14s %14s\n' config read write "read/(ii)" "write/(ii)"
for c in direct-usb-storage usbip-host plugboard-tcp plugboard-socketpair plugboard-libusb; do
  r=$(figure $c read); w=$(figure $c write); br=$(figure usbip-host read); bw=$(figure usbip-host write)
  [ -n "$r$w" ] || continue
  ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0 && b > 0) printf "%.2f", a / b; else print "-" }'; }
  printf 'vm: %-24s %8s %8s %14s %14s\n' $c "${r:--}" "${w:--}" "$(ratio "$r" "$br")" "$(ratio "$w" "$bw")"
done

echo "vm: $passed passed, $failed failed"
[ "$failed" = 0 ]
