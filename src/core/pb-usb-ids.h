/* PbUsbIds: names of USB vendors, products and classes from the usb.ids database (the file
 * lsusb and Linux's usbip tools read). Private to libplugboard's users in this tree; not an
 * installed header.
 *
 * A plain struct, not a GObject: it is loaded once (one pass over the mapped file into hash
 * tables), never changes afterwards, so any thread may look names up, and it is freed with
 * pb_usb_ids_free() or g_autoptr(PbUsbIds).
 *
 * Every lookup accepts a NULL PbUsbIds, meaning "no database installed", and then returns NULL,
 * just as for an unknown code: callers fall back to their own text (a device's string
 * descriptors, "unknown product").
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

typedef struct _PbUsbIds PbUsbIds;

/* Parses the usb.ids file at path. PB_ERROR_NOT_FOUND when it does not exist, PB_ERROR_FAILED
 * when it cannot be read, PB_ERROR_INVALID_ARGUMENT when it holds no entry at all. */
PbUsbIds *pb_usb_ids_load (const char *path, GError **error);
/* The first readable file of PB_USB_IDS_PATHS (set at configure time), or NULL when none is. */
PbUsbIds *pb_usb_ids_load_default (void);
void pb_usb_ids_free (PbUsbIds *ids);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (PbUsbIds, pb_usb_ids_free)

/* Names as the file spells them, valid as long as ids; NULL when unknown. */
const char *pb_usb_ids_vendor (const PbUsbIds *ids, guint16 vendor_id);
const char *pb_usb_ids_product (const PbUsbIds *ids, guint16 vendor_id, guint16 product_id);
const char *pb_usb_ids_class (const PbUsbIds *ids, guint8 class_code);
const char *pb_usb_ids_subclass (const PbUsbIds *ids, guint8 class_code, guint8 subclass);
const char *pb_usb_ids_protocol (const PbUsbIds *ids, guint8 class_code, guint8 subclass, guint8 protocol);

G_END_DECLS
