/* PbDevice: anything that answers URBs (real hardware through libusb, or a userspace device).
 *
 * A PbExportSession opens the device when a client imports it, submits URBs, cancels them on
 * unlink, and closes it when the connection ends (after every URB has completed).
 * All methods run on the main context of the thread that serves the device.
 */
#pragma once

#include <glib-object.h>

#include "pb-urb.h"
#include "pb-usbip.h"

G_BEGIN_DECLS

#define PB_TYPE_DEVICE (pb_device_get_type ())
G_DECLARE_DERIVABLE_TYPE (PbDevice, pb_device, PB, DEVICE, GObject)

struct _PbDeviceClass {
  GObjectClass parent_class;

  /* Fill ids, classes, speed, configuration and interfaces. busid/busnum/devnum/path are
   * filled by PbDevice itself from its properties. */
  void (*describe) (PbDevice *self, PbUsbipDeviceRecord *record);
  /* Type of endpoint ep (0..15) in the direction, in the current configuration. */
  PbEndpointType (*get_endpoint_type) (PbDevice *self, guint ep, PbUsbipDirection direction);
  /* A client imported the device. */
  gboolean (*open) (PbDevice *self, GError **error);
  /* The client is gone and every submitted URB has completed. */
  void (*close) (PbDevice *self);
  /* Start a transfer; complete it with pb_urb_complete() now or later. */
  void (*submit) (PbDevice *self, PbUrb *urb);
  /* The host unlinked urb (urb->cancelled is already TRUE): finish it soon. It is still
   * completed through pb_urb_complete(), with whatever status it ends with. */
  void (*cancel) (PbDevice *self, PbUrb *urb);

  gpointer padding[8];
};

/* Bus address: set once, before the device is exported. */
void pb_device_set_address (PbDevice *self, guint32 busnum, guint32 devnum, const char *busid);
const char *pb_device_get_busid (PbDevice *self);
guint32 pb_device_get_busnum (PbDevice *self);
guint32 pb_device_get_devnum (PbDevice *self);
/* devid as USB/IP writes it: busnum << 16 | devnum. */
guint32 pb_device_get_devid (PbDevice *self);
/* A short human name ("Plugboard virtual disk"), for logs and lists. */
const char *pb_device_get_description (PbDevice *self);
void pb_device_set_description (PbDevice *self, const char *description);

void pb_device_describe (PbDevice *self, PbUsbipDeviceRecord *record);
PbEndpointType pb_device_get_endpoint_type (PbDevice *self, guint ep, PbUsbipDirection direction);
gboolean pb_device_open (PbDevice *self, GError **error);
void pb_device_close (PbDevice *self);
void pb_device_submit (PbDevice *self, PbUrb *urb);
void pb_device_cancel (PbDevice *self, PbUrb *urb);

/* TRUE while a session has the device imported. */
gboolean pb_device_is_busy (PbDevice *self);

/* For implementations: the hardware is gone. Emits "vanished" once, from the main context and
 * never from inside submit/cancel; the session importing the device closes its connection (the
 * client's vhci port is freed), the server drops the device from its list, and opening it fails
 * from then on. */
void pb_device_vanished (PbDevice *self);
gboolean pb_device_is_vanished (PbDevice *self);

G_END_DECLS
