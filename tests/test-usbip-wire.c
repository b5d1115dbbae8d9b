/* The USB/IP wire codec against golden byte vectors typed by hand from the protocol layout
 * (big-endian, see docs/architecture.md and the kernel's usbip_protocol.rst), never produced by
 * our encoder: encode → golden, decode golden → fields, round trips, and every rejection. */
#include <string.h>

#include "pb-usbip.h"

/* ---- golden vectors ---- */

/* Device A: bound at interface level, so it reports no interfaces. */
#define PATH_A '/', 's', 'y', 's', '/', 'd', 'e', 'v', 'i', 'c', 'e', 's', '/', 'u', 's', 'b', '1', '/', \
               '1', '-', '2'
#define BUSID_A '1', '-', '2'
#define TAIL_A                                                                  \
  0x00, 0x00, 0x00, 0x01, /* busnum 1 */                                        \
  0x00, 0x00, 0x00, 0x03, /* devnum 3 */                                        \
  0x00, 0x00, 0x00, 0x03, /* speed 3 (high) */                                  \
  0x07, 0x81,             /* idVendor 0x0781 */                                 \
  0x55, 0x67,             /* idProduct 0x5567 */                                \
  0x01, 0x00,             /* bcdDevice 0x0100 */                                \
  0x00, 0x00, 0x00,       /* class, subclass, protocol: per interface */        \
  0x01,                   /* bConfigurationValue 1 */                           \
  0x01,                   /* bNumConfigurations 1 */                            \
  0x00                    /* bNumInterfaces 0 */

/* Device B: a SuperSpeed composite device with two interfaces. */
#define PATH_B '/', 's', 'y', 's', '/', 'd', 'e', 'v', 'i', 'c', 'e', 's', '/', 'u', 's', 'b', '3', '/', \
               '3', '-', '1', '/', '3', '-', '1', '.', '4'
#define BUSID_B '3', '-', '1', '.', '4'
#define TAIL_B                                                                  \
  0x00, 0x00, 0x00, 0x03, /* busnum 3 */                                        \
  0x00, 0x00, 0x00, 0x11, /* devnum 17 */                                       \
  0x00, 0x00, 0x00, 0x05, /* speed 5 (super) */                                 \
  0x0b, 0xda,             /* idVendor 0x0bda */                                 \
  0x81, 0x53,             /* idProduct 0x8153 */                                \
  0x31, 0x00,             /* bcdDevice 0x3100 */                                \
  0xef, 0x02, 0x01,       /* class 0xef (misc), subclass 2, protocol 1 (IAD) */ \
  0x01,                   /* bConfigurationValue 1 */                           \
  0x02,                   /* bNumConfigurations 2 */                            \
  0x02                    /* bNumInterfaces 2 */
#define IFACES_B                                                                \
  0x02, 0x06, 0x00, 0x00, /* CDC, ECM, no protocol, pad */                      \
  0x0a, 0x00, 0x00, 0x00  /* CDC data, pad */

/* Strings are NUL-padded: designated offsets leave the rest of each field zero. */
static const guint8 golden_record_a[312] = {
  PATH_A,                 /* path[256] at 0 */
  [256] = BUSID_A,        /* busid[32] at 256 */
  [288] = TAIL_A,
};
static const guint8 golden_record_b[312] = {
  PATH_B,
  [256] = BUSID_B,
  [288] = TAIL_B,
};

static const guint8 golden_req_devlist[8] = {
  0x01, 0x11, /* version 0x0111 */
  0x80, 0x05, /* OP_REQ_DEVLIST */
  0x00, 0x00, 0x00, 0x00, /* status 0 */
};

static const guint8 golden_rep_devlist[644] = {
  0x01, 0x11, /* version */
  0x00, 0x05, /* OP_REP_DEVLIST */
  0x00, 0x00, 0x00, 0x00, /* status OK */
  0x00, 0x00, 0x00, 0x02, /* 2 devices */
  [12] = PATH_A,          /* device A at 12, no interfaces follow */
  [12 + 256] = BUSID_A,
  [12 + 288] = TAIL_A,
  [324] = PATH_B,         /* device B at 324 */
  [324 + 256] = BUSID_B,
  [324 + 288] = TAIL_B,
  [636] = IFACES_B,       /* B's two interface records */
};

static const guint8 golden_req_import[40] = {
  0x01, 0x11, /* version */
  0x80, 0x03, /* OP_REQ_IMPORT */
  0x00, 0x00, 0x00, 0x00, /* status 0 */
  BUSID_B,    /* busid[32] at 8, NUL-padded */
};

static const guint8 golden_rep_import_ok[320] = {
  0x01, 0x11, /* version */
  0x00, 0x03, /* OP_REP_IMPORT */
  0x00, 0x00, 0x00, 0x00, /* status OK */
  [8] = PATH_B, /* the record, without interfaces */
  [8 + 256] = BUSID_B,
  [8 + 288] = TAIL_B,
};

static const guint8 golden_rep_import_busy[8] = {
  0x01, 0x11, /* version */
  0x00, 0x03, /* OP_REP_IMPORT */
  0x00, 0x00, 0x00, 0x02, /* ST_DEV_BUSY, and nothing follows */
};

static const guint8 golden_interface[4] = {
  0x03, /* HID */
  0x01, /* boot subclass */
  0x01, /* keyboard */
  0x00, /* pad */
};

/* GET_DESCRIPTOR(DEVICE) on ep 0. */
static const guint8 golden_cmd_submit_control_in[48] = {
  0x00, 0x00, 0x00, 0x01, /* CMD_SUBMIT */
  0x00, 0x00, 0x00, 0x2a, /* seqnum 42 */
  0x00, 0x03, 0x00, 0x11, /* devid 3 << 16 | 17 */
  0x00, 0x00, 0x00, 0x01, /* direction IN */
  0x00, 0x00, 0x00, 0x00, /* ep 0 */
  0x00, 0x00, 0x02, 0x00, /* transfer_flags DIR_IN */
  0x00, 0x00, 0x00, 0x12, /* transfer_buffer_length 18 */
  0x00, 0x00, 0x00, 0x00, /* start_frame 0 */
  0x00, 0x00, 0x00, 0x00, /* number_of_packets 0 */
  0x00, 0x00, 0x00, 0x00, /* interval 0 */
  0x80, 0x06, 0x00, 0x01, 0x00, 0x00, 0x12, 0x00, /* setup: bmRequestType 0x80, GET_DESCRIPTOR, wValue 0x0100, wIndex 0, wLength 18 (LE) */
};

/* A mass-storage CBW (INQUIRY) to bulk ep 2, with its 31 bytes of OUT data after the header. */
static const guint8 golden_cmd_submit_bulk_out[48 + 31] = {
  0x00, 0x00, 0x00, 0x01, /* CMD_SUBMIT */
  0x00, 0x00, 0x00, 0x2b, /* seqnum 43 */
  0x00, 0x03, 0x00, 0x11, /* devid */
  0x00, 0x00, 0x00, 0x00, /* direction OUT */
  0x00, 0x00, 0x00, 0x02, /* ep 2 */
  0x00, 0x00, 0x00, 0x00, /* transfer_flags 0 */
  0x00, 0x00, 0x00, 0x1f, /* transfer_buffer_length 31 */
  0x00, 0x00, 0x00, 0x00, /* start_frame */
  0xff, 0xff, 0xff, 0xff, /* number_of_packets -1: some clients send it for non-iso */
  0x00, 0x00, 0x00, 0x00, /* interval */
  0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, /* setup unused */
  /* payload: CBW */
  'U', 'S', 'B', 'C', 0x01, 0x00, 0x00, 0x00, /* signature, tag 1 */
  0x24, 0x00, 0x00, 0x00, 0x80, 0x00, 0x06, /* 36 bytes IN, flags IN, LUN 0, CB length 6 */
  0x12, 0x00, 0x00, 0x00, 0x24, 0x00, 0x00, 0x00, /* INQUIRY, allocation length 36 */
  0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
};

/* Reply to the control IN above, as Linux's usbip-host sends it (devid/direction/ep zeroed). */
static const guint8 golden_ret_submit_in[48 + 18] = {
  0x00, 0x00, 0x00, 0x03, /* RET_SUBMIT */
  0x00, 0x00, 0x00, 0x2a, /* seqnum 42 */
  0x00, 0x00, 0x00, 0x00, /* devid 0 */
  0x00, 0x00, 0x00, 0x00, /* direction 0 */
  0x00, 0x00, 0x00, 0x00, /* ep 0 */
  0x00, 0x00, 0x00, 0x00, /* status 0 */
  0x00, 0x00, 0x00, 0x12, /* actual_length 18 */
  0x00, 0x00, 0x00, 0x00, /* start_frame */
  0x00, 0x00, 0x00, 0x00, /* number_of_packets */
  0x00, 0x00, 0x00, 0x00, /* error_count */
  0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, /* padding */
  /* payload: device descriptor */
  0x12, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00, 0x40,
  0x81, 0x07, 0x67, 0x55, 0x00, 0x01, 0x01, 0x02, 0x03, 0x01,
};

/* A stall on the bulk IN endpoint 1. */
static const guint8 golden_ret_submit_stall[48] = {
  0x00, 0x00, 0x00, 0x03, /* RET_SUBMIT */
  0x00, 0x00, 0x00, 0x2d, /* seqnum 45 */
  0x00, 0x03, 0x00, 0x11, /* devid */
  0x00, 0x00, 0x00, 0x01, /* direction IN */
  0x00, 0x00, 0x00, 0x01, /* ep 1 */
  0xff, 0xff, 0xff, 0xe0, /* status -32 (-EPIPE) */
  0x00, 0x00, 0x00, 0x00, /* actual_length 0 */
  0x00, 0x00, 0x00, 0x00, /* start_frame */
  0x00, 0x00, 0x00, 0x00, /* number_of_packets */
  0x00, 0x00, 0x00, 0x00, /* error_count */
  0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, /* padding */
};

static const guint8 golden_cmd_unlink[48] = {
  0x00, 0x00, 0x00, 0x02, /* CMD_UNLINK */
  0x00, 0x00, 0x00, 0x2c, /* seqnum 44 */
  0x00, 0x03, 0x00, 0x11, /* devid */
  0x00, 0x00, 0x00, 0x00, /* direction */
  0x00, 0x00, 0x00, 0x02, /* ep 2 */
  0x00, 0x00, 0x00, 0x2b, /* unlink_seqnum 43 */
  0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, /* padding (24) */
  0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
  0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
};

static const guint8 golden_ret_unlink[48] = {
  0x00, 0x00, 0x00, 0x04, /* RET_UNLINK */
  0x00, 0x00, 0x00, 0x2c, /* seqnum 44: the unlink's own */
  0x00, 0x00, 0x00, 0x00, /* devid */
  0x00, 0x00, 0x00, 0x00, /* direction */
  0x00, 0x00, 0x00, 0x00, /* ep */
  0xff, 0xff, 0xff, 0x98, /* status -104 (-ECONNRESET) */
  0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, /* padding (24) */
  0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
  0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
};

/* Iso IN on ep 1: three 192-byte packets in a 576-byte buffer. */
static const guint8 golden_cmd_submit_iso[48] = {
  0x00, 0x00, 0x00, 0x01, /* CMD_SUBMIT */
  0x00, 0x00, 0x01, 0x00, /* seqnum 256 */
  0x00, 0x01, 0x00, 0x05, /* devid 1 << 16 | 5 */
  0x00, 0x00, 0x00, 0x01, /* direction IN */
  0x00, 0x00, 0x00, 0x01, /* ep 1 */
  0x00, 0x00, 0x02, 0x02, /* transfer_flags DIR_IN | ISO_ASAP */
  0x00, 0x00, 0x02, 0x40, /* transfer_buffer_length 576 */
  0x00, 0x00, 0x12, 0x34, /* start_frame 0x1234 */
  0x00, 0x00, 0x00, 0x03, /* number_of_packets 3 */
  0x00, 0x00, 0x00, 0x01, /* interval 1 */
  0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, /* setup unused */
};

static const guint8 golden_iso[3 * 16] = {
  0x00, 0x00, 0x00, 0x00, /* [0] offset 0 */
  0x00, 0x00, 0x00, 0xc0, /*     length 192 */
  0x00, 0x00, 0x00, 0xc0, /*     actual_length 192 */
  0x00, 0x00, 0x00, 0x00, /*     status 0 */
  0x00, 0x00, 0x00, 0xc0, /* [1] offset 192 */
  0x00, 0x00, 0x00, 0xc0, /*     length 192 */
  0x00, 0x00, 0x00, 0xb4, /*     actual_length 180 */
  0x00, 0x00, 0x00, 0x00, /*     status 0 */
  0x00, 0x00, 0x01, 0x80, /* [2] offset 384 */
  0x00, 0x00, 0x00, 0xc0, /*     length 192 */
  0x00, 0x00, 0x00, 0x00, /*     actual_length 0 */
  0xff, 0xff, 0xff, 0xee, /*     status -18 (-EXDEV) */
};

/* ---- helpers ---- */

/* Exactly len bytes on the heap (NULL for 0) so ASan catches any read past the end. */
static guint8 *
dup_prefix (const guint8 *buf, gsize len)
{
  guint8 *copy = g_malloc (len);

  if (len > 0)
    memcpy (copy, buf, len);
  return copy;
}

typedef gboolean (*DecodeFunc) (const guint8 *buf, gsize len, GError **error);

/* Every strict prefix of a valid message must fail cleanly with PB_ERROR_PROTOCOL. */
static void
assert_truncations_fail (DecodeFunc decode, const guint8 *golden, gsize size)
{
  g_autofree guint8 *whole = dup_prefix (golden, size);
  g_autoptr(GError) error = NULL;

  g_assert_true (decode (whole, size, &error));
  g_assert_no_error (error);
  for (gsize len = 0; len < size; len++)
    {
      g_autofree guint8 *prefix = dup_prefix (golden, len);
      g_autoptr(GError) truncated_error = NULL;

      if (decode (prefix, len, &truncated_error))
        g_error ("decoding %" G_GSIZE_FORMAT " of %" G_GSIZE_FORMAT " bytes succeeded", len, size);
      g_assert_error (truncated_error, PB_ERROR, PB_ERROR_PROTOCOL);
    }
}

static PbUsbipDeviceRecord *
make_record_a (void)
{
  PbUsbipDeviceRecord *r = g_new0 (PbUsbipDeviceRecord, 1);

  strcpy (r->path, "/sys/devices/usb1/1-2");
  strcpy (r->busid, "1-2");
  r->busnum = 1;
  r->devnum = 3;
  r->speed = PB_USBIP_SPEED_HIGH;
  r->id_vendor = 0x0781;
  r->id_product = 0x5567;
  r->bcd_device = 0x0100;
  r->configuration_value = 1;
  r->num_configurations = 1;
  r->num_interfaces = 0;
  return r;
}

static PbUsbipDeviceRecord *
make_record_b (void)
{
  PbUsbipDeviceRecord *r = g_new0 (PbUsbipDeviceRecord, 1);

  strcpy (r->path, "/sys/devices/usb3/3-1/3-1.4");
  strcpy (r->busid, "3-1.4");
  r->busnum = 3;
  r->devnum = 17;
  r->speed = PB_USBIP_SPEED_SUPER;
  r->id_vendor = 0x0bda;
  r->id_product = 0x8153;
  r->bcd_device = 0x3100;
  r->device_class = 0xef;
  r->device_subclass = 0x02;
  r->device_protocol = 0x01;
  r->configuration_value = 1;
  r->num_configurations = 2;
  r->num_interfaces = 2;
  r->interfaces[0] = (PbUsbipInterfaceRecord) { 0x02, 0x06, 0x00 };
  r->interfaces[1] = (PbUsbipInterfaceRecord) { 0x0a, 0x00, 0x00 };
  return r;
}

/* Compares what the 312-byte record carries (not the interfaces). */
static void
assert_record_equal (const PbUsbipDeviceRecord *a, const PbUsbipDeviceRecord *b)
{
  g_assert_cmpstr (a->path, ==, b->path);
  g_assert_cmpstr (a->busid, ==, b->busid);
  g_assert_cmpuint (a->busnum, ==, b->busnum);
  g_assert_cmpuint (a->devnum, ==, b->devnum);
  g_assert_cmpuint (a->speed, ==, b->speed);
  g_assert_cmphex (a->id_vendor, ==, b->id_vendor);
  g_assert_cmphex (a->id_product, ==, b->id_product);
  g_assert_cmphex (a->bcd_device, ==, b->bcd_device);
  g_assert_cmphex (a->device_class, ==, b->device_class);
  g_assert_cmphex (a->device_subclass, ==, b->device_subclass);
  g_assert_cmphex (a->device_protocol, ==, b->device_protocol);
  g_assert_cmpuint (a->configuration_value, ==, b->configuration_value);
  g_assert_cmpuint (a->num_configurations, ==, b->num_configurations);
  g_assert_cmpuint (a->num_interfaces, ==, b->num_interfaces);
}

/* A client's reading of a whole OP_REP_DEVLIST, built only from the codec's decoders. */
static gboolean
parse_rep_devlist (const guint8 *buf, gsize len, GPtrArray *records, GError **error)
{
  PbUsbipOpHeader header;
  gsize pos = PB_USBIP_OP_HEADER_SIZE + 4;
  guint32 count;

  if (!pb_usbip_op_header_decode (buf, len, &header, error))
    return FALSE;
  if (header.code != PB_USBIP_OP_REP_DEVLIST || header.status != PB_USBIP_ST_OK)
    {
      g_set_error (error, PB_ERROR, PB_ERROR_PROTOCOL, "not a successful devlist reply");
      return FALSE;
    }
  if (len < pos)
    {
      g_set_error (error, PB_ERROR, PB_ERROR_PROTOCOL, "device count truncated");
      return FALSE;
    }
  count = pb_read_be32 (buf + PB_USBIP_OP_HEADER_SIZE);
  if (count > PB_USBIP_MAX_DEVLIST_DEVICES)
    {
      g_set_error (error, PB_ERROR, PB_ERROR_TOO_LARGE, "too many devices");
      return FALSE;
    }
  for (guint32 i = 0; i < count; i++)
    {
      g_autofree PbUsbipDeviceRecord *record = g_new0 (PbUsbipDeviceRecord, 1);

      if (!pb_usbip_device_record_decode (buf + pos, len - pos, record, error))
        return FALSE;
      pos += PB_USBIP_DEVICE_RECORD_SIZE;
      for (guint j = 0; j < record->num_interfaces; j++)
        {
          if (!pb_usbip_interface_record_decode (buf + pos, len - pos, &record->interfaces[j], error))
            return FALSE;
          pos += PB_USBIP_INTERFACE_RECORD_SIZE;
        }
      g_ptr_array_add (records, g_steal_pointer (&record));
    }
  return TRUE;
}

static gboolean
decode_op_header (const guint8 *buf, gsize len, GError **error)
{
  PbUsbipOpHeader header;
  return pb_usbip_op_header_decode (buf, len, &header, error);
}

static gboolean
decode_busid (const guint8 *buf, gsize len, GError **error)
{
  char busid[PB_USBIP_BUSID_SIZE + 1];
  return pb_usbip_busid_decode (buf, len, busid, error);
}

static gboolean
decode_device_record (const guint8 *buf, gsize len, GError **error)
{
  g_autofree PbUsbipDeviceRecord *record = g_new0 (PbUsbipDeviceRecord, 1);
  return pb_usbip_device_record_decode (buf, len, record, error);
}

static gboolean
decode_interface_record (const guint8 *buf, gsize len, GError **error)
{
  PbUsbipInterfaceRecord record;
  return pb_usbip_interface_record_decode (buf, len, &record, error);
}

static gboolean
decode_urb_header (const guint8 *buf, gsize len, GError **error)
{
  PbUsbipUrbHeader header;
  return pb_usbip_urb_header_decode (buf, len, &header, error);
}

static gboolean
decode_three_iso (const guint8 *buf, gsize len, GError **error)
{
  PbUsbipIsoPacket packets[3];
  return pb_usbip_iso_packets_decode (buf, len, 3, 576, packets, error);
}

static gboolean
decode_devlist (const guint8 *buf, gsize len, GError **error)
{
  g_autoptr(GPtrArray) records = g_ptr_array_new_with_free_func (g_free);
  return parse_rep_devlist (buf, len, records, error);
}

/* OP_REP_IMPORT as a client reads it: header, then the record only on success. */
static gboolean
decode_rep_import (const guint8 *buf, gsize len, GError **error)
{
  PbUsbipOpHeader header;
  g_autofree PbUsbipDeviceRecord *record = g_new0 (PbUsbipDeviceRecord, 1);

  if (!pb_usbip_op_header_decode (buf, len, &header, error))
    return FALSE;
  if (header.status != PB_USBIP_ST_OK)
    return TRUE;
  return pb_usbip_device_record_decode (buf + PB_USBIP_OP_HEADER_SIZE, len - PB_USBIP_OP_HEADER_SIZE, record,
                                        error);
}

static void
assert_urb_header_round_trip (const guint8 *golden)
{
  PbUsbipUrbHeader decoded, again;
  guint8 encoded[PB_USBIP_URB_HEADER_SIZE];
  g_autoptr(GError) error = NULL;

  g_assert_true (pb_usbip_urb_header_decode (golden, PB_USBIP_URB_HEADER_SIZE, &decoded, &error));
  g_assert_no_error (error);
  pb_usbip_urb_header_encode (&decoded, encoded);
  g_assert_cmpmem (encoded, sizeof encoded, golden, PB_USBIP_URB_HEADER_SIZE);
  g_assert_true (pb_usbip_urb_header_decode (encoded, sizeof encoded, &again, &error));
  g_assert_no_error (error);
  g_assert_cmpmem (&again, sizeof again, &decoded, sizeof decoded);
}

/* ---- management phase ---- */

static void
test_op_header (void)
{
  guint8 out[PB_USBIP_OP_HEADER_SIZE];
  PbUsbipOpHeader header = { 0 };
  g_autoptr(GError) error = NULL;

  pb_usbip_op_header_encode (out, PB_USBIP_OP_REQ_DEVLIST, 0);
  g_assert_cmpmem (out, sizeof out, golden_req_devlist, sizeof golden_req_devlist);

  g_assert_true (pb_usbip_op_header_decode (golden_req_devlist, sizeof golden_req_devlist, &header, &error));
  g_assert_no_error (error);
  g_assert_cmphex (header.version, ==, 0x0111);
  g_assert_cmphex (header.code, ==, PB_USBIP_OP_REQ_DEVLIST);
  g_assert_cmpuint (header.status, ==, 0);

  /* Status is a full 32-bit field. */
  pb_usbip_op_header_encode (out, PB_USBIP_OP_REP_IMPORT, 0x01020304);
  g_assert_cmpmem (out, sizeof out, ((const guint8[]) { 0x01, 0x11, 0x00, 0x03, 0x01, 0x02, 0x03, 0x04 }), 8);

  assert_truncations_fail (decode_op_header, golden_req_devlist, sizeof golden_req_devlist);
}

static void
test_op_header_bad_version (void)
{
  /* What old Windows clients sent. */
  static const guint8 old[8] = { 0x01, 0x06, 0x80, 0x05, 0x00, 0x00, 0x00, 0x00 };
  static const guint8 swapped[8] = { 0x11, 0x01, 0x80, 0x03, 0x00, 0x00, 0x00, 0x00 };
  PbUsbipOpHeader header = { 0 };
  g_autoptr(GError) error = NULL;

  g_assert_false (pb_usbip_op_header_decode (old, sizeof old, &header, &error));
  g_assert_error (error, PB_ERROR, PB_ERROR_VERSION_MISMATCH);
  g_assert_cmpstr (error->message, ==, "USB/IP version 0x0106 is not supported (expected 0x0111)");
  /* Filled anyway so a server can answer the right op code. */
  g_assert_cmphex (header.version, ==, 0x0106);
  g_assert_cmphex (header.code, ==, PB_USBIP_OP_REQ_DEVLIST);
  g_clear_error (&error);

  g_assert_false (pb_usbip_op_header_decode (swapped, sizeof swapped, &header, &error));
  g_assert_error (error, PB_ERROR, PB_ERROR_VERSION_MISMATCH);
  g_assert_cmpstr (error->message, ==, "USB/IP version 0x1101 is not supported (expected 0x0111)");
}

static void
test_device_record (void)
{
  g_autofree PbUsbipDeviceRecord *a = make_record_a ();
  g_autofree PbUsbipDeviceRecord *b = make_record_b ();
  g_autofree PbUsbipDeviceRecord *decoded = g_new0 (PbUsbipDeviceRecord, 1);
  g_autofree PbUsbipDeviceRecord *again = g_new0 (PbUsbipDeviceRecord, 1);
  guint8 out[PB_USBIP_DEVICE_RECORD_SIZE];
  g_autoptr(GError) error = NULL;

  g_assert_true (pb_usbip_device_record_encode (a, out, &error));
  g_assert_no_error (error);
  g_assert_cmpmem (out, sizeof out, golden_record_a, sizeof golden_record_a);
  g_assert_true (pb_usbip_device_record_encode (b, out, &error));
  g_assert_no_error (error);
  g_assert_cmpmem (out, sizeof out, golden_record_b, sizeof golden_record_b);

  /* Decode golden B and check each field by value, not against the encoder's input. */
  decoded->interfaces[0].interface_class = 0x77; /* must stay untouched */
  g_assert_true (pb_usbip_device_record_decode (golden_record_b, sizeof golden_record_b, decoded, &error));
  g_assert_no_error (error);
  g_assert_cmpstr (decoded->path, ==, "/sys/devices/usb3/3-1/3-1.4");
  g_assert_cmpstr (decoded->busid, ==, "3-1.4");
  g_assert_cmpuint (decoded->busnum, ==, 3);
  g_assert_cmpuint (decoded->devnum, ==, 17);
  g_assert_cmpuint (decoded->speed, ==, PB_USBIP_SPEED_SUPER);
  g_assert_cmphex (decoded->id_vendor, ==, 0x0bda);
  g_assert_cmphex (decoded->id_product, ==, 0x8153);
  g_assert_cmphex (decoded->bcd_device, ==, 0x3100);
  g_assert_cmphex (decoded->device_class, ==, 0xef);
  g_assert_cmphex (decoded->device_subclass, ==, 0x02);
  g_assert_cmphex (decoded->device_protocol, ==, 0x01);
  g_assert_cmpuint (decoded->configuration_value, ==, 1);
  g_assert_cmpuint (decoded->num_configurations, ==, 2);
  g_assert_cmpuint (decoded->num_interfaces, ==, 2);
  g_assert_cmphex (decoded->interfaces[0].interface_class, ==, 0x77);

  /* Round trip. */
  g_assert_true (pb_usbip_device_record_encode (decoded, out, &error));
  g_assert_no_error (error);
  g_assert_cmpmem (out, sizeof out, golden_record_b, sizeof golden_record_b);
  g_assert_true (pb_usbip_device_record_decode (out, sizeof out, again, &error));
  g_assert_no_error (error);
  assert_record_equal (again, decoded);

  g_assert_true (pb_usbip_device_record_decode (golden_record_a, sizeof golden_record_a, decoded, &error));
  g_assert_no_error (error);
  assert_record_equal (decoded, a);
  g_assert_cmpuint (decoded->num_interfaces, ==, 0);

  assert_truncations_fail (decode_device_record, golden_record_a, sizeof golden_record_a);
}

static void
test_device_record_full_fields (void)
{
  g_autofree PbUsbipDeviceRecord *record = g_new0 (PbUsbipDeviceRecord, 1);
  g_autofree PbUsbipDeviceRecord *decoded = g_new0 (PbUsbipDeviceRecord, 1);
  guint8 wire[PB_USBIP_DEVICE_RECORD_SIZE];
  guint8 out[PB_USBIP_DEVICE_RECORD_SIZE];
  g_autoptr(GError) error = NULL;

  /* Strings filling their whole field, with no NUL on the wire: terminated on decode (the
   * struct starts dirty so a missing terminator shows). */
  memset (decoded, 0xff, sizeof *decoded);
  memcpy (wire, golden_record_a, sizeof wire);
  memset (wire, 'p', PB_USBIP_PATH_SIZE);
  memset (wire + PB_USBIP_PATH_SIZE, 'b', PB_USBIP_BUSID_SIZE);
  g_assert_true (pb_usbip_device_record_decode (wire, sizeof wire, decoded, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (strlen (decoded->path), ==, 256);
  g_assert_cmpuint (strlen (decoded->busid), ==, 32);
  g_assert_cmpuint (decoded->busnum, ==, 1); /* not swallowed by the busid */
  g_assert_true (pb_usbip_device_record_encode (decoded, out, &error));
  g_assert_no_error (error);
  g_assert_cmpmem (out, sizeof out, wire, sizeof wire);

  /* Longer than the field: the struct has room for one more byte and no NUL after it. */
  memset (record->path, 'p', sizeof record->path);
  strcpy (record->busid, "1-1");
  g_assert_false (pb_usbip_device_record_encode (record, out, &error));
  g_assert_error (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT);
  g_clear_error (&error);

  strcpy (record->path, "/x");
  memset (record->busid, 'b', sizeof record->busid);
  g_assert_false (pb_usbip_device_record_encode (record, out, &error));
  g_assert_error (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT);
}

static void
test_interface_record (void)
{
  PbUsbipInterfaceRecord record = { 0x03, 0x01, 0x01 };
  PbUsbipInterfaceRecord decoded = { 0 };
  static const guint8 padded_garbage[4] = { 0xff, 0x00, 0x50, 0xa5 }; /* vendor, pad ignored */
  guint8 out[PB_USBIP_INTERFACE_RECORD_SIZE];
  g_autoptr(GError) error = NULL;

  pb_usbip_interface_record_encode (&record, out);
  g_assert_cmpmem (out, sizeof out, golden_interface, sizeof golden_interface);

  g_assert_true (pb_usbip_interface_record_decode (golden_interface, sizeof golden_interface, &decoded, &error));
  g_assert_no_error (error);
  g_assert_cmphex (decoded.interface_class, ==, 0x03);
  g_assert_cmphex (decoded.interface_subclass, ==, 0x01);
  g_assert_cmphex (decoded.interface_protocol, ==, 0x01);

  g_assert_true (pb_usbip_interface_record_decode (padded_garbage, sizeof padded_garbage, &decoded, &error));
  g_assert_no_error (error);
  g_assert_cmphex (decoded.interface_class, ==, 0xff);
  g_assert_cmphex (decoded.interface_subclass, ==, 0x00);
  g_assert_cmphex (decoded.interface_protocol, ==, 0x50);
  pb_usbip_interface_record_encode (&decoded, out);
  g_assert_cmpmem (out, sizeof out, ((const guint8[]) { 0xff, 0x00, 0x50, 0x00 }), 4);

  assert_truncations_fail (decode_interface_record, golden_interface, sizeof golden_interface);
}

static void
test_rep_devlist (void)
{
  g_autofree PbUsbipDeviceRecord *a = make_record_a ();
  g_autofree PbUsbipDeviceRecord *b = make_record_b ();
  const PbUsbipDeviceRecord *records[] = { a, b };
  g_autoptr(GPtrArray) decoded = g_ptr_array_new_with_free_func (g_free);
  g_autoptr(GBytes) bytes = NULL;
  g_autoptr(GError) error = NULL;
  gsize size = 0;
  const guint8 *data;
  const PbUsbipDeviceRecord *r;

  bytes = pb_usbip_rep_devlist_encode (records, G_N_ELEMENTS (records), &error);
  g_assert_no_error (error);
  g_assert_nonnull (bytes);
  data = g_bytes_get_data (bytes, &size);
  g_assert_cmpmem (data, size, golden_rep_devlist, sizeof golden_rep_devlist);

  g_assert_true (parse_rep_devlist (golden_rep_devlist, sizeof golden_rep_devlist, decoded, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (decoded->len, ==, 2);
  r = decoded->pdata[0];
  g_assert_cmpstr (r->busid, ==, "1-2");
  g_assert_cmpstr (r->path, ==, "/sys/devices/usb1/1-2");
  g_assert_cmpuint (r->devnum, ==, 3);
  g_assert_cmpuint (r->speed, ==, PB_USBIP_SPEED_HIGH);
  g_assert_cmphex (r->id_vendor, ==, 0x0781);
  g_assert_cmpuint (r->num_interfaces, ==, 0);
  r = decoded->pdata[1];
  g_assert_cmpstr (r->busid, ==, "3-1.4");
  g_assert_cmphex (r->id_product, ==, 0x8153);
  g_assert_cmpuint (r->num_interfaces, ==, 2);
  g_assert_cmphex (r->interfaces[0].interface_class, ==, 0x02);
  g_assert_cmphex (r->interfaces[0].interface_subclass, ==, 0x06);
  g_assert_cmphex (r->interfaces[0].interface_protocol, ==, 0x00);
  g_assert_cmphex (r->interfaces[1].interface_class, ==, 0x0a);

  /* Round trip through the decoded records. */
  {
    g_autoptr(GBytes) again = pb_usbip_rep_devlist_encode ((const PbUsbipDeviceRecord *const *) decoded->pdata,
                                                           decoded->len, &error);
    g_assert_no_error (error);
    g_assert_true (g_bytes_equal (again, bytes));
  }

  assert_truncations_fail (decode_devlist, golden_rep_devlist, sizeof golden_rep_devlist);
}

static void
test_rep_devlist_empty_and_errors (void)
{
  static const guint8 empty[12] = { 0x01, 0x11, 0x00, 0x05, 0, 0, 0, 0, 0, 0, 0, 0 };
  g_autofree PbUsbipDeviceRecord *bad = make_record_a ();
  const PbUsbipDeviceRecord *records[] = { bad };
  g_autoptr(GBytes) bytes = pb_usbip_rep_devlist_encode (NULL, 0, NULL);
  g_autoptr(GError) error = NULL;

  g_assert_nonnull (bytes);
  g_assert_cmpmem (g_bytes_get_data (bytes, NULL), g_bytes_get_size (bytes), empty, sizeof empty);

  memset (bad->busid, 'x', sizeof bad->busid);
  g_assert_null (pb_usbip_rep_devlist_encode (records, 1, &error));
  g_assert_error (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT);
}

static void
test_req_import (void)
{
  guint8 out[PB_USBIP_REQ_IMPORT_SIZE];
  char busid[PB_USBIP_BUSID_SIZE + 1];
  PbUsbipOpHeader header;
  g_autoptr(GError) error = NULL;

  g_assert_true (pb_usbip_req_import_encode (out, "3-1.4", &error));
  g_assert_no_error (error);
  g_assert_cmpmem (out, sizeof out, golden_req_import, sizeof golden_req_import);

  g_assert_true (pb_usbip_op_header_decode (golden_req_import, sizeof golden_req_import, &header, &error));
  g_assert_no_error (error);
  g_assert_cmphex (header.code, ==, PB_USBIP_OP_REQ_IMPORT);
  g_assert_true (pb_usbip_busid_decode (golden_req_import + 8, sizeof golden_req_import - 8, busid, &error));
  g_assert_no_error (error);
  g_assert_cmpstr (busid, ==, "3-1.4");

  g_assert_true (pb_usbip_req_import_encode (out, busid, &error));
  g_assert_cmpmem (out, sizeof out, golden_req_import, sizeof golden_req_import);

  assert_truncations_fail (decode_busid, golden_req_import + 8, PB_USBIP_BUSID_SIZE);
}

static void
test_busid_decode_edges (void)
{
  static const guint8 garbage_after_nul[32] = {
    '1', '-', '1', 0x00, /* the ID */
    0xde, 0xad, 0xbe, 0xef, 'x', 'y', 'z', 0x00, 0x01, 0x02, /* stack garbage from the client */
  };
  guint8 full[32];
  guint8 empty_with_garbage[32] = { 0x00, 'a', 'b', 'c' };
  guint8 zeros[32] = { 0 };
  char busid[PB_USBIP_BUSID_SIZE + 1];
  g_autoptr(GError) error = NULL;

  g_assert_true (pb_usbip_busid_decode (garbage_after_nul, sizeof garbage_after_nul, busid, &error));
  g_assert_no_error (error);
  g_assert_cmpstr (busid, ==, "1-1");

  /* Unterminated 32-byte ID: accepted as is, terminated by us. */
  memset (full, 'a', sizeof full);
  full[31] = 'z';
  g_assert_true (pb_usbip_busid_decode (full, sizeof full, busid, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (strlen (busid), ==, 32);
  g_assert_cmpint (busid[31], ==, 'z');

  /* Extra bytes after the field do not leak into the ID. */
  {
    guint8 longer[40];
    memset (longer, 'q', sizeof longer);
    g_assert_true (pb_usbip_busid_decode (longer, sizeof longer, busid, &error));
    g_assert_cmpuint (strlen (busid), ==, 32);
  }

  g_assert_false (pb_usbip_busid_decode (zeros, sizeof zeros, busid, &error));
  g_assert_error (error, PB_ERROR, PB_ERROR_PROTOCOL);
  g_clear_error (&error);
  g_assert_false (pb_usbip_busid_decode (empty_with_garbage, sizeof empty_with_garbage, busid, &error));
  g_assert_error (error, PB_ERROR, PB_ERROR_PROTOCOL);
}

static void
test_req_import_encode_limits (void)
{
  guint8 out[PB_USBIP_REQ_IMPORT_SIZE];
  char id31[32], id32[33];
  g_autofree char *id100 = g_strnfill (100, '9');
  g_autoptr(GError) error = NULL;

  memset (id31, '7', 31);
  id31[31] = '\0';
  memset (id32, '7', 32);
  id32[32] = '\0';

  /* 31 bytes leave room for the NUL the Linux tools expect. */
  g_assert_true (pb_usbip_req_import_encode (out, id31, &error));
  g_assert_no_error (error);
  g_assert_cmpmem (out, 8, golden_req_import, 8);
  g_assert_cmpint (out[8], ==, '7');
  g_assert_cmpint (out[38], ==, '7');
  g_assert_cmpint (out[39], ==, 0);

  g_assert_false (pb_usbip_req_import_encode (out, id32, &error));
  g_assert_error (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT);
  g_clear_error (&error);
  g_assert_false (pb_usbip_req_import_encode (out, id100, &error));
  g_assert_error (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT);
  g_clear_error (&error);
  g_assert_false (pb_usbip_req_import_encode (out, "", &error));
  g_assert_error (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT);
}

static void
test_rep_import (void)
{
  g_autofree PbUsbipDeviceRecord *b = make_record_b ();
  g_autofree PbUsbipDeviceRecord *decoded = g_new0 (PbUsbipDeviceRecord, 1);
  g_autoptr(GBytes) ok = NULL;
  g_autoptr(GBytes) busy = NULL;
  g_autoptr(GError) error = NULL;
  PbUsbipOpHeader header;

  /* The interfaces of B are not part of an import reply. */
  ok = pb_usbip_rep_import_encode (PB_USBIP_ST_OK, b, &error);
  g_assert_no_error (error);
  g_assert_cmpmem (g_bytes_get_data (ok, NULL), g_bytes_get_size (ok), golden_rep_import_ok,
                   sizeof golden_rep_import_ok);

  busy = pb_usbip_rep_import_encode (PB_USBIP_ST_DEV_BUSY, NULL, &error);
  g_assert_no_error (error);
  g_assert_cmpmem (g_bytes_get_data (busy, NULL), g_bytes_get_size (busy), golden_rep_import_busy,
                   sizeof golden_rep_import_busy);

  g_assert_true (pb_usbip_op_header_decode (golden_rep_import_ok, sizeof golden_rep_import_ok, &header, &error));
  g_assert_cmphex (header.code, ==, PB_USBIP_OP_REP_IMPORT);
  g_assert_cmpuint (header.status, ==, PB_USBIP_ST_OK);
  g_assert_true (pb_usbip_device_record_decode (golden_rep_import_ok + 8, sizeof golden_rep_import_ok - 8, decoded,
                                                &error));
  g_assert_no_error (error);
  g_assert_cmpstr (decoded->busid, ==, "3-1.4");
  g_assert_cmpuint (decoded->busnum, ==, 3);
  g_assert_cmpuint (decoded->devnum, ==, 17);
  g_assert_cmpuint (decoded->speed, ==, PB_USBIP_SPEED_SUPER);

  /* Round trip. */
  {
    g_autoptr(GBytes) again = pb_usbip_rep_import_encode (PB_USBIP_ST_OK, decoded, &error);
    g_assert_no_error (error);
    g_assert_true (g_bytes_equal (again, ok));
  }

  g_assert_true (pb_usbip_op_header_decode (golden_rep_import_busy, sizeof golden_rep_import_busy, &header, &error));
  g_assert_cmphex (header.code, ==, PB_USBIP_OP_REP_IMPORT);
  g_assert_cmpuint (header.status, ==, PB_USBIP_ST_DEV_BUSY);
  g_assert_cmpstr (pb_usbip_op_status_to_string (header.status), ==, "device busy");

  assert_truncations_fail (decode_rep_import, golden_rep_import_ok, sizeof golden_rep_import_ok);
  assert_truncations_fail (decode_rep_import, golden_rep_import_busy, sizeof golden_rep_import_busy);
}

/* ---- URB phase ---- */

static void
test_cmd_submit_control_in (void)
{
  PbUsbipUrbHeader header = {
    .command = PB_USBIP_CMD_SUBMIT,
    .seqnum = 42,
    .devid = 3 << 16 | 17,
    .direction = PB_USBIP_DIR_IN,
    .ep = 0,
    .u.cmd_submit = {
      .transfer_flags = PB_USBIP_URB_DIR_IN,
      .transfer_buffer_length = 18,
      .setup = { 0x80, 0x06, 0x00, 0x01, 0x00, 0x00, 0x12, 0x00 },
    },
  };
  PbUsbipUrbHeader decoded;
  guint8 out[PB_USBIP_URB_HEADER_SIZE];
  g_autoptr(GError) error = NULL;

  pb_usbip_urb_header_encode (&header, out);
  g_assert_cmpmem (out, sizeof out, golden_cmd_submit_control_in, sizeof golden_cmd_submit_control_in);

  g_assert_true (pb_usbip_urb_header_decode (golden_cmd_submit_control_in, sizeof golden_cmd_submit_control_in,
                                             &decoded, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (decoded.command, ==, PB_USBIP_CMD_SUBMIT);
  g_assert_cmpuint (decoded.seqnum, ==, 42);
  g_assert_cmphex (decoded.devid, ==, 0x00030011);
  g_assert_cmpuint (decoded.direction, ==, PB_USBIP_DIR_IN);
  g_assert_cmpuint (decoded.ep, ==, 0);
  g_assert_cmphex (decoded.u.cmd_submit.transfer_flags, ==, 0x200);
  g_assert_cmpuint (decoded.u.cmd_submit.transfer_buffer_length, ==, 18);
  g_assert_cmpint (decoded.u.cmd_submit.start_frame, ==, 0);
  g_assert_cmpint (decoded.u.cmd_submit.number_of_packets, ==, 0);
  g_assert_cmpint (decoded.u.cmd_submit.interval, ==, 0);
  g_assert_cmpmem (decoded.u.cmd_submit.setup, 8, ((const guint8[]) { 0x80, 0x06, 0x00, 0x01, 0x00, 0x00, 0x12, 0x00 }),
                   8);
  g_assert_true (pb_usbip_cmd_submit_validate (&decoded, FALSE, PB_USBIP_MAX_TRANSFER_LENGTH, &error));
  g_assert_no_error (error);
  /* IN: no data follows the request. */
  g_assert_cmpuint (pb_usbip_urb_payload_length (&decoded), ==, 0);

  assert_urb_header_round_trip (golden_cmd_submit_control_in);
  assert_truncations_fail (decode_urb_header, golden_cmd_submit_control_in, sizeof golden_cmd_submit_control_in);
}

static void
test_cmd_submit_bulk_out (void)
{
  PbUsbipUrbHeader header = {
    .command = PB_USBIP_CMD_SUBMIT,
    .seqnum = 43,
    .devid = 0x00030011,
    .direction = PB_USBIP_DIR_OUT,
    .ep = 2,
    .u.cmd_submit = {
      .transfer_buffer_length = 31,
      .number_of_packets = -1,
    },
  };
  PbUsbipUrbHeader decoded;
  guint8 out[PB_USBIP_URB_HEADER_SIZE];
  g_autoptr(GError) error = NULL;
  guint32 payload;

  pb_usbip_urb_header_encode (&header, out);
  g_assert_cmpmem (out, sizeof out, golden_cmd_submit_bulk_out, PB_USBIP_URB_HEADER_SIZE);

  /* The decoder reads the header only, whatever follows. */
  g_assert_true (pb_usbip_urb_header_decode (golden_cmd_submit_bulk_out, sizeof golden_cmd_submit_bulk_out, &decoded,
                                             &error));
  g_assert_no_error (error);
  g_assert_cmpuint (decoded.command, ==, PB_USBIP_CMD_SUBMIT);
  g_assert_cmpuint (decoded.seqnum, ==, 43);
  g_assert_cmpuint (decoded.direction, ==, PB_USBIP_DIR_OUT);
  g_assert_cmpuint (decoded.ep, ==, 2);
  g_assert_cmphex (decoded.u.cmd_submit.transfer_flags, ==, 0);
  g_assert_cmpuint (decoded.u.cmd_submit.transfer_buffer_length, ==, 31);
  g_assert_cmpint (decoded.u.cmd_submit.number_of_packets, ==, -1);
  /* 0xffffffff packets on a non-iso transfer: ignored. */
  g_assert_true (pb_usbip_cmd_submit_validate (&decoded, FALSE, PB_USBIP_MAX_TRANSFER_LENGTH, &error));
  g_assert_no_error (error);

  payload = pb_usbip_urb_payload_length (&decoded);
  g_assert_cmpuint (payload, ==, 31);
  g_assert_cmpuint (PB_USBIP_URB_HEADER_SIZE + payload, ==, sizeof golden_cmd_submit_bulk_out);
  g_assert_cmpmem (golden_cmd_submit_bulk_out + PB_USBIP_URB_HEADER_SIZE, 4, "USBC", 4);

  assert_urb_header_round_trip (golden_cmd_submit_bulk_out);
  assert_truncations_fail (decode_urb_header, golden_cmd_submit_bulk_out, PB_USBIP_URB_HEADER_SIZE);
}

static void
test_ret_submit (void)
{
  PbUsbipUrbHeader header = {
    .command = PB_USBIP_RET_SUBMIT,
    .seqnum = 42,
    .u.ret_submit = { .actual_length = 18 },
  };
  PbUsbipUrbHeader decoded;
  guint8 out[PB_USBIP_URB_HEADER_SIZE];
  g_autoptr(GError) error = NULL;

  pb_usbip_urb_header_encode (&header, out);
  g_assert_cmpmem (out, sizeof out, golden_ret_submit_in, PB_USBIP_URB_HEADER_SIZE);

  g_assert_true (pb_usbip_urb_header_decode (golden_ret_submit_in, sizeof golden_ret_submit_in, &decoded, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (decoded.command, ==, PB_USBIP_RET_SUBMIT);
  g_assert_cmpuint (decoded.seqnum, ==, 42);
  g_assert_cmpuint (decoded.devid, ==, 0);
  g_assert_cmpuint (decoded.direction, ==, 0);
  g_assert_cmpint (decoded.u.ret_submit.status, ==, 0);
  g_assert_cmpuint (decoded.u.ret_submit.actual_length, ==, 18);
  g_assert_cmpint (decoded.u.ret_submit.number_of_packets, ==, 0);
  g_assert_cmpint (decoded.u.ret_submit.error_count, ==, 0);
  /* The server zeroed direction: no payload until the client applies its own request's. */
  g_assert_cmpuint (pb_usbip_urb_payload_length (&decoded), ==, 0);
  decoded.direction = PB_USBIP_DIR_IN;
  g_assert_cmpuint (pb_usbip_urb_payload_length (&decoded), ==, 18);
  g_assert_cmpuint (PB_USBIP_URB_HEADER_SIZE + 18, ==, sizeof golden_ret_submit_in);
  /* An OUT completion reports what was written but carries nothing. */
  decoded.direction = PB_USBIP_DIR_OUT;
  g_assert_cmpuint (pb_usbip_urb_payload_length (&decoded), ==, 0);

  assert_urb_header_round_trip (golden_ret_submit_in);
  assert_truncations_fail (decode_urb_header, golden_ret_submit_in, PB_USBIP_URB_HEADER_SIZE);

  /* A stall: negative errno. */
  header = (PbUsbipUrbHeader) {
    .command = PB_USBIP_RET_SUBMIT,
    .seqnum = 45,
    .devid = 0x00030011,
    .direction = PB_USBIP_DIR_IN,
    .ep = 1,
    .u.ret_submit = { .status = -32 },
  };
  pb_usbip_urb_header_encode (&header, out);
  g_assert_cmpmem (out, sizeof out, golden_ret_submit_stall, sizeof golden_ret_submit_stall);
  g_assert_true (pb_usbip_urb_header_decode (golden_ret_submit_stall, sizeof golden_ret_submit_stall, &decoded,
                                             &error));
  g_assert_cmpint (decoded.u.ret_submit.status, ==, -32);
  g_assert_cmpuint (decoded.ep, ==, 1);
  g_assert_cmpuint (pb_usbip_urb_payload_length (&decoded), ==, 0);
  assert_urb_header_round_trip (golden_ret_submit_stall);
}

static void
test_unlink (void)
{
  PbUsbipUrbHeader cmd = {
    .command = PB_USBIP_CMD_UNLINK,
    .seqnum = 44,
    .devid = 0x00030011,
    .ep = 2,
    .u.cmd_unlink = { .unlink_seqnum = 43 },
  };
  PbUsbipUrbHeader ret = {
    .command = PB_USBIP_RET_UNLINK,
    .seqnum = 44,
    .u.ret_unlink = { .status = -104 },
  };
  PbUsbipUrbHeader decoded;
  guint8 out[PB_USBIP_URB_HEADER_SIZE];
  guint8 noisy[PB_USBIP_URB_HEADER_SIZE];
  g_autoptr(GError) error = NULL;

  pb_usbip_urb_header_encode (&cmd, out);
  g_assert_cmpmem (out, sizeof out, golden_cmd_unlink, sizeof golden_cmd_unlink);
  g_assert_true (pb_usbip_urb_header_decode (golden_cmd_unlink, sizeof golden_cmd_unlink, &decoded, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (decoded.command, ==, PB_USBIP_CMD_UNLINK);
  g_assert_cmpuint (decoded.seqnum, ==, 44);
  g_assert_cmpuint (decoded.ep, ==, 2);
  g_assert_cmpuint (decoded.u.cmd_unlink.unlink_seqnum, ==, 43);
  g_assert_cmpuint (pb_usbip_urb_payload_length (&decoded), ==, 0);
  assert_urb_header_round_trip (golden_cmd_unlink);
  assert_truncations_fail (decode_urb_header, golden_cmd_unlink, sizeof golden_cmd_unlink);

  pb_usbip_urb_header_encode (&ret, out);
  g_assert_cmpmem (out, sizeof out, golden_ret_unlink, sizeof golden_ret_unlink);
  g_assert_true (pb_usbip_urb_header_decode (golden_ret_unlink, sizeof golden_ret_unlink, &decoded, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (decoded.command, ==, PB_USBIP_RET_UNLINK);
  g_assert_cmpuint (decoded.seqnum, ==, 44);
  g_assert_cmpint (decoded.u.ret_unlink.status, ==, -104);
  g_assert_cmpuint (pb_usbip_urb_payload_length (&decoded), ==, 0);
  assert_urb_header_round_trip (golden_ret_unlink);
  assert_truncations_fail (decode_urb_header, golden_ret_unlink, sizeof golden_ret_unlink);

  /* Garbage in the padding is ignored, and the encoder writes zeros there. */
  memcpy (noisy, golden_cmd_unlink, sizeof noisy);
  memset (noisy + 24, 0x5a, 24);
  g_assert_true (pb_usbip_urb_header_decode (noisy, sizeof noisy, &decoded, &error));
  g_assert_cmpuint (decoded.u.cmd_unlink.unlink_seqnum, ==, 43);
  pb_usbip_urb_header_encode (&decoded, out);
  g_assert_cmpmem (out, sizeof out, golden_cmd_unlink, sizeof golden_cmd_unlink);
}

static void
test_urb_header_rejects (void)
{
  static const guint32 bad_commands[] = { 0, 5, 0x80000001, 0xffffffff, 0x01000000 };
  static const guint32 bad_directions[] = { 2, 0x100, 0xffffffff };
  guint8 buf[PB_USBIP_URB_HEADER_SIZE];
  PbUsbipUrbHeader decoded;

  for (guint i = 0; i < G_N_ELEMENTS (bad_commands); i++)
    {
      g_autoptr(GError) error = NULL;
      g_autofree char *expected = g_strdup_printf ("unknown USB/IP command 0x%08x", bad_commands[i]);

      memcpy (buf, golden_cmd_submit_control_in, sizeof buf);
      pb_write_be32 (buf, bad_commands[i]);
      g_assert_false (pb_usbip_urb_header_decode (buf, sizeof buf, &decoded, &error));
      g_assert_error (error, PB_ERROR, PB_ERROR_PROTOCOL);
      g_assert_cmpstr (error->message, ==, expected);
    }

  /* Every command, not just CMD_SUBMIT. */
  for (guint command = PB_USBIP_CMD_SUBMIT; command <= PB_USBIP_RET_UNLINK; command++)
    for (guint i = 0; i < G_N_ELEMENTS (bad_directions); i++)
      {
        g_autoptr(GError) error = NULL;

        memcpy (buf, golden_cmd_submit_control_in, sizeof buf);
        pb_write_be32 (buf, command);
        pb_write_be32 (buf + 12, bad_directions[i]);
        g_assert_false (pb_usbip_urb_header_decode (buf, sizeof buf, &decoded, &error));
        g_assert_error (error, PB_ERROR, PB_ERROR_PROTOCOL);
        g_assert_nonnull (strstr (error->message, "direction"));
      }
}

static gboolean
validate_golden (const guint8 *golden, gsize len, gboolean is_iso, guint32 max_length, GError **error)
{
  PbUsbipUrbHeader header;

  g_assert_true (pb_usbip_urb_header_decode (golden, len, &header, NULL));
  return pb_usbip_cmd_submit_validate (&header, is_iso, max_length, error);
}

static void
test_cmd_submit_validate (void)
{
  guint8 buf[PB_USBIP_URB_HEADER_SIZE];
  g_autoptr(GError) error = NULL;

  /* ep 15 is the last one; 16 is out of range. */
  memcpy (buf, golden_cmd_submit_control_in, sizeof buf);
  pb_write_be32 (buf + 16, 15);
  g_assert_true (validate_golden (buf, sizeof buf, FALSE, PB_USBIP_MAX_TRANSFER_LENGTH, &error));
  g_assert_no_error (error);
  pb_write_be32 (buf + 16, 16);
  g_assert_false (validate_golden (buf, sizeof buf, FALSE, PB_USBIP_MAX_TRANSFER_LENGTH, &error));
  g_assert_error (error, PB_ERROR, PB_ERROR_PROTOCOL);
  g_clear_error (&error);
  pb_write_be32 (buf + 16, 0x80000001);
  g_assert_false (validate_golden (buf, sizeof buf, FALSE, PB_USBIP_MAX_TRANSFER_LENGTH, &error));
  g_assert_error (error, PB_ERROR, PB_ERROR_PROTOCOL);
  g_clear_error (&error);

  /* Exactly at the cap passes; one over, and 0xffffffff, do not. */
  memcpy (buf, golden_cmd_submit_bulk_out, sizeof buf);
  pb_write_be32 (buf + 24, 16u * 1024 * 1024);
  g_assert_true (validate_golden (buf, sizeof buf, FALSE, PB_USBIP_MAX_TRANSFER_LENGTH, &error));
  g_assert_no_error (error);
  pb_write_be32 (buf + 24, 16u * 1024 * 1024 + 1);
  g_assert_false (validate_golden (buf, sizeof buf, FALSE, PB_USBIP_MAX_TRANSFER_LENGTH, &error));
  g_assert_error (error, PB_ERROR, PB_ERROR_TOO_LARGE);
  g_assert_cmpstr (error->message, ==, "transfer length 16777217 exceeds the 16777216-byte limit");
  g_clear_error (&error);
  pb_write_be32 (buf + 24, 0xffffffff);
  g_assert_false (validate_golden (buf, sizeof buf, FALSE, PB_USBIP_MAX_TRANSFER_LENGTH, &error));
  g_assert_error (error, PB_ERROR, PB_ERROR_TOO_LARGE);
  g_assert_cmpstr (error->message, ==, "transfer length 4294967295 exceeds the 16777216-byte limit");
  g_clear_error (&error);
  /* The caller's own smaller cap. */
  pb_write_be32 (buf + 24, 4097);
  g_assert_false (validate_golden (buf, sizeof buf, FALSE, 4096, &error));
  g_assert_error (error, PB_ERROR, PB_ERROR_TOO_LARGE);
  g_clear_error (&error);
  pb_write_be32 (buf + 24, 0);
  g_assert_true (validate_golden (buf, sizeof buf, FALSE, 4096, &error));
  g_assert_no_error (error);

  /* Only CMD_SUBMIT is a submission. */
  g_assert_false (validate_golden (golden_ret_submit_stall, sizeof golden_ret_submit_stall, FALSE,
                                   PB_USBIP_MAX_TRANSFER_LENGTH, &error));
  g_assert_error (error, PB_ERROR, PB_ERROR_PROTOCOL);
}

static void
test_cmd_submit_validate_packets (void)
{
  static const struct {
    guint32 wire;
    gboolean iso_ok;
    gint code; /* when rejected as iso */
  } cases[] = {
    { 0, FALSE, PB_ERROR_PROTOCOL },
    { 1, TRUE, 0 },
    { 3, TRUE, 0 },
    { 1024, TRUE, 0 },
    { 1025, FALSE, PB_ERROR_TOO_LARGE },
    { 0x7fffffff, FALSE, PB_ERROR_TOO_LARGE },
    { 0xffffffff, FALSE, PB_ERROR_PROTOCOL }, /* -1 */
    { 0x80000000, FALSE, PB_ERROR_PROTOCOL }, /* INT32_MIN */
  };
  guint8 buf[PB_USBIP_URB_HEADER_SIZE];

  for (guint i = 0; i < G_N_ELEMENTS (cases); i++)
    {
      g_autoptr(GError) error = NULL;

      memcpy (buf, golden_cmd_submit_iso, sizeof buf);
      pb_write_be32 (buf + 32, cases[i].wire);
      g_assert_cmpint (validate_golden (buf, sizeof buf, TRUE, PB_USBIP_MAX_TRANSFER_LENGTH, &error), ==,
                       cases[i].iso_ok);
      if (cases[i].iso_ok)
        g_assert_no_error (error);
      else
        g_assert_error (error, PB_ERROR, cases[i].code);
      g_clear_error (&error);

      /* Whatever the count, a non-iso transfer ignores it. */
      g_assert_true (validate_golden (buf, sizeof buf, FALSE, PB_USBIP_MAX_TRANSFER_LENGTH, &error));
      g_assert_no_error (error);
    }
}

static void
test_iso_packets (void)
{
  static const PbUsbipIsoPacket packets[3] = {
    { .offset = 0, .length = 192, .actual_length = 192, .status = 0 },
    { .offset = 192, .length = 192, .actual_length = 180, .status = 0 },
    { .offset = 384, .length = 192, .actual_length = 0, .status = -18 },
  };
  PbUsbipIsoPacket decoded[3];
  PbUsbipUrbHeader header;
  guint8 out[3 * PB_USBIP_ISO_PACKET_SIZE];
  g_autoptr(GError) error = NULL;

  pb_usbip_iso_packets_encode (packets, 3, out);
  g_assert_cmpmem (out, sizeof out, golden_iso, sizeof golden_iso);

  /* The request that announces them. */
  g_assert_true (pb_usbip_urb_header_decode (golden_cmd_submit_iso, sizeof golden_cmd_submit_iso, &header, &error));
  g_assert_no_error (error);
  g_assert_cmphex (header.u.cmd_submit.transfer_flags, ==, PB_USBIP_URB_DIR_IN | PB_USBIP_URB_ISO_ASAP);
  g_assert_cmpuint (header.u.cmd_submit.transfer_buffer_length, ==, 576);
  g_assert_cmpint (header.u.cmd_submit.start_frame, ==, 0x1234);
  g_assert_cmpint (header.u.cmd_submit.number_of_packets, ==, 3);
  g_assert_cmpint (header.u.cmd_submit.interval, ==, 1);
  g_assert_true (pb_usbip_cmd_submit_validate (&header, TRUE, PB_USBIP_MAX_TRANSFER_LENGTH, &error));
  g_assert_no_error (error);
  assert_urb_header_round_trip (golden_cmd_submit_iso);

  g_assert_true (pb_usbip_iso_packets_decode (golden_iso, sizeof golden_iso, header.u.cmd_submit.number_of_packets,
                                              header.u.cmd_submit.transfer_buffer_length, decoded, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (decoded[0].offset, ==, 0);
  g_assert_cmpuint (decoded[0].length, ==, 192);
  g_assert_cmpuint (decoded[0].actual_length, ==, 192);
  g_assert_cmpint (decoded[0].status, ==, 0);
  g_assert_cmpuint (decoded[1].offset, ==, 192);
  g_assert_cmpuint (decoded[1].actual_length, ==, 180);
  g_assert_cmpuint (decoded[2].offset, ==, 384);
  g_assert_cmpuint (decoded[2].length, ==, 192);
  g_assert_cmpuint (decoded[2].actual_length, ==, 0);
  g_assert_cmpint (decoded[2].status, ==, -18);

  pb_usbip_iso_packets_encode (decoded, 3, out);
  g_assert_cmpmem (out, sizeof out, golden_iso, sizeof golden_iso);

  /* Zero descriptors: nothing to read. */
  g_assert_true (pb_usbip_iso_packets_decode (NULL, 0, 0, 0, NULL, &error));
  g_assert_no_error (error);

  assert_truncations_fail (decode_three_iso, golden_iso, sizeof golden_iso);
}

static void
test_iso_packets_rejects (void)
{
  guint8 buf[3 * PB_USBIP_ISO_PACKET_SIZE];
  PbUsbipIsoPacket decoded[3];
  g_autofree guint8 *many = g_malloc0 ((PB_USBIP_MAX_ISO_PACKETS + 1) * PB_USBIP_ISO_PACKET_SIZE);
  g_autofree PbUsbipIsoPacket *many_out = g_new (PbUsbipIsoPacket, PB_USBIP_MAX_ISO_PACKETS + 1);
  g_autoptr(GError) error = NULL;

  /* The last packet ends exactly at the buffer's end: fine; one byte less of buffer: not. */
  g_assert_true (pb_usbip_iso_packets_decode (golden_iso, sizeof golden_iso, 3, 576, decoded, &error));
  g_assert_no_error (error);
  g_assert_false (pb_usbip_iso_packets_decode (golden_iso, sizeof golden_iso, 3, 575, decoded, &error));
  g_assert_error (error, PB_ERROR, PB_ERROR_PROTOCOL);
  g_assert_cmpstr (error->message, ==, "isochronous packet 2 (offset 384, length 192) lies beyond the 575-byte buffer");
  g_clear_error (&error);

  /* offset + length wraps in 32 bits (0xfffffff0 + 0x20 = 0x10) but not in 64. */
  memcpy (buf, golden_iso, sizeof buf);
  pb_write_be32 (buf + 16, 0xfffffff0);
  pb_write_be32 (buf + 20, 0x20);
  pb_write_be32 (buf + 24, 0x10);
  g_assert_false (pb_usbip_iso_packets_decode (buf, sizeof buf, 3, 0xffffffff, decoded, &error));
  g_assert_error (error, PB_ERROR, PB_ERROR_PROTOCOL);
  g_clear_error (&error);
  g_assert_false (pb_usbip_iso_packets_decode (buf, sizeof buf, 3, 576, decoded, &error));
  g_assert_error (error, PB_ERROR, PB_ERROR_PROTOCOL);
  g_clear_error (&error);

  /* Both at the maximum. */
  memcpy (buf, golden_iso, sizeof buf);
  pb_write_be32 (buf + 32, 0xffffffff);
  pb_write_be32 (buf + 36, 0xffffffff);
  g_assert_false (pb_usbip_iso_packets_decode (buf, sizeof buf, 3, 0xffffffff, decoded, &error));
  g_assert_error (error, PB_ERROR, PB_ERROR_PROTOCOL);
  g_clear_error (&error);

  /* actual_length > length. */
  memcpy (buf, golden_iso, sizeof buf);
  pb_write_be32 (buf + 24, 193);
  g_assert_false (pb_usbip_iso_packets_decode (buf, sizeof buf, 3, 576, decoded, &error));
  g_assert_error (error, PB_ERROR, PB_ERROR_PROTOCOL);
  g_assert_cmpstr (error->message, ==, "isochronous packet 1 claims 193 bytes of a 192-byte packet");
  g_clear_error (&error);

  /* Over the packet cap, even with the bytes there. */
  g_assert_true (pb_usbip_iso_packets_decode (many, (gsize) PB_USBIP_MAX_ISO_PACKETS * PB_USBIP_ISO_PACKET_SIZE,
                                              PB_USBIP_MAX_ISO_PACKETS, 0, many_out, &error));
  g_assert_no_error (error);
  g_assert_false (pb_usbip_iso_packets_decode (many, (gsize) (PB_USBIP_MAX_ISO_PACKETS + 1) * PB_USBIP_ISO_PACKET_SIZE,
                                               PB_USBIP_MAX_ISO_PACKETS + 1, 0, many_out, &error));
  g_assert_error (error, PB_ERROR, PB_ERROR_TOO_LARGE);
  g_clear_error (&error);
  g_assert_false (pb_usbip_iso_packets_decode (many, 16, G_MAXUINT, 0, many_out, &error));
  g_assert_error (error, PB_ERROR, PB_ERROR_TOO_LARGE);
  g_clear_error (&error);

  /* Count larger than the bytes given. */
  g_assert_false (pb_usbip_iso_packets_decode (golden_iso, sizeof golden_iso, 4, 0xffffffff, many_out, &error));
  g_assert_error (error, PB_ERROR, PB_ERROR_PROTOCOL);
}

static void
test_strings (void)
{
  g_assert_cmpstr (pb_usbip_op_status_to_string (PB_USBIP_ST_OK), ==, "ok");
  g_assert_cmpstr (pb_usbip_op_status_to_string (PB_USBIP_ST_NODEV), ==, "no such device");
  g_assert_cmpstr (pb_usbip_op_status_to_string (0xdeadbeef), ==, "unknown status");
  g_assert_cmpstr (pb_usbip_speed_to_string (PB_USBIP_SPEED_HIGH), ==, "high (480 Mbit/s)");
  g_assert_cmpstr (pb_usbip_speed_to_string (PB_USBIP_SPEED_UNKNOWN), ==, "unknown");
  g_assert_cmpstr (pb_usbip_speed_to_string (77), ==, "unknown");
  for (guint i = 0; i < 8; i++)
    {
      g_assert_nonnull (pb_usbip_op_status_to_string (i));
      g_assert_nonnull (pb_usbip_speed_to_string (i));
    }
}

/* The big-endian helpers the tests themselves rely on. */
static void
test_be_helpers (void)
{
  static const guint8 bytes[4] = { 0x12, 0x34, 0x56, 0x78 };
  guint8 out[4];

  g_assert_cmphex (pb_read_be16 (bytes), ==, 0x1234);
  g_assert_cmphex (pb_read_be32 (bytes), ==, 0x12345678);
  pb_write_be32 (out, 0xfedcba98);
  g_assert_cmpmem (out, 4, ((const guint8[]) { 0xfe, 0xdc, 0xba, 0x98 }), 4);
  pb_write_be16 (out, 0xabcd);
  g_assert_cmpmem (out, 2, ((const guint8[]) { 0xab, 0xcd }), 2);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);

  g_test_add_func ("/usbip-wire/be-helpers", test_be_helpers);
  g_test_add_func ("/usbip-wire/op-header", test_op_header);
  g_test_add_func ("/usbip-wire/op-header/bad-version", test_op_header_bad_version);
  g_test_add_func ("/usbip-wire/device-record", test_device_record);
  g_test_add_func ("/usbip-wire/device-record/full-fields", test_device_record_full_fields);
  g_test_add_func ("/usbip-wire/interface-record", test_interface_record);
  g_test_add_func ("/usbip-wire/rep-devlist", test_rep_devlist);
  g_test_add_func ("/usbip-wire/rep-devlist/empty-and-errors", test_rep_devlist_empty_and_errors);
  g_test_add_func ("/usbip-wire/req-import", test_req_import);
  g_test_add_func ("/usbip-wire/req-import/encode-limits", test_req_import_encode_limits);
  g_test_add_func ("/usbip-wire/busid/decode-edges", test_busid_decode_edges);
  g_test_add_func ("/usbip-wire/rep-import", test_rep_import);
  g_test_add_func ("/usbip-wire/cmd-submit/control-in", test_cmd_submit_control_in);
  g_test_add_func ("/usbip-wire/cmd-submit/bulk-out", test_cmd_submit_bulk_out);
  g_test_add_func ("/usbip-wire/cmd-submit/validate", test_cmd_submit_validate);
  g_test_add_func ("/usbip-wire/cmd-submit/validate-packets", test_cmd_submit_validate_packets);
  g_test_add_func ("/usbip-wire/ret-submit", test_ret_submit);
  g_test_add_func ("/usbip-wire/unlink", test_unlink);
  g_test_add_func ("/usbip-wire/urb-header/rejects", test_urb_header_rejects);
  g_test_add_func ("/usbip-wire/iso-packets", test_iso_packets);
  g_test_add_func ("/usbip-wire/iso-packets/rejects", test_iso_packets_rejects);
  g_test_add_func ("/usbip-wire/strings", test_strings);

  return g_test_run ();
}
