/* PbUsbDevice: a real USB device of this machine, exported through libusb (no usbip-host).
 *
 * While imported, the device's kernel drivers are detached interface by interface and given back
 * when the client goes. URBs become libusb asynchronous transfers, many in flight per endpoint,
 * straight from and into the URB's buffer; SET_CONFIGURATION, SET_INTERFACE,
 * CLEAR_FEATURE(ENDPOINT_HALT) and port reset are carried out here, as usbip-host does. An unlink
 * cancels the transfer; the URB completes when libusb gives it back.
 */
#pragma once

#include "pb-device.h"
#include "pb-monitor.h"

G_BEGIN_DECLS

#define PB_TYPE_USB_DEVICE (pb_usb_device_get_type ())
G_DECLARE_FINAL_TYPE (PbUsbDevice, pb_usb_device, PB, USB_DEVICE, PbDevice)

/* Wraps device (a new reference is taken); the bus address is its Linux bus ID and number. */
PbUsbDevice *pb_usb_device_new (PbMonitor *monitor, libusb_device *device, GError **error);

/* Where the kernel lists it, `/sys/bus/usb/devices/BUSID` resolved (usbip-host's path). */
const char *pb_usb_device_get_sysfs_path (PbUsbDevice *self);

G_END_DECLS
