/* PbVirtualDevice: a USB device implemented in userspace, FUSE-style.
 *
 * A program gives the descriptors and a table of callbacks. The framework answers the standard
 * requests itself: GET_DESCRIPTOR (device, configuration, string, and any extra descriptor added
 * with pb_virtual_device_add_descriptor()), GET/SET_CONFIGURATION, GET/SET_INTERFACE, GET_STATUS,
 * CLEAR/SET_FEATURE (endpoint halt, remote wakeup). Everything else reaches the program:
 *
 *   - control: class and vendor requests, and standard requests the framework cannot answer;
 *   - transfer: every bulk, interrupt and isochronous request on endpoints 1..15;
 *   - cancel: the host unlinked a request the program still holds.
 *
 * The program completes each request exactly once with pb_urb_complete(), at once or later
 * (an interrupt IN may wait until there is a key press). Completions on one endpoint reach the
 * host in the order the requests arrived, even if the program completes them out of order.
 * A request completed with PB_URB_EPIPE halts its endpoint: further requests on it stall until
 * the host clears the halt (the program hears of it through clear_halt).
 *
 * All callbacks run on the main context the device is served from; call pb_urb_complete() from
 * that thread (use g_main_context_invoke() to get there from another one).
 *
 * Example: a device that echoes bulk OUT data back on bulk IN.
 *
 *   static void
 *   echo_transfer (PbVirtualDevice *dev, PbUrb *urb, gpointer user_data)
 *   {
 *     Echo *echo = user_data;
 *     if (urb->direction == PB_USBIP_DIR_OUT) {
 *       echo_store (echo, urb->buffer, urb->length);
 *       pb_urb_complete (urb, PB_URB_OK, urb->length);
 *     } else {
 *       g_queue_push_tail_link (&echo->waiting_in, &urb->device_link);  // answered later
 *       echo_flush (echo);                                             // calls pb_urb_complete()
 *     }
 *   }
 *
 *   static const PbVirtualDeviceOps echo_ops = { .transfer = echo_transfer, .cancel = echo_cancel };
 *
 *   PbVirtualDevice *dev = pb_virtual_device_new (&echo_ops, echo, NULL);
 *   if (!pb_virtual_device_set_descriptors (dev, PB_USBIP_SPEED_HIGH, device_desc, sizeof device_desc,
 *                                           config_desc, sizeof config_desc, &error))
 *     ...
 *   pb_virtual_device_set_string (dev, 1, "Example Corp");
 *   pb_server_add_device (server, PB_DEVICE (dev));
 */
#pragma once

#include "pb-device.h"

G_BEGIN_DECLS

#define PB_TYPE_VIRTUAL_DEVICE (pb_virtual_device_get_type ())
G_DECLARE_FINAL_TYPE (PbVirtualDevice, pb_virtual_device, PB, VIRTUAL_DEVICE, PbDevice)

/* Standard request codes and descriptor types (USB 2.0 chapter 9), for programs and tests. */
enum {
  PB_USB_REQ_GET_STATUS = 0x00,
  PB_USB_REQ_CLEAR_FEATURE = 0x01,
  PB_USB_REQ_SET_FEATURE = 0x03,
  PB_USB_REQ_SET_ADDRESS = 0x05,
  PB_USB_REQ_GET_DESCRIPTOR = 0x06,
  PB_USB_REQ_SET_DESCRIPTOR = 0x07,
  PB_USB_REQ_GET_CONFIGURATION = 0x08,
  PB_USB_REQ_SET_CONFIGURATION = 0x09,
  PB_USB_REQ_GET_INTERFACE = 0x0a,
  PB_USB_REQ_SET_INTERFACE = 0x0b,
};
enum {
  PB_USB_DT_DEVICE = 0x01,
  PB_USB_DT_CONFIG = 0x02,
  PB_USB_DT_STRING = 0x03,
  PB_USB_DT_INTERFACE = 0x04,
  PB_USB_DT_ENDPOINT = 0x05,
  PB_USB_DT_DEVICE_QUALIFIER = 0x06,
  PB_USB_DT_INTERFACE_ASSOCIATION = 0x0b,
  PB_USB_DT_BOS = 0x0f,
  PB_USB_DT_HID = 0x21,
  PB_USB_DT_HID_REPORT = 0x22,
  PB_USB_DT_CS_INTERFACE = 0x24,
};
#define PB_USB_TYPE_MASK 0x60
#define PB_USB_TYPE_STANDARD 0x00
#define PB_USB_TYPE_CLASS 0x20
#define PB_USB_TYPE_VENDOR 0x40
#define PB_USB_RECIP_MASK 0x1f
#define PB_USB_RECIP_DEVICE 0x00
#define PB_USB_RECIP_INTERFACE 0x01
#define PB_USB_RECIP_ENDPOINT 0x02
#define PB_USB_RECIP_OTHER 0x03
#define PB_USB_DIR_IN 0x80
#define PB_USB_FEATURE_ENDPOINT_HALT 0
#define PB_USB_FEATURE_REMOTE_WAKEUP 1

typedef struct {
  /* A control request the framework does not answer (class, vendor, unknown standard).
   * Return TRUE when the program takes it (and completes it, now or later); FALSE stalls it. */
  gboolean (*control) (PbVirtualDevice *device, PbUrb *urb, gpointer user_data);
  /* A bulk, interrupt or isochronous request on endpoint 1..15. Complete it. NULL: stall all. */
  void (*transfer) (PbVirtualDevice *device, PbUrb *urb, gpointer user_data);
  /* The host unlinked urb, which the program still holds: complete it soon (usually with
   * PB_URB_ECONNRESET). NULL: the framework waits for the normal completion. */
  void (*cancel) (PbVirtualDevice *device, PbUrb *urb, gpointer user_data);
  /* The host selected configuration value (0: unconfigured). */
  void (*set_configuration) (PbVirtualDevice *device, guint8 value, gpointer user_data);
  /* The host selected alternate setting alt of interface. */
  void (*set_interface) (PbVirtualDevice *device, guint8 interface, guint8 alt, gpointer user_data);
  /* The host cleared the halt of endpoint_address (direction bit included). */
  void (*clear_halt) (PbVirtualDevice *device, guint8 endpoint_address, gpointer user_data);
  /* A client imported the device / the connection ended (every request has completed by then).
   * Use them to reset per-connection state. */
  void (*opened) (PbVirtualDevice *device, gpointer user_data);
  void (*closed) (PbVirtualDevice *device, gpointer user_data);
  /* The host reset the port (SET_FEATURE(PORT_RESET)): forget transient state. The configuration
   * and alternate settings are kept, as usbip-host restores them after a reset. */
  void (*reset) (PbVirtualDevice *device, gpointer user_data);

  gpointer padding[7];
} PbVirtualDeviceOps;

/* ops must outlive the device (a static table). user_data_free runs when the device is finalized. */
PbVirtualDevice *pb_virtual_device_new (const PbVirtualDeviceOps *ops, gpointer user_data, GDestroyNotify user_data_free);

/* The device descriptor (18 bytes) and one configuration descriptor with everything it contains
 * (wTotalLength bytes). Validates both and learns the endpoints from them. speed must match the
 * endpoints' packet sizes (full speed for 64-byte bulk, high speed for 512). */
gboolean pb_virtual_device_set_descriptors (PbVirtualDevice *self, PbUsbipSpeed speed,
                                            const guint8 *device_descriptor, gsize device_descriptor_len,
                                            const guint8 *configuration, gsize configuration_len,
                                            GError **error);
/* String descriptor index (1..255) in UTF-8; index 0 (languages) is answered as US English. */
void pb_virtual_device_set_string (PbVirtualDevice *self, guint8 index, const char *utf8);
/* Any other descriptor GET_DESCRIPTOR may ask for, e.g. a HID report descriptor: type, index
 * (low byte of wValue) and wIndex (interface number for class descriptors). */
void pb_virtual_device_add_descriptor (PbVirtualDevice *self, guint8 type, guint8 index, guint16 w_index,
                                       const guint8 *data, gsize len);

/* Current configuration value (0 while unconfigured) and alternate setting of an interface. */
guint8 pb_virtual_device_get_configuration (PbVirtualDevice *self);
guint8 pb_virtual_device_get_alternate_setting (PbVirtualDevice *self, guint8 interface);

/* Halt or un-halt an endpoint from the program's side (BOT phase errors stall bulk endpoints). */
void pb_virtual_device_set_halt (PbVirtualDevice *self, guint8 endpoint_address, gboolean halted);
gboolean pb_virtual_device_get_halt (PbVirtualDevice *self, guint8 endpoint_address);

/* TRUE while a client has the device imported. */
gboolean pb_virtual_device_is_open (PbVirtualDevice *self);

/* The program is going away (call it from its dispose): the device never calls it again. Later
 * data transfers end with PB_URB_ESHUTDOWN, control requests for the program stall, and the
 * standard requests are still answered. The program must have completed the requests it holds
 * first. user_data_free runs now. Whoever else holds the device (a server, a session) stays
 * safe; a new import is refused. */
void pb_virtual_device_detach (PbVirtualDevice *self);

G_END_DECLS
