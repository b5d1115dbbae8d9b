/* libplugboard: USB/IP devices implemented in userspace, served to Linux's vhci-hcd, Windows
 * usbip clients or Plugboard's own client. Include this one header:
 *
 *   #include <plugboard.h>      (pkg-config --cflags --libs plugboard-1)
 *
 * Start with pb-virtual-device.h: it has an example. */
#pragma once

#include "pb-error.h"
#include "pb-usbip.h"
#include "pb-urb.h"
#include "pb-device.h"
#include "pb-virtual-device.h"
#include "pb-export-session.h"
#include "pb-server.h"
#include "pb-remote-device.h"
#include "pb-remote.h"
#include "pb-mass-storage.h"
#include "pb-keyboard.h"
#include "pb-serial.h"
#include "pb-vhci.h"
#include "pb-monitor.h"
#include "pb-usb-device.h"
