/* PbUrb: one USB request block in flight between a PbExportSession and a PbDevice.
 *
 * The session creates it from a CMD_SUBMIT, hands it to pb_device_submit(), and owns its memory.
 * The device fills buffer (IN), sets the outcome and calls pb_urb_complete() exactly once, now or
 * later, on the thread that runs the session's main context. After pb_urb_complete() the device
 * must not touch the URB again.
 */
#pragma once

#include <glib.h>

#include "pb-usbip.h"

G_BEGIN_DECLS

typedef enum {
  PB_ENDPOINT_CONTROL = 0,
  PB_ENDPOINT_ISOCHRONOUS = 1,
  PB_ENDPOINT_BULK = 2,
  PB_ENDPOINT_INTERRUPT = 3,
  PB_ENDPOINT_UNKNOWN = -1,
} PbEndpointType;

/* Linux errno values as USB/IP carries them in status (negated). Spelled out so that code
 * reads like the kernel's and does not depend on the host's errno numbering. */
#define PB_URB_OK 0
#define PB_URB_EPIPE (-32)      /* stall */
#define PB_URB_ECONNRESET (-104) /* unlinked */
#define PB_URB_ESHUTDOWN (-108) /* device/endpoint shut down */
#define PB_URB_ENODEV (-19)     /* device gone */
#define PB_URB_EOVERFLOW (-75)  /* babble */
#define PB_URB_ETIMEDOUT (-110)
#define PB_URB_EPROTO (-71)
#define PB_URB_EILSEQ (-84)
#define PB_URB_EREMOTEIO (-121) /* short packet with SHORT_NOT_OK */
#define PB_URB_EINVAL (-22)
#define PB_URB_ENOENT (-2)
#define PB_URB_EXDEV (-18)      /* iso: partially completed */

typedef struct _PbUrb PbUrb;
typedef void (*PbUrbCompleteFunc) (PbUrb *urb, gpointer user_data);

struct _PbUrb {
  /* The request, as the host sent it. */
  guint32 seqnum;
  guint ep;                   /* endpoint number, 0..15 */
  PbUsbipDirection direction;
  PbEndpointType type;        /* from the device's descriptors */
  guint32 transfer_flags;     /* PB_USBIP_URB_*, masked to PB_USBIP_URB_FLAGS_MEANINGFUL */
  guint8 setup[8];            /* control transfers only */
  gint32 start_frame;
  gint32 interval;
  guint32 length;             /* transfer_buffer_length */
  guint8 *buffer;             /* length bytes: OUT data, or room for IN data (contents unspecified:
                               * a device sends only the actual_length bytes it wrote) */
  guint n_iso_packets;
  PbUsbipIsoPacket *iso_packets; /* n_iso_packets; the device sets actual_length and status */

  /* The outcome, set by pb_urb_complete(). actual_length <= length always. For iso IN, data of
   * packet i sits at buffer + iso_packets[i].offset; the session packs it for the wire. */
  gint32 status;
  guint32 actual_length;
  gint32 error_count;

  /* TRUE once the host unlinked this URB; the device should finish it soon (any status). */
  gboolean cancelled;

  /* Free for the device's own use while it holds the URB. */
  gpointer device_data;
  GList device_link;          /* lets a device queue the URB without allocating */

  /*< private >*/
  PbUrbCompleteFunc complete_func; /* the owner's (session's) completion */
  gpointer complete_data;
  PbUrbCompleteFunc intercept_func; /* a device layer that post-processes completions */
  gpointer intercept_data;
  guint32 unlink_seqnum;      /* seqnum of the CMD_UNLINK, when cancelled */
  gpointer owner_private;
  GList owner_link;           /* the owner's list of URBs in flight */
  GList order_link;           /* PbVirtualDevice's per-endpoint order */
  gboolean order_done;        /* completed by the program, waiting for its turn */
};

/* Records the outcome and passes the URB on. Clamps actual_length to length (a device bug must
 * never reach the wire as an over-long reply). Call exactly once. */
void pb_urb_complete (PbUrb *urb, gint32 status, guint32 actual_length);

/* For a device layer that installed intercept_func: pass the completed URB on to its owner. */
void pb_urb_give_back (PbUrb *urb);

/* Control transfer helpers. */
static inline guint8 pb_urb_setup_request_type (const PbUrb *urb) { return urb->setup[0]; }
static inline guint8 pb_urb_setup_request (const PbUrb *urb) { return urb->setup[1]; }
static inline guint16 pb_urb_setup_value (const PbUrb *urb) { return (guint16) (urb->setup[2] | (urb->setup[3] << 8)); }
static inline guint16 pb_urb_setup_index (const PbUrb *urb) { return (guint16) (urb->setup[4] | (urb->setup[5] << 8)); }
static inline guint16 pb_urb_setup_length (const PbUrb *urb) { return (guint16) (urb->setup[6] | (urb->setup[7] << 8)); }

/* Copies up to urb->length bytes of data into buffer and completes with status 0. */
void pb_urb_complete_with_data (PbUrb *urb, const void *data, gsize len);

G_END_DECLS
