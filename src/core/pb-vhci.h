/* PbVhci: the sysfs interface of the kernel's vhci-hcd (the USB/IP client side). Finds the
 * controller (platform bus today, faux bus on newer kernels), reads its ports, attaches a
 * connected stream socket to a free port of the right speed, detaches. */
#pragma once

#include <glib-object.h>

#include "pb-usbip.h"

G_BEGIN_DECLS

/* Port states as the kernel prints them (enum usbip_device_status). */
typedef enum {
  PB_VHCI_PORT_FREE = 4,         /* VDEV_ST_NULL */
  PB_VHCI_PORT_NOT_ASSIGNED = 5, /* VDEV_ST_NOTASSIGNED */
  PB_VHCI_PORT_USED = 6,         /* VDEV_ST_USED */
  PB_VHCI_PORT_ERROR = 7,        /* VDEV_ST_ERROR */
} PbVhciPortState;

typedef struct {
  gboolean super_speed_hub;  /* "ss" rows: SuperSpeed ports; "hs": USB 2 ports */
  guint port;
  PbVhciPortState state;
  guint speed;               /* PbUsbipSpeed of the attached device, 0 when free */
  guint32 devid;
  guint sockfd;
  char local_busid[PB_USBIP_BUSID_SIZE + 1];
} PbVhciPort;

/* Parses the text of one status file (header line, then one row per port) and appends the rows
 * to ports (PbVhciPort). Pure: fuzzable and testable without a kernel. */
gboolean pb_vhci_parse_status (const char *text, GArray *ports, GError **error);

#define PB_TYPE_VHCI (pb_vhci_get_type ())
G_DECLARE_FINAL_TYPE (PbVhci, pb_vhci, PB, VHCI, GObject)

/* sysfs_root: NULL for "/sys" (tests pass a tree of their own). PB_ERROR_NOT_FOUND when no
 * vhci-hcd is loaded. */
PbVhci *pb_vhci_new (const char *sysfs_root, GError **error);
const char *pb_vhci_get_path (PbVhci *self);
guint pb_vhci_get_n_ports (PbVhci *self);
/* Every port of every controller, from status, status.1, ... (PbVhciPort). */
GArray *pb_vhci_read_ports (PbVhci *self, GError **error);
/* Attaches sockfd (a connected stream socket carrying the imported device) to a free port on
 * the hub that fits speed, trying the next one when the kernel answers EBUSY. Returns the port.
 * The kernel takes its own reference: the caller closes sockfd afterwards. */
gboolean pb_vhci_attach (PbVhci *self, int sockfd, guint32 devid, PbUsbipSpeed speed, guint *port_out,
                         GError **error);
gboolean pb_vhci_detach (PbVhci *self, guint port, GError **error);

G_END_DECLS
