/* PbMassStorage: a USB mass storage device (Bulk-Only Transport, SCSI transparent command set)
 * backed by an image file descriptor. Built on the public PbVirtualDevice API only. */
#pragma once

#include "pb-virtual-device.h"

G_BEGIN_DECLS

#define PB_TYPE_MASS_STORAGE (pb_mass_storage_get_type ())
G_DECLARE_FINAL_TYPE (PbMassStorage, pb_mass_storage, PB, MASS_STORAGE, GObject)

/* fd: an open image (regular file or block device), size a multiple of 512. The device dups it;
 * the caller keeps its own fd. read_only: writes fail with DATA PROTECT (also forced when fd is
 * not open for writing). Dispose completes the URBs it holds and detaches the device, so a
 * session still holding the PbVirtualDevice stays safe.
 *
 * Media I/O that may block runs on a worker thread; its results come back on the thread-default
 * main context of the caller of pb_mass_storage_new(), which must serve the device and keep
 * being iterated. */
PbMassStorage *pb_mass_storage_new (int fd, gboolean read_only, GError **error);
PbVirtualDevice *pb_mass_storage_get_device (PbMassStorage *self);
guint64 pb_mass_storage_get_block_count (PbMassStorage *self);
gboolean pb_mass_storage_is_read_only (PbMassStorage *self);
/* The USB serial number string (also SCSI VPD page 0x80): 16 hex digits, stable for the same
 * image file and creation order. */
const char *pb_mass_storage_get_serial (PbMassStorage *self);

G_END_DECLS
