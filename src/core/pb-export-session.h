/* PbExportSession: one imported device served on one stream socket (TCP, or one end of a
 * socketpair attached to vhci-hcd). Reads CMD_SUBMIT/CMD_UNLINK, hands URBs to the PbDevice,
 * writes RET_SUBMIT/RET_UNLINK.
 *
 * Requests on different endpoints run concurrently (the device gets each as soon as it is read);
 * the device keeps order per endpoint. A malformed message or a broken connection ends this
 * session only: reading stops, every URB still at the device is cancelled, and once all have
 * completed the device is closed (free for the next import) and "closed" is emitted.
 *
 * Limits (README, "Limits"): one URB carries at most PB_USBIP_MAX_TRANSFER_LENGTH bytes and
 * PB_USBIP_MAX_ISO_PACKETS iso packets, or the session ends with a protocol error. Above
 * PB_EXPORT_SESSION_MAX_IN_FLIGHT URBs or PB_EXPORT_SESSION_MAX_IN_FLIGHT_BYTES bytes at the
 * device, or PB_EXPORT_SESSION_MAX_QUEUED_OUTPUT bytes or PB_EXPORT_SESSION_MAX_QUEUED_REPLIES
 * replies the peer has not read, the
 * session stops reading the socket until the figure drops: memory stays bounded and nothing is
 * dropped.
 */
#pragma once

#include <gio/gio.h>

#include "pb-device.h"

G_BEGIN_DECLS

#define PB_EXPORT_SESSION_MAX_IN_FLIGHT 1024
#define PB_EXPORT_SESSION_MAX_IN_FLIGHT_BYTES (64u * 1024u * 1024u)
#define PB_EXPORT_SESSION_MAX_QUEUED_OUTPUT (16u * 1024u * 1024u)
#define PB_EXPORT_SESSION_MAX_QUEUED_REPLIES 1024

#define PB_TYPE_EXPORT_SESSION (pb_export_session_get_type ())
G_DECLARE_FINAL_TYPE (PbExportSession, pb_export_session, PB, EXPORT_SESSION, GObject)

/* Takes a reference on socket and device. The device must not be open yet. */
PbExportSession *pb_export_session_new (GSocket *socket, PbDevice *device, const char *peer_name);
/* Opens the device and starts serving on the thread-default main context. */
gboolean pb_export_session_start (PbExportSession *self, GError **error);
/* Ends the session (idempotent); "closed" follows once every URB has completed. */
void pb_export_session_close (PbExportSession *self, const GError *reason);

PbDevice *pb_export_session_get_device (PbExportSession *self);
const char *pb_export_session_get_peer_name (PbExportSession *self);
gboolean pb_export_session_is_closed (PbExportSession *self);

typedef struct {
  guint64 urbs_submitted;
  guint64 urbs_unlinked;
  guint64 bytes_to_device;   /* OUT payload */
  guint64 bytes_from_device; /* IN payload */
  guint in_flight;
} PbExportSessionStats;
void pb_export_session_get_stats (PbExportSession *self, PbExportSessionStats *stats);

G_END_DECLS
