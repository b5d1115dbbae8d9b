/* PbRemoteDevice: an imported device driven from userspace, without any kernel driver: submits
 * URBs and unlinks them over the USB/IP connection. Used by `plugboard probe`, the tests and
 * the benchmarks. Runs on the thread-default main context of the thread that created it.
 *
 * Every submitted URB gets exactly one callback: with the server's RET_SUBMIT, with the
 * RET_UNLINK status when an unlink caught it, or with PB_URB_ESHUTDOWN when the connection ends
 * (peer closed, write error, or a malformed/malicious reply, which closes the connection).
 */
#pragma once

#include <gio/gio.h>

#include "pb-urb.h"
#include "pb-usbip.h"

G_BEGIN_DECLS

#define PB_TYPE_REMOTE_DEVICE (pb_remote_device_get_type ())
G_DECLARE_FINAL_TYPE (PbRemoteDevice, pb_remote_device, PB, REMOTE_DEVICE, GObject)

typedef struct {
  guint ep;                    /* 0..15 */
  PbUsbipDirection direction;
  guint32 transfer_flags;      /* PB_USBIP_URB_*; DIR_IN is added for IN */
  guint8 setup[8];             /* ep 0 only */
  guint8 *buffer;              /* OUT data / room for IN data; must stay valid until the callback */
  guint32 length;
  gint32 interval;
  gint32 start_frame;
  guint n_iso_packets;         /* > 0: isochronous; iso_packets give offset and length */
  PbUsbipIsoPacket *iso_packets; /* updated in place with the results; valid until the callback */
} PbRemoteUrbRequest;

typedef struct {
  guint32 seqnum;
  gint32 status;               /* 0 or a negative Linux errno (PB_URB_*) */
  guint32 actual_length;       /* IN data is in the request's buffer (iso: at each packet's offset) */
  gint32 error_count;
  gint32 start_frame;
} PbRemoteUrbResult;

typedef void (*PbRemoteUrbCallback) (PbRemoteDevice *device, const PbRemoteUrbResult *result, gpointer user_data);

/* Takes over an imported connection (after pb_remote_import_on()). */
PbRemoteDevice *pb_remote_device_new (GSocketConnection *connection, const PbUsbipDeviceRecord *record);
/* Same over a bare stream socket (one end of a socketpair). */
PbRemoteDevice *pb_remote_device_new_for_socket (GSocket *socket, const PbUsbipDeviceRecord *record);

const PbUsbipDeviceRecord *pb_remote_device_get_record (PbRemoteDevice *self);

/* Queues a CMD_SUBMIT (header and OUT payload in one write when the socket allows). Returns the
 * seqnum, or 0 with error when the connection is closed or the request is invalid. */
guint32 pb_remote_device_submit (PbRemoteDevice *self, const PbRemoteUrbRequest *request,
                                 PbRemoteUrbCallback callback, gpointer user_data, GError **error);
/* Sends CMD_UNLINK for seqnum. The URB's callback still comes exactly once. */
gboolean pb_remote_device_unlink (PbRemoteDevice *self, guint32 seqnum, GError **error);

/* Blocking helpers (iterate the device's main context). A non-zero URB status becomes an
 * error (PB_ERROR_DEVICE naming the errno, "stall (-EPIPE)"); *status_out gets it raw.
 * timeout_ms 0: wait forever; on timeout the URB is unlinked, its callback awaited and
 * PB_ERROR_TIMED_OUT returned (a server that ignores the unlink too loses the connection). */
gboolean pb_remote_device_control (PbRemoteDevice *self, guint8 request_type, guint8 request, guint16 value,
                                   guint16 index, guint8 *data, guint16 length, guint32 *actual_length,
                                   guint timeout_ms, gint32 *status_out, GError **error);
gboolean pb_remote_device_transfer (PbRemoteDevice *self, guint ep, PbUsbipDirection direction, guint8 *data,
                                    guint32 length, guint32 *actual_length, guint timeout_ms,
                                    gint32 *status_out, GError **error);

/* URBs submitted and not yet called back. */
guint pb_remote_device_get_pending (PbRemoteDevice *self);
/* Closes the connection; every pending URB is called back with PB_URB_ESHUTDOWN. Idempotent. */
void pb_remote_device_close (PbRemoteDevice *self);
gboolean pb_remote_device_is_closed (PbRemoteDevice *self);
/* Why the connection ended when the server or the transport ended it: PB_ERROR_PROTOCOL for a
 * malformed or malicious reply, PB_ERROR_CLOSED when the server went away, PB_ERROR_TIMED_OUT
 * when it never answered an unlink. NULL while open or when pb_remote_device_close() ended it. */
const GError *pb_remote_device_get_close_error (PbRemoteDevice *self);

G_END_DECLS
