#!/bin/sh
# guest-init.sh: /init of the QEMU guest that run-vm-tests.sh boots. Runs every scenario against
# the real vhci-hcd / usbip-host of a Debian kernel and prints, per scenario, one line
#   RESULT name PASS            or   RESULT name FAIL reason
# and per benchmark figure one line `BENCH config read|write MiB/s`. The host judges those lines
# and the kernel log. Settings come on the kernel command line as vmtest.NAME=VALUE.
export PATH=/bin:/sbin:/usr/sbin:/usr/bin
mount -t proc p /proc; mount -t sysfs s /sys; mount -t devtmpfs d /dev; mount -t tmpfs t /tmp
mkdir -p /dev/pts && mount -t devpts -o ptmxmode=0666 pts /dev/pts
ip link set lo up

VT_sha=; VT_hserve=; VT_mb=32; VT_only=
for a in $(cat /proc/cmdline); do
  case $a in vmtest.*=*) k=${a#vmtest.}; eval "VT_${k%%=*}='${a#*=}'";; esac
done

log() { echo "### [$(cut -d' ' -f1 /proc/uptime)] $*"; }
waitfor() { # CONDITION [TENTHS]: poll a shell condition every 0.1 s
  i=0; while ! eval "$1"; do [ $i -ge ${2:-300} ] && return 1; sleep 0.1; i=$((i+1)); done; return 0; }
fail() { echo "$*"; return 1; }
sha() { sha256sum "$1" 2>/dev/null | cut -c1-64; }

# ---- what vhci-hcd has made ----
vhci_ports() { usbip port 2>/dev/null | sed -n 's/^Port \([0-9]*\):.*/\1/p'; }
on_vhci() { case $(readlink -f "$1") in *vhci_hcd*) return 0;; esac; return 1; }
vhci_disk() { for b in /sys/block/sd*; do on_vhci $b && { DISK=${b##*/}; return 0; }; done; return 1; }
vhci_event() { for e in /sys/class/input/event*; do on_vhci $e && { EV=${e##*/}; return 0; }; done; return 1; }
vhci_acm() { for t in /sys/class/tty/ttyACM*; do on_vhci $t && { ACM=${t##*/}; return 0; }; done; return 1; }

# ---- the device side: `plugboard serve` or `plugboard virtual`, its stdin a FIFO on fd 4 ----
# METHOD is how the device gets imported: usbip (Linux's usbip attach), plugboard (plugboard
# attach) or virtual (plugboard virtual --attach: a socketpair, no TCP).
stop_server() {
  [ -f /tmp/server.pid ] || return 0
  pid=$(cat /tmp/server.pid); rm -f /tmp/server.pid
  kill $pid 2>/dev/null; waitfor "[ ! -d /proc/$pid ]" 50 || kill -9 $pid 2>/dev/null
  wait $pid 2>/dev/null; return 0
}
launch() { # READY STDIN ARGS...: plugboard ARGS in the background, reading STDIN; wait for its READY line
  ready=$1; input=$2; shift 2
  rm -f /tmp/server.log # else the wait below may find the previous server's lines
  # Explicit: a background command's stdin is /dev/null otherwise, whatever the function's.
  plugboard "$@" < $input > /tmp/server.log 2>&1 &
  echo $! > /tmp/server.pid
  waitfor "grep -q '^$ready' /tmp/server.log" 100 || { cat /tmp/server.log; fail "plugboard $1 did not start"; return; }
}
start_devices() { # METHOD SPEC [PORT]
  port=${3:-3240}
  rm -f /tmp/kbd.fifo; mkfifo /tmp/kbd.fifo; exec 4<>/tmp/kbd.fifo
  if [ $1 = virtual ]; then
    launch attached /tmp/kbd.fifo virtual --attach "$2" --type-stdin || return
    cat /tmp/server.log; return 0
  fi
  launch listening /tmp/kbd.fifo serve --listen 127.0.0.1 --port $port --virtual "$2" --type-stdin || return
  case $1 in
    usbip) usbip --tcp-port $port attach -r 127.0.0.1 -b 100-1 || { fail "usbip attach failed"; return; } ;;
    plugboard) plugboard attach -r 127.0.0.1 -p $port -b 100-1 || { fail "plugboard attach failed"; return; } ;;
  esac
  cat /tmp/server.log
}
stop_devices() { # METHOD: let go of the device the way a user of METHOD does, then stop the server
  p=$(vhci_ports | head -1)
  rc=0
  if [ -n "$p" ]; then
    case $1 in
      usbip) usbip detach -p $p || rc=$(fail "usbip detach failed");;
      plugboard) plugboard detach -p $p || rc=$(fail "plugboard detach -p $p failed");;
    esac
  fi
  stop_server  # plugboard virtual detaches its ports when told to stop
  exec 4>&-
  cat /tmp/server.log
  waitfor '[ -z "$(vhci_ports)" ]' 100 || { usbip port; fail "vhci port still in use after stopping"; return; }
  [ "$rc" = 0 ] || { echo "$rc"; return 1; }
}

# ---- device checks, shared by scenarios A (usbip), C (plugboard attach) and D (virtual) ----
check_msc() { # METHOD: mount the ext4 image through vhci, read a known file, write a new one
  start_devices $1 msc:/img/disk.img || return 1
  waitfor 'vhci_disk && [ -b /dev/$DISK ]' 300 || fail "no /dev/sd* appeared on vhci" || return 1
  log "vhci disk /dev/$DISK: $(cat /sys/block/$DISK/size) sectors, $(cat /sys/block/$DISK/device/model)"
  mount -t ext4 /dev/$DISK /mnt || fail "mount /dev/$DISK failed" || return 1
  s=$(sha /mnt/known.bin)
  [ "$s" = "$VT_sha" ] || { umount /mnt; fail "known.bin sha256 $s, expected $VT_sha"; return 1; }
  log "known.bin sha256 matches the host's"
  head -c 1048576 /dev/urandom > /tmp/new.bin; new_sha=$(sha /tmp/new.bin)
  cp /tmp/new.bin /mnt/new.bin || { umount /mnt; fail "writing new.bin failed"; return 1; }
  umount /mnt || fail "umount failed" || return 1
  stop_devices $1 || return 1
  waitfor '[ ! -b /dev/$DISK ]' 100 || fail "/dev/$DISK still there after detach" || return 1
  mount -t ext4 -o loop,ro /img/disk.img /mnt || fail "loop mount of the image failed" || return 1
  s=$(sha /mnt/new.bin); umount /mnt
  [ "$s" = "$new_sha" ] || fail "new.bin in the image has sha256 '$s', expected $new_sha" || return 1
  log "new.bin written through vhci is in the image"
}

key_events() { # the EV_KEY events in /tmp/ev.bin as code:value (struct input_event is 24 bytes on x86-64)
  # Autorepeat (value 2) comes from the kernel's input core, not the device: left out.
  od -An -v -w24 -tu2 /tmp/ev.bin | awk '$9 == 1 && $11 != 2 { printf "%s%d:%d", sep, $10, $11; sep = " " }'
}
check_keyboard() { # METHOD: text typed on the server arrives as key events on /dev/input/event*
  start_devices $1 keyboard || return 1
  waitfor 'vhci_event && [ -c /dev/input/$EV ]' 300 || fail "no vhci input event device appeared" || return 1
  log "vhci keyboard /dev/input/$EV: $(cat /sys/class/input/$EV/device/name)"
  cat /dev/input/$EV > /tmp/ev.bin & rd=$!
  # hid-generic creates the event device during its probe, and the HID core drops reports until
  # that probe returns: give it a moment before typing. (No sysfs sign marks the end of the probe:
  # the driver link exists before the probe starts.)
  sleep 1
  printf abc >&4
  want="30:1 30:0 48:1 48:0 46:1 46:0" # KEY_A, KEY_B, KEY_C pressed and released
  waitfor '[ "$(key_events)" = "$want" ]' 100; got=$(key_events)
  kill $rd; wait $rd 2>/dev/null
  stop_devices $1 || return 1
  [ "$got" = "$want" ] || fail "key events '$got', expected '$want'" || return 1
  log "key events on /dev/input/$EV: $got"
}

check_serial() { # METHOD: bytes travel both ways between /dev/ttyACM* and the server's pty
  start_devices $1 serial:pty || return 1
  pty=$(sed -n 's/.*pty \(\/dev\/pts\/[0-9]*\).*/\1/p' /tmp/server.log | head -1)
  [ -c "$pty" ] || fail "no pty in the server's output" || return 1
  waitfor 'vhci_acm && [ -c /dev/$ACM ]' 300 || fail "no /dev/ttyACM* appeared on vhci" || return 1
  log "vhci serial /dev/$ACM, server pty $pty"
  exec 5<>/dev/$ACM 6<>$pty
  stty -F /dev/$ACM raw -echo; stty -F $pty raw -echo
  head -c 3000 /dev/urandom | od -An -v -tx1 | tr -d ' \n' > /tmp/to-server.txt
  head -c 3000 /dev/urandom | od -An -v -tx1 | tr -d ' \n' > /tmp/to-host.txt
  cat <&6 > /tmp/at-server.txt & rd=$!
  cat /tmp/to-server.txt >&5
  waitfor '[ $(wc -c < /tmp/at-server.txt) -ge 6000 ]' 100
  kill $rd; wait $rd 2>/dev/null
  cat <&5 > /tmp/at-host.txt & rd=$!
  cat /tmp/to-host.txt >&6
  waitfor '[ $(wc -c < /tmp/at-host.txt) -ge 6000 ]' 100
  kill $rd; wait $rd 2>/dev/null
  exec 5>&- 6>&-
  stop_devices $1 || return 1
  cmp -s /tmp/to-server.txt /tmp/at-server.txt ||
    fail "ttyACM -> pty: $(wc -c < /tmp/at-server.txt) of 6000 bytes, or different" || return 1
  cmp -s /tmp/to-host.txt /tmp/at-host.txt ||
    fail "pty -> ttyACM: $(wc -c < /tmp/at-host.txt) of 6000 bytes, or different" || return 1
  log "6000 bytes each way between /dev/$ACM and $pty"
}

# ---- QEMU's emulated usb-storage stick, exported by the kernel's usbip-host ----
STICK=
find_stick() { STICK=$(usbip list -p -l 2>/dev/null | grep '#usbid=46f4:0001#' | sed 's/busid=\([^#]*\)#.*/\1/'); [ -n "$STICK" ]; }
stick_disk() { for b in /sys/block/sd*; do [ -e $b ] && ! on_vhci $b && { SDISK=${b##*/}; return 0; }; done; return 1; }

b_usbip_host() { # plugboard attach of a real (emulated) device that usbip-host exports
  find_stick || fail "QEMU's usb-storage stick not found" || return 1
  usbip bind -b $STICK || fail "usbip bind -b $STICK failed" || return 1
  usbipd -D --tcp-port 3250 || fail "usbipd did not start" || return 1
  sleep 0.3
  plugboard attach -r 127.0.0.1 -p 3250 -b $STICK || fail "plugboard attach failed" || return 1
  waitfor 'vhci_disk && [ -b /dev/$DISK ]' 300 || fail "no disk appeared on vhci" || return 1
  p=$(vhci_ports | head -1)
  plugboard port
  plugboard port | grep -q "usbip://127.0.0.1:3250/$STICK" || fail "plugboard port does not show the remote" || return 1
  mount -t ext4 -o ro /dev/$DISK /mnt || fail "mount /dev/$DISK failed" || return 1
  s=$(sha /mnt/known.bin); umount /mnt
  [ "$s" = "$VT_sha" ] || fail "known.bin sha256 $s, expected $VT_sha" || return 1
  log "stick through usbip-host + plugboard attach: known.bin sha256 matches"
  plugboard detach -p $p || fail "plugboard detach -p $p failed" || return 1
  waitfor '[ -z "$(vhci_ports)" ] && [ ! -b /dev/$DISK ]' 100 || fail "port $p still in use after detach" || return 1
  [ ! -e /run/plugboard/port$p ] || fail "/run/plugboard/port$p left behind" || return 1
  log "plugboard detach returned port $p"
}

# ---- G: the libusb export (plugboard serve --share) of the emulated stick ----
start_share() { start_share_spec $1 $STICK; } # PORT: plugboard serve --share the stick
start_share_spec() { # PORT BUSID|VID:PID
  launch listening /dev/null serve --listen 127.0.0.1 --port $1 --share $2 || return
  cat /tmp/server.log
}
g_share_msc() { # Linux's usbip attach imports the stick from plugboard's libusb export
  find_stick || fail "QEMU's usb-storage stick not found" || return 1
  start_share 3260 || return 1
  plugboard list -l
  usbip --tcp-port 3260 list -r 127.0.0.1 | grep -q "$STICK: .*(46f4:0001)" || fail "the stick is not in the devlist" || return 1
  usbip --tcp-port 3260 attach -r 127.0.0.1 -b $STICK || fail "usbip attach failed" || return 1
  waitfor 'vhci_disk && [ -b /dev/$DISK ]' 300 || fail "no disk appeared on vhci" || return 1
  stick_disk && [ -b /dev/$SDISK ] && fail "usb-storage still has the stick as /dev/$SDISK" && return 1
  log "stick through plugboard serve --share: /dev/$DISK, $(cat /sys/block/$DISK/device/model)"
  mount -t ext4 /dev/$DISK /mnt || fail "mount /dev/$DISK failed" || return 1
  s=$(sha /mnt/known.bin)
  [ "$s" = "$VT_sha" ] || { umount /mnt; fail "known.bin sha256 $s, expected $VT_sha"; return 1; }
  head -c 1048576 /dev/urandom > /tmp/new.bin; new_sha=$(sha /tmp/new.bin)
  cp /tmp/new.bin /mnt/shared.bin && umount /mnt || fail "writing shared.bin failed" || return 1
  usbip detach -p $(vhci_ports | head -1) || fail "usbip detach failed" || return 1
  waitfor '[ -z "$(vhci_ports)" ]' 100 || fail "port still in use" || return 1
  waitfor "grep -q '^close $STICK' /tmp/server.log" 100 || fail "the server did not see the close" || return 1
  # The kernel's usb-storage gets the stick back: the written file is on it.
  waitfor 'stick_disk && [ -b /dev/$SDISK ]' 300 || fail "usb-storage did not get the stick back" || return 1
  mount -t ext4 -o ro /dev/$SDISK /mnt || fail "mount /dev/$SDISK failed" || return 1
  s=$(sha /mnt/shared.bin); umount /mnt
  [ "$s" = "$new_sha" ] || fail "shared.bin on the stick has sha256 '$s', expected $new_sha" || return 1
  log "usb-storage has the stick back as /dev/$SDISK, with the file written through the export"
  stop_server
}

g_share_plugboard_attach() { # plugboard attach <-> plugboard serve --share: both ends ours
  find_stick || fail "QEMU's usb-storage stick not found" || return 1
  start_share 3265 || return 1
  plugboard attach -r 127.0.0.1 -p 3265 -b $STICK || fail "plugboard attach failed" || return 1
  waitfor 'vhci_disk && [ -b /dev/$DISK ]' 300 || fail "no disk appeared on vhci" || return 1
  mount -t ext4 -o ro /dev/$DISK /mnt || fail "mount /dev/$DISK failed" || return 1
  s=$(sha /mnt/known.bin); umount /mnt
  [ "$s" = "$VT_sha" ] || fail "known.bin sha256 $s, expected $VT_sha" || return 1
  p=$(vhci_ports | head -1)
  plugboard detach -p $p || fail "plugboard detach -p $p failed" || return 1
  waitfor '[ -z "$(vhci_ports)" ]' 100 || fail "port still in use" || return 1
  waitfor 'stick_disk && [ -b /dev/$SDISK ]' 300 || fail "usb-storage did not get the stick back" || return 1
  log "plugboard attach of plugboard serve --share: checksum matches, detach gives the stick back"
  stop_server
}

g_share_keyboard() { # QEMU's usb-kbd through the libusb export: keys the host presses arrive on evdev
  start_share_spec 3263 0627:0001 || return 1
  kbd=$(sed -n 's/^exporting \([^:]*\): .*/\1/p' /tmp/server.log | head -1)
  usbip --tcp-port 3263 attach -r 127.0.0.1 -b $kbd || fail "usbip attach failed" || return 1
  waitfor 'vhci_event && [ -c /dev/input/$EV ]' 300 || fail "no vhci input event device appeared" || return 1
  log "QEMU keyboard $kbd through the export: /dev/input/$EV ($(cat /sys/class/input/$EV/device/name))"
  cat /dev/input/$EV > /tmp/ev.bin & rd=$!
  sleep 1 # the HID core drops reports until hid-generic's probe returns
  host_step "G-keyboard ready" || { kill $rd; fail "the host never signalled"; return 1; }
  want="30:1 30:0 48:1 48:0 46:1 46:0"
  waitfor '[ "$(key_events)" = "$want" ]' 100; got=$(key_events)
  kill $rd; wait $rd 2>/dev/null
  usbip detach -p $(vhci_ports | head -1) || fail "usbip detach failed" || return 1
  stop_server
  [ "$got" = "$want" ] || fail "key events '$got', expected '$want'" || return 1
  log "keys pressed on QEMU's keyboard arrived through the export: $got"
}

g_share_serial() { # QEMU's FTDI serial port through the export; the host echoes what it gets
  start_share_spec 3264 0403:6001 || return 1
  ftdi=$(sed -n 's/^exporting \([^:]*\): .*/\1/p' /tmp/server.log | head -1)
  usbip --tcp-port 3264 attach -r 127.0.0.1 -b $ftdi || fail "usbip attach failed" || return 1
  vusb() { for t in /sys/class/tty/ttyUSB*; do on_vhci $t && { USBTTY=${t##*/}; return 0; }; done; return 1; }
  waitfor 'vusb && [ -c /dev/$USBTTY ]' 300 || fail "no /dev/ttyUSB* appeared on vhci" || return 1
  log "QEMU's FTDI port $ftdi through the export: /dev/$USBTTY"
  exec 5<>/dev/$USBTTY
  stty -F /dev/$USBTTY 115200 raw -echo
  head -c 2000 /dev/urandom | od -An -v -tx1 | tr -d ' \n' > /tmp/to-ftdi.txt
  cat <&5 > /tmp/from-ftdi.txt & rd=$!
  cat /tmp/to-ftdi.txt >&5
  waitfor '[ $(wc -c < /tmp/from-ftdi.txt) -ge 4000 ]' 150
  kill $rd; wait $rd 2>/dev/null
  exec 5>&-
  usbip detach -p $(vhci_ports | head -1) || fail "usbip detach failed" || return 1
  stop_server
  cmp -s /tmp/to-ftdi.txt /tmp/from-ftdi.txt ||
    fail "ttyUSB -> host -> ttyUSB: $(wc -c < /tmp/from-ftdi.txt) of 4000 bytes back, or different" || return 1
  log "4000 bytes went out through the export's FTDI port and came back"
}

g_unplug() { # QEMU unplugs the stick (QMP device_del, done by the host) during a dd through the export
  find_stick || fail "QEMU's usb-storage stick not found" || return 1
  start_share_spec 3262 46f4:0001 || return 1
  usbip --tcp-port 3262 attach -r 127.0.0.1 -b $STICK || fail "usbip attach failed" || return 1
  waitfor 'vhci_disk && [ -b /dev/$DISK ]' 300 || fail "no disk appeared on vhci" || return 1
  start_dd $DISK; sleep 1
  [ -d /proc/$DD ] || fail "dd had finished before the unplug" || return 1
  host_step "G-unplug ready" || fail "the host never signalled the unplug" || return 1
  dd_ended || return 1
  waitfor '[ -z "$(vhci_ports)" ]' 100 || fail "vhci port not freed after the unplug" || return 1
  waitfor '[ ! -b /dev/$DISK ]' 100 || fail "/dev/$DISK still there" || return 1
  waitfor "grep -q '^close $STICK.*unplugged' /tmp/server.log" 100 || { cat /tmp/server.log; fail "the server did not close the session as unplugged"; return 1; }
  [ -d /proc/$(cat /tmp/server.pid) ] || fail "the server died" || return 1
  plugboard list -r 127.0.0.1 -p 3262 > /tmp/list.txt; cat /tmp/list.txt
  grep -q "$STICK" /tmp/list.txt && fail "the unplugged stick is still in the devlist" && return 1
  cat /tmp/server.log
  log "unplugged during dd: dd ended, port freed, session closed, devlist empty"
  touch /tmp/keep-server # left running for G-replug
}
g_replug() { # QEMU plugs the stick back (QMP device_add): the server shares it again by VID:PID
  rm -f /tmp/keep-server
  [ -f /tmp/server.pid ] && [ -d /proc/$(cat /tmp/server.pid) ] || fail "no server left by G-unplug" || return 1
  host_step "G-replug ready" || fail "the host never signalled the replug" || return 1
  waitfor "grep -q '^plugged ' /tmp/server.log" 150 || { cat /tmp/server.log; fail "the server did not share the stick again"; return 1; }
  find_stick || fail "the stick is not in plugboard list -l" || return 1
  plugboard list -l | grep -q "busid $STICK (46f4:0001)" || fail "plugboard list -l does not show $STICK" || return 1
  plugboard list -r 127.0.0.1 -p 3262 | grep -q "$STICK: .*(46f4:0001)" || fail "the stick is not back in the devlist" || return 1
  usbip --tcp-port 3262 attach -r 127.0.0.1 -b $STICK || fail "usbip attach after the replug failed" || return 1
  waitfor 'vhci_disk && [ -b /dev/$DISK ]' 300 || fail "no disk after the replug" || return 1
  dd if=/dev/$DISK of=/dev/null iflag=direct bs=1M count=4 2>/dev/null || fail "read after the replug failed" || return 1
  usbip detach -p $(vhci_ports | head -1) || fail "usbip detach failed" || return 1
  cat /tmp/server.log
  # Only the stick: never the device our own client imported through vhci (same VID:PID).
  grep '^plugged ' /tmp/server.log | grep -v "^plugged $STICK:" && fail "the server shared a device imported through vhci" && return 1
  log "replugged: shared again as $STICK, imported and read"
  stop_server
}

host_step() { # MARKER: print MARKER for the host, wait until it connects to our port 5555
  # Listen first: the host acts on the marker at once, and slirp drops a connection that finds
  # nobody listening.
  timeout 60 nc -l -p 5555 > /dev/null & ncpid=$!
  waitfor "netstat -tln | grep -q ':5555 '" 50
  log "$1" > /dev/console # scenarios write to a file; the host watches the console
  wait $ncpid
}

# ---- F: the host's side, through QEMU's user networking ----
f_host_list() { # the host runs plugboard list/probe against our usbipd, then connects to :5555
  netstat -tln | grep ':3250 '
  host_step "F-list ready busid=$STICK" || fail "the host never signalled"
}
f_host_serve() { # our vhci imports from a plugboard serve on the host (10.0.2.2 is the host's 127.0.0.1)
  [ -n "$VT_hserve" ] || fail "no host server port given" || return 1
  usbip --tcp-port $VT_hserve attach -r 10.0.2.2 -b 100-1 || fail "usbip attach to the host failed" || return 1
  waitfor 'vhci_disk && [ -b /dev/$DISK ]' 300 || fail "no disk appeared on vhci" || return 1
  mount -t ext4 /dev/$DISK /mnt || fail "mount failed" || return 1
  s=$(sha /mnt/known.bin)
  [ "$s" = "$VT_sha" ] || { umount /mnt; fail "known.bin sha256 $s, expected $VT_sha"; return 1; }
  head -c 1048576 /dev/urandom > /mnt/from-guest.bin; s=$(sha /mnt/from-guest.bin)
  umount /mnt || fail "umount failed" || return 1
  usbip detach -p $(vhci_ports | head -1) || fail "usbip detach failed" || return 1
  waitfor '[ -z "$(vhci_ports)" ]' 100 || fail "port still in use" || return 1
  log "F-serve wrote from-guest.bin sha256 $s"
}

# ---- E: faults ----
start_dd() { # DEV: a long O_DIRECT read in the background
  dd if=/dev/$1 of=/dev/null iflag=direct bs=64k 2>/tmp/dd.err & DD=$!
}
dd_ended() { # the background dd has ended within 20 s (it may fail: the device went away)
  waitfor "[ ! -d /proc/$DD ]" 200 || { cat /proc/$DD/stack 2>/dev/null; fail "dd still running 20 s later"; return 1; }
  wait $DD; log "dd ended with status $?: $(tail -1 /tmp/dd.err)"
}
e_kill_server() { # the server dies during I/O: port freed, disk gone, port usable again at once
  start_devices plugboard msc:/tmp/bench.img || return 1
  waitfor 'vhci_disk && [ -b /dev/$DISK ]' 300 || fail "no disk appeared" || return 1
  start_dd $DISK; sleep 1
  [ -d /proc/$DD ] || fail "dd had finished before the kill" || return 1
  kill -9 $(cat /tmp/server.pid); rm -f /tmp/server.pid; exec 4>&-
  dd_ended || return 1
  waitfor '[ -z "$(vhci_ports)" ]' 100 || fail "vhci port not freed after the server died" || return 1
  waitfor '[ ! -b /dev/$DISK ]' 100 || fail "/dev/$DISK still there" || return 1
  log "server killed: port freed, /dev/$DISK gone; attaching again"
  start_devices plugboard msc:/tmp/bench.img || return 1
  waitfor 'vhci_disk && [ -b /dev/$DISK ]' 300 || fail "no disk on the second attach" || return 1
  dd if=/dev/$DISK of=/dev/null iflag=direct bs=1M count=4 2>/dev/null || fail "read after re-attach failed" || return 1
  stop_devices plugboard
}
e_detach_io() { # plugboard detach during I/O: dd ends, the server notices, the device is free again
  start_devices plugboard msc:/tmp/bench.img || return 1
  waitfor 'vhci_disk && [ -b /dev/$DISK ]' 300 || fail "no disk appeared" || return 1
  start_dd $DISK; sleep 1
  p=$(vhci_ports | head -1)
  plugboard detach -p $p || fail "plugboard detach -p $p failed" || return 1
  dd_ended || return 1
  waitfor '[ ! -b /dev/$DISK ]' 100 || fail "/dev/$DISK still there" || return 1
  waitfor "grep -q '^close 100-1' /tmp/server.log" 100 || { cat /tmp/server.log; fail "the server did not see the close"; return 1; }
  plugboard list -r 127.0.0.1 | grep -q '100-1:' || fail "device not exportable again" || return 1
  stop_devices plugboard
}
e_stall() { # the image's storage hangs past the SCSI timeout (device-mapper suspend), then comes back
  dd if=/dev/urandom of=/tmp/stall.img bs=1M count=16 2>/dev/null
  losetup /dev/loop7 /tmp/stall.img || fail "losetup failed" || return 1
  DM_DISABLE_UDEV=1 dmsetup create pbstall --table "0 32768 linear /dev/loop7 0" || fail "dmsetup create failed" || return 1
  dm=$(basename $(dirname $(dirname $(grep -l '^pbstall$' /sys/block/dm-*/dm/name))))
  start_devices usbip msc:/dev/$dm || return 1
  waitfor 'vhci_disk && [ -b /dev/$DISK ]' 300 || fail "no disk appeared" || return 1
  echo 3 > /sys/block/$DISK/device/timeout
  cat /sys/kernel/debug/usb/usbmon/0u > /tmp/usbmon.txt & mon=$!
  sync; echo 3 > /proc/sys/vm/drop_caches
  DM_DISABLE_UDEV=1 dmsetup suspend --noflush --nolockfs pbstall || fail "dmsetup suspend failed" || return 1
  log "image storage suspended; reading through vhci"
  dd if=/dev/$DISK of=/tmp/stall-read.bin iflag=direct bs=64k count=16 skip=100 2>/tmp/dd.err & DD=$!
  sleep 6 # past the 3 s SCSI timeout: the kernel unlinks, resets and retries
  timeout 5 plugboard list -r 127.0.0.1 > /tmp/list.txt; lrc=$?
  if [ $lrc != 0 ]; then # where the server waits, while the disk still stalls
    spid=$(cat /tmp/server.pid)
    for t in /proc/$spid/task/*; do echo "server thread ${t##*/} ($(cat $t/comm)) $(grep State $t/status):"; cat $t/stack; done
  fi
  DM_DISABLE_UDEV=1 dmsetup resume pbstall
  log "image storage resumed"
  [ $lrc = 0 ] && grep -q '100-1:' /tmp/list.txt || fail "the server did not answer a device list while its disk stalled" || return 1
  dd_ended || return 1
  kill $mon; wait $mon 2>/dev/null
  grep -E ' C B[io]:[0-9]+:[0-9]+:[0-9]+ -104 ' /tmp/usbmon.txt | head -3
  grep -qE ' C B[io]:[0-9]+:[0-9]+:[0-9]+ -104 ' /tmp/usbmon.txt ||
    fail "usbmon shows no bulk URB unlinked with -ECONNRESET" || return 1
  dd if=/tmp/stall.img of=/tmp/stall-want.bin bs=64k count=16 skip=100 2>/dev/null
  dd if=/dev/$DISK of=/tmp/stall-read2.bin iflag=direct bs=64k count=16 skip=100 2>/dev/null ||
    fail "the disk did not recover: read after resume failed" || return 1
  cmp -s /tmp/stall-want.bin /tmp/stall-read2.bin || fail "data read after the stall differs from the image" || return 1
  log "unlinks answered with -ECONNRESET; the disk reads the right data after the stall"
  stop_devices usbip
}
e_cleanup() {
  DM_DISABLE_UDEV=1 dmsetup resume pbstall 2>/dev/null
  DM_DISABLE_UDEV=1 dmsetup remove pbstall 2>/dev/null; losetup -d /dev/loop7 2>/dev/null; return 0; }

# ---- benchmark: dd with O_DIRECT through vhci ----
now() { adjtimex | awk '/tv_sec/ {s = $2} /tv_usec/ {u = $2} END {printf "%d.%06d", s, u}'; }
bench() { # CONFIG DEV: the median of three reads and of three writes of VT_mb MiB (writes from 48 MiB on)
  for dir in read write; do
    for r in 1 2 3; do
      if [ $dir = read ]; then a="if=/dev/$2 of=/dev/null iflag=direct"; else a="if=/dev/zero of=/dev/$2 seek=48 oflag=direct"; fi
      t0=$(now); dd $a bs=1M count=$VT_mb 2>/dev/null || { echo "BENCH $1 $dir failed"; return 1; }; t1=$(now)
      awk -v a=$t0 -v b=$t1 -v m=$VT_mb 'BEGIN {printf "%.1f\n", m / (b - a)}'
    done | sort -n | sed -n 2p | { read v; echo "BENCH $1 $dir $v"; }
  done
}
bench_virtual() { # METHOD CONFIG
  start_devices $1 msc:/tmp/bench.img || return 1
  waitfor 'vhci_disk && [ -b /dev/$DISK ]' 300 || fail "no disk appeared" || return 1
  bench $2 $DISK; stop_devices $1
}

# ---- running ----
cleanup() { # between scenarios: nothing of one may leak into the next (but what G-replug needs)
  [ -f /tmp/keep-server ] || stop_server
  exec 4>&- 5>&- 6>&-
  for p in $(vhci_ports); do usbip detach -p $p > /dev/null 2>&1; done
  umount /mnt 2>/dev/null; return 0
}
stuck_tasks() { # every task in uninterruptible sleep, with its kernel stack
  for t in /proc/[0-9]*; do
    grep -q '^State:.*D (disk sleep)' $t/status 2>/dev/null || continue
    echo "task ${t#/proc/} ($(cat $t/comm)) in D state:"; cat $t/stack
  done
}
run() { # NAME FUNCTION [ARGS]: the function's last output line is the failure reason
  name=$1; shift
  case ",$VT_only," in ,,|*",$name,"*) ;; *) return 0;; esac
  log "scenario $name"
  rm -f /tmp/rc /tmp/out
  cat /sys/kernel/debug/usb/usbmon/0u > /tmp/usbmon-run.txt 2>/dev/null & mon=$!
  # Output to a file, not a pipe: a process the scenario leaves behind (a dd stuck in the
  # kernel) would hold a pipe open. A scenario that hangs fails with a diagnosis, and the rest
  # still run.
  ( "$@" > /tmp/out 2>&1; echo $? > /tmp/rc ) &
  if ! waitfor '[ -f /tmp/rc ]' 900; then
    echo "timed out after 90 s" >> /tmp/out; echo "> 90 s" > /tmp/rc; stuck_tasks >> /tmp/console-extra
  fi
  cat /tmp/out; [ -f /tmp/console-extra ] && { cat /tmp/console-extra; rm -f /tmp/console-extra; }
  kill $mon 2>/dev/null; wait $mon 2>/dev/null
  if [ "$(cat /tmp/rc)" = 0 ]; then echo "RESULT $name PASS"
  else
    echo "usbmon, last 150 lines:"; tail -150 /tmp/usbmon-run.txt
    echo "RESULT $name FAIL $(tail -1 /tmp/out)"
  fi
  cleanup
}

echo; log "init start, kernel $(uname -r)"
echo 15 > /proc/sys/kernel/hung_task_timeout_secs # the harness fails on any hung task report
modprobe -a usbip-core usbip-host vhci-hcd xhci-pci usb-storage sd_mod usbhid hid-generic evdev cdc-acm \
  crc32c_generic ext4 loop dm-mod virtio_pci virtio_net ftdi_sio
modprobe usbmon && mount -t debugfs none /sys/kernel/debug
mkdir -p /run/udev && /lib/systemd/systemd-udevd --daemon 2>/dev/null || log "udevd did not start: no hot-plug"
waitfor '[ -e /sys/class/net/eth0 ]' 100 && ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 ||
  log "no eth0: the F scenarios will fail"
# slirp forwards the host's connections (hostfwd) only to a guest whose MAC it has learnt: speak
# first. (arping, not ping: a ping made QEMU 7.2's slirp close its hostfwd listeners.)
arping -c 1 -w 2 -I eth0 10.0.2.2 > /dev/null
head -c $((96 * 1048576)) /dev/zero > /tmp/bench.img

waitfor 'find_stick && stick_disk && [ -b /dev/$SDISK ]' 300 || log "QEMU's usb-storage stick did not appear"
case ",$VT_only," in ,,|*,bench,*) bench direct-usb-storage $SDISK;; esac

run A-msc check_msc usbip
run A-keyboard check_keyboard usbip
run A-serial check_serial usbip
run C-msc check_msc plugboard
run C-keyboard check_keyboard plugboard
run C-serial check_serial plugboard
run D-msc check_msc virtual
run D-keyboard check_keyboard virtual
run D-serial check_serial virtual
run B-usbip-host b_usbip_host
wants() { case ",$VT_only," in ,,|*",$1,"*) return 0;; esac; return 1; }
if [ -n "$STICK" ] && { wants bench || wants F-host-list; }; then
  # The kernel export's figures, then the host's look at our usbipd. B leaves the stick bound to
  # usbip-host and usbipd up; without B, do that here.
  if ! usbip --tcp-port 3250 list -r 127.0.0.1 > /dev/null 2>&1; then
    usbip bind -b $STICK; usbipd -D --tcp-port 3250; sleep 0.3
  fi
  case ",$VT_only," in ,,|*,bench,*)
    if plugboard attach -r 127.0.0.1 -p 3250 -b $STICK && waitfor 'vhci_disk && [ -b /dev/$DISK ]' 300; then
      bench usbip-host $DISK
    fi
    cleanup;; esac
  # The host prints the RESULT F-host-list line: it is the one that reads the list.
  case ",$VT_only," in ,,|*,F-host-list,*) f_host_list;; esac
  killall usbipd; usbip unbind -b $STICK
fi
run G-share-msc g_share_msc
run G-share-attach g_share_plugboard_attach
run G-share-keyboard g_share_keyboard
run G-share-serial g_share_serial
if [ -n "$STICK" ] && wants bench; then
  # (v): the same stick through plugboard's libusb export
  if start_share 3261 > /dev/null && usbip --tcp-port 3261 attach -r 127.0.0.1 -b $STICK &&
     waitfor 'vhci_disk && [ -b /dev/$DISK ]' 300; then
    bench plugboard-libusb $DISK
  fi
  cleanup
fi
run F-host-serve f_host_serve
case ",$VT_only," in ,,|*,bench,*)
  bench_virtual plugboard plugboard-tcp; cleanup
  bench_virtual virtual plugboard-socketpair; cleanup;; esac
run E-kill-server e_kill_server
run E-detach-io e_detach_io
run E-stall e_stall
e_cleanup
run G-unplug g_unplug # last but one: the stick is gone afterwards
run G-replug g_replug

log "kernel log follows"
echo "### dmesg begin"
dmesg
echo "### dmesg end"
log "done"
poweroff -f
