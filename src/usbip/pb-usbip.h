/* USB/IP wire format (protocol 0x0111, as the Linux kernel speaks it).
 *
 * Pure functions over buffers: no I/O, no allocation except where a function says so.
 * Every multi-byte field is big-endian on the wire and host-order in the structs below.
 * Decoders validate every length and count the peer controls before anything uses it, and
 * fail with PB_ERROR_PROTOCOL (malformed), PB_ERROR_TOO_LARGE (over our caps) or
 * PB_ERROR_VERSION_MISMATCH (another protocol version).
 */
#pragma once

#include <glib.h>

#include "pb-error.h"

G_BEGIN_DECLS

#define PB_USBIP_VERSION 0x0111
#define PB_USBIP_DEFAULT_PORT 3240

#define PB_USBIP_OP_HEADER_SIZE 8
#define PB_USBIP_BUSID_SIZE 32
#define PB_USBIP_PATH_SIZE 256
#define PB_USBIP_DEVICE_RECORD_SIZE 312
#define PB_USBIP_INTERFACE_RECORD_SIZE 4
#define PB_USBIP_REQ_IMPORT_SIZE (PB_USBIP_OP_HEADER_SIZE + PB_USBIP_BUSID_SIZE) /* 40 */
#define PB_USBIP_URB_HEADER_SIZE 48
#define PB_USBIP_ISO_PACKET_SIZE 16

/* Caps on what a peer may make us allocate or loop over. Documented in README ("Limits").
 * 16 MiB per URB admits every transfer Linux's usb-storage/uas (max_sectors 2048 = 1 MiB,
 * uas up to 8 MiB with SG), usbhid, cdc_acm and snd-usb-audio submit, with margin. */
#define PB_USBIP_MAX_TRANSFER_LENGTH (16u * 1024u * 1024u)
/* snd-usb-audio submits at most a few dozen packets per URB, uvc 32; xHCI caps a TD ring far
 * below this. */
#define PB_USBIP_MAX_ISO_PACKETS 1024
/* A client refuses a devlist announcing more devices than this. */
#define PB_USBIP_MAX_DEVLIST_DEVICES 4096

typedef enum {
  PB_USBIP_OP_REQ_DEVLIST = 0x8005,
  PB_USBIP_OP_REP_DEVLIST = 0x0005,
  PB_USBIP_OP_REQ_IMPORT = 0x8003,
  PB_USBIP_OP_REP_IMPORT = 0x0003,
} PbUsbipOpCode;

/* Status of OP_REP_* (Linux: ST_OK, ST_NA, ST_DEV_BUSY, ST_DEV_ERR, ST_NODEV, ST_ERROR). */
typedef enum {
  PB_USBIP_ST_OK = 0,
  PB_USBIP_ST_NA = 1,
  PB_USBIP_ST_DEV_BUSY = 2,
  PB_USBIP_ST_DEV_ERR = 3,
  PB_USBIP_ST_NODEV = 4,
  PB_USBIP_ST_ERROR = 5,
} PbUsbipOpStatus;

typedef enum {
  PB_USBIP_CMD_SUBMIT = 1,
  PB_USBIP_CMD_UNLINK = 2,
  PB_USBIP_RET_SUBMIT = 3,
  PB_USBIP_RET_UNLINK = 4,
} PbUsbipCommand;

typedef enum {
  PB_USBIP_DIR_OUT = 0,
  PB_USBIP_DIR_IN = 1,
} PbUsbipDirection;

typedef enum {
  PB_USBIP_SPEED_UNKNOWN = 0,
  PB_USBIP_SPEED_LOW = 1,
  PB_USBIP_SPEED_FULL = 2,
  PB_USBIP_SPEED_HIGH = 3,
  PB_USBIP_SPEED_WIRELESS = 4,
  PB_USBIP_SPEED_SUPER = 5,
  PB_USBIP_SPEED_SUPER_PLUS = 6,
} PbUsbipSpeed;

/* URB transfer_flags (include/uapi/linux/usbip.h). */
#define PB_USBIP_URB_SHORT_NOT_OK 0x0001u
#define PB_USBIP_URB_ISO_ASAP 0x0002u
#define PB_USBIP_URB_NO_TRANSFER_DMA_MAP 0x0004u
#define PB_USBIP_URB_ZERO_PACKET 0x0040u
#define PB_USBIP_URB_NO_INTERRUPT 0x0080u
#define PB_USBIP_URB_FREE_BUFFER 0x0100u
#define PB_USBIP_URB_DIR_IN 0x0200u
#define PB_USBIP_URB_DMA_MAP_SINGLE 0x00010000u
#define PB_USBIP_URB_DMA_MAP_PAGE 0x00020000u
#define PB_USBIP_URB_DMA_MAP_SG 0x00040000u
/* The flags that mean something on the device side; the rest are host-side DMA bookkeeping. */
#define PB_USBIP_URB_FLAGS_MEANINGFUL \
  (PB_USBIP_URB_SHORT_NOT_OK | PB_USBIP_URB_ISO_ASAP | PB_USBIP_URB_ZERO_PACKET | PB_USBIP_URB_DIR_IN)

typedef struct {
  guint16 version;
  guint16 code;
  guint32 status;
} PbUsbipOpHeader;

typedef struct {
  guint8 interface_class;
  guint8 interface_subclass;
  guint8 interface_protocol;
} PbUsbipInterfaceRecord;

/* The 312-byte device record plus its interface records. Strings are NUL-terminated here
 * (one byte longer than on the wire, where they are NUL-padded and may fill the field). */
typedef struct {
  char path[PB_USBIP_PATH_SIZE + 1];
  char busid[PB_USBIP_BUSID_SIZE + 1];
  guint32 busnum;
  guint32 devnum;
  guint32 speed; /* PbUsbipSpeed */
  guint16 id_vendor;
  guint16 id_product;
  guint16 bcd_device;
  guint8 device_class;
  guint8 device_subclass;
  guint8 device_protocol;
  guint8 configuration_value;
  guint8 num_configurations;
  guint8 num_interfaces;
  PbUsbipInterfaceRecord interfaces[256]; /* num_interfaces of them are meaningful */
} PbUsbipDeviceRecord;

/* The 48-byte URB header. Which union member is meaningful follows from command. */
typedef struct {
  guint32 command; /* PbUsbipCommand */
  guint32 seqnum;
  guint32 devid;
  guint32 direction; /* PbUsbipDirection */
  guint32 ep;
  union {
    struct {
      guint32 transfer_flags;
      guint32 transfer_buffer_length;
      gint32 start_frame;
      gint32 number_of_packets;
      gint32 interval;
      guint8 setup[8];
    } cmd_submit;
    struct {
      gint32 status;
      guint32 actual_length;
      gint32 start_frame;
      gint32 number_of_packets;
      gint32 error_count;
    } ret_submit;
    struct {
      guint32 unlink_seqnum;
    } cmd_unlink;
    struct {
      gint32 status;
    } ret_unlink;
  } u;
} PbUsbipUrbHeader;

typedef struct {
  guint32 offset;
  guint32 length;
  guint32 actual_length;
  gint32 status;
} PbUsbipIsoPacket;

/* ---- management phase ---- */

void pb_usbip_op_header_encode (guint8 out[PB_USBIP_OP_HEADER_SIZE], guint16 code, guint32 status);
/* Needs len >= 8. Fails with PB_ERROR_VERSION_MISMATCH (naming the version seen) when the
 * version is not 0x0111; *out is filled even then so a server can answer. */
gboolean pb_usbip_op_header_decode (const guint8 *buf, gsize len, PbUsbipOpHeader *out, GError **error);

/* OP_REQ_IMPORT: header + busid. busid longer than 31 bytes fails with PB_ERROR_INVALID_ARGUMENT. */
gboolean pb_usbip_req_import_encode (guint8 out[PB_USBIP_REQ_IMPORT_SIZE], const char *busid, GError **error);
/* The 32 bytes after the header: compare up to the first NUL only (bytes after it may be
 * garbage); an unterminated 32-byte ID is accepted as is. Rejects an empty ID. */
gboolean pb_usbip_busid_decode (const guint8 *buf, gsize len, char out[PB_USBIP_BUSID_SIZE + 1], GError **error);

/* The 312-byte record alone (no interfaces), as OP_REP_IMPORT carries it. Fails if path or busid
 * do not fit their fields. */
gboolean pb_usbip_device_record_encode (const PbUsbipDeviceRecord *record, guint8 out[PB_USBIP_DEVICE_RECORD_SIZE], GError **error);
/* Decodes the 312 bytes; leaves interfaces untouched. Needs len >= 312. Forces NUL termination. */
gboolean pb_usbip_device_record_decode (const guint8 *buf, gsize len, PbUsbipDeviceRecord *out, GError **error);

void pb_usbip_interface_record_encode (const PbUsbipInterfaceRecord *record, guint8 out[PB_USBIP_INTERFACE_RECORD_SIZE]);
gboolean pb_usbip_interface_record_decode (const guint8 *buf, gsize len, PbUsbipInterfaceRecord *out, GError **error);

/* Whole OP_REP_DEVLIST: header(status 0), count, then each record and its interfaces. */
GBytes *pb_usbip_rep_devlist_encode (const PbUsbipDeviceRecord *const *records, guint n_records, GError **error);
/* Whole OP_REP_IMPORT: header with status; the record follows only when status is ST_OK. */
GBytes *pb_usbip_rep_import_encode (PbUsbipOpStatus status, const PbUsbipDeviceRecord *record, GError **error);

/* ---- URB phase ---- */

void pb_usbip_urb_header_encode (const PbUsbipUrbHeader *header, guint8 out[PB_USBIP_URB_HEADER_SIZE]);
/* Needs len >= 48. Fails on an unknown command or a direction other than 0/1. Does not judge
 * lengths: see pb_usbip_cmd_submit_validate. */
gboolean pb_usbip_urb_header_decode (const guint8 *buf, gsize len, PbUsbipUrbHeader *out, GError **error);

/* For a decoded CMD_SUBMIT: ep < 16, transfer_buffer_length <= max_length (PB_ERROR_TOO_LARGE),
 * and when is_iso, 1 <= number_of_packets <= PB_USBIP_MAX_ISO_PACKETS. For non-iso,
 * number_of_packets is ignored (Linux sends 0, some clients 0xffffffff). */
gboolean pb_usbip_cmd_submit_validate (const PbUsbipUrbHeader *header, gboolean is_iso, guint32 max_length, GError **error);

/* Bytes of payload that follow a header on the wire: OUT data for CMD_SUBMIT with direction OUT,
 * IN data (actual_length) for RET_SUBMIT with direction IN, else 0. Iso descriptors not counted.
 * Servers (Linux's usbip-host too) send RET_SUBMIT with direction 0: a client sets direction
 * from its own request before asking. */
guint32 pb_usbip_urb_payload_length (const PbUsbipUrbHeader *header);

void pb_usbip_iso_packets_encode (const PbUsbipIsoPacket *packets, guint n, guint8 *out /* n * 16 */);
/* Decodes n descriptors from buf (len >= n * 16) and checks each against buffer_length:
 * offset + length <= buffer_length (no overflow), actual_length <= length. */
gboolean pb_usbip_iso_packets_decode (const guint8 *buf, gsize len, guint n, guint32 buffer_length,
                                      PbUsbipIsoPacket *out, GError **error);

/* Human-readable names for logs and errors. Never NULL. */
const char *pb_usbip_op_status_to_string (guint32 status);
const char *pb_usbip_speed_to_string (guint32 speed);

/* Big-endian helpers used by the codec and by tests that build packets by hand. */
static inline guint16 pb_read_be16 (const guint8 *p) { return (guint16) ((p[0] << 8) | p[1]); }
static inline guint32 pb_read_be32 (const guint8 *p)
{
  return ((guint32) p[0] << 24) | ((guint32) p[1] << 16) | ((guint32) p[2] << 8) | p[3];
}
static inline void pb_write_be16 (guint8 *p, guint16 v) { p[0] = v >> 8; p[1] = v & 0xff; }
static inline void pb_write_be32 (guint8 *p, guint32 v)
{
  p[0] = v >> 24; p[1] = (v >> 16) & 0xff; p[2] = (v >> 8) & 0xff; p[3] = v & 0xff;
}

G_END_DECLS
