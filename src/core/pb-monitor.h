/* PbMonitor: this machine's USB devices, through libusb.
 *
 * Owns the libusb context and the one thread that runs libusb's event handling. That thread
 * touches no GObject: a finished transfer is queued, and the main context that created the
 * monitor runs its completion (pb_monitor_submit_transfer), and hot-plug becomes the signals
 * "device-added" and "device-removed" (bus ID) there. Devices are named by bus ID as Linux
 * writes it (`BUS-PORT.PORT…`, e.g. `1-2.3`). Hot-plug needs libusb's event source: with
 * Debian's libusb that is udevd.
 */
#pragma once

#include <glib-object.h>
#include <libusb.h>

G_BEGIN_DECLS

#define PB_TYPE_MONITOR (pb_monitor_get_type ())
G_DECLARE_FINAL_TYPE (PbMonitor, pb_monitor, PB, MONITOR, GObject)

/* Starts libusb and its event thread. Fails when libusb cannot start (no usbfs, say). */
PbMonitor *pb_monitor_new (GError **error);

libusb_context *pb_monitor_get_libusb (PbMonitor *self);

/* Every USB device but root hubs, each with a reference the array drops. */
GPtrArray *pb_monitor_list_devices (PbMonitor *self, GError **error);

/* A device by bus ID (`1-2.3`) or by VID:PID (`46f4:0001`, the first match that was not itself
 * imported through vhci-hcd); a new reference. PB_ERROR_NOT_FOUND when there is none. */
libusb_device *pb_monitor_find_device (PbMonitor *self, const char *busid_or_ids, GError **error);

/* The bus ID of device as Linux names it. */
char *pb_monitor_device_busid (libusb_device *device);

/* Where the kernel lists device: `/sys/bus/usb/devices/BUSID` resolved (the path usbip-host
 * reports), or that name when it cannot be resolved. */
char *pb_monitor_device_sysfs_path (libusb_device *device);

/* TRUE for a device that this machine imported through vhci-hcd (a USB/IP client's device). */
gboolean pb_monitor_device_is_imported (libusb_device *device);

/* Submits transfer; when it ends, done (transfer, user_data) runs on the monitor's main context.
 * transfer->callback and user_data are the monitor's: use done/user_data instead. */
typedef void (*PbMonitorTransferDone) (struct libusb_transfer *transfer, gpointer user_data);
int pb_monitor_submit_transfer (PbMonitor *self, struct libusb_transfer *transfer, PbMonitorTransferDone done,
                                gpointer user_data);

G_END_DECLS
