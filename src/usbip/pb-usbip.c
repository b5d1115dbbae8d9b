/* USB/IP wire codec. Every field is big-endian on the wire; every length the peer controls is
 * checked before it is used. */
#include "pb-usbip.h"

#include <string.h>

static gboolean
need_bytes (gsize len, gsize needed, const char *what, GError **error)
{
  if (len < needed)
    {
      g_set_error (error, PB_ERROR, PB_ERROR_PROTOCOL, "%s truncated: %" G_GSIZE_FORMAT " of %" G_GSIZE_FORMAT " bytes",
                   what, len, needed);
      return FALSE;
    }
  return TRUE;
}

/* ---- management phase ---- */

void
pb_usbip_op_header_encode (guint8 out[PB_USBIP_OP_HEADER_SIZE], guint16 code, guint32 status)
{
  pb_write_be16 (out, PB_USBIP_VERSION);
  pb_write_be16 (out + 2, code);
  pb_write_be32 (out + 4, status);
}

gboolean
pb_usbip_op_header_decode (const guint8 *buf, gsize len, PbUsbipOpHeader *out, GError **error)
{
  if (!need_bytes (len, PB_USBIP_OP_HEADER_SIZE, "USB/IP operation header", error))
    return FALSE;
  out->version = pb_read_be16 (buf);
  out->code = pb_read_be16 (buf + 2);
  out->status = pb_read_be32 (buf + 4);
  if (out->version != PB_USBIP_VERSION)
    {
      g_set_error (error, PB_ERROR, PB_ERROR_VERSION_MISMATCH,
                   "USB/IP version 0x%04x is not supported (expected 0x%04x)", out->version, PB_USBIP_VERSION);
      return FALSE;
    }
  return TRUE;
}

gboolean
pb_usbip_req_import_encode (guint8 out[PB_USBIP_REQ_IMPORT_SIZE], const char *busid, GError **error)
{
  gsize n;

  g_return_val_if_fail (busid != NULL, FALSE);
  n = strlen (busid);
  if (n == 0 || n >= PB_USBIP_BUSID_SIZE)
    {
      g_set_error (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT, "bus ID “%s” must be 1 to %d bytes long", busid,
                   PB_USBIP_BUSID_SIZE - 1);
      return FALSE;
    }
  pb_usbip_op_header_encode (out, PB_USBIP_OP_REQ_IMPORT, 0);
  memset (out + PB_USBIP_OP_HEADER_SIZE, 0, PB_USBIP_BUSID_SIZE);
  memcpy (out + PB_USBIP_OP_HEADER_SIZE, busid, n);
  return TRUE;
}

gboolean
pb_usbip_busid_decode (const guint8 *buf, gsize len, char out[PB_USBIP_BUSID_SIZE + 1], GError **error)
{
  gsize n = 0;

  if (!need_bytes (len, PB_USBIP_BUSID_SIZE, "bus ID", error))
    return FALSE;
  /* Up to the first NUL only: bytes after it may be garbage. */
  while (n < PB_USBIP_BUSID_SIZE && buf[n] != '\0')
    n++;
  if (n == 0)
    {
      g_set_error_literal (error, PB_ERROR, PB_ERROR_PROTOCOL, "empty bus ID");
      return FALSE;
    }
  memcpy (out, buf, n);
  out[n] = '\0';
  return TRUE;
}

static gboolean
encode_string_field (guint8 *out, gsize field_size, const char *value, const char *what, GError **error)
{
  gsize n = strnlen (value, field_size + 1);

  if (n > field_size)
    {
      g_set_error (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT, "%s is longer than %" G_GSIZE_FORMAT " bytes", what,
                   field_size);
      return FALSE;
    }
  memset (out, 0, field_size);
  memcpy (out, value, n);
  return TRUE;
}

gboolean
pb_usbip_device_record_encode (const PbUsbipDeviceRecord *record, guint8 out[PB_USBIP_DEVICE_RECORD_SIZE],
                               GError **error)
{
  guint8 *p = out;

  if (!encode_string_field (p, PB_USBIP_PATH_SIZE, record->path, "device path", error))
    return FALSE;
  p += PB_USBIP_PATH_SIZE;
  if (!encode_string_field (p, PB_USBIP_BUSID_SIZE, record->busid, "bus ID", error))
    return FALSE;
  p += PB_USBIP_BUSID_SIZE;
  pb_write_be32 (p, record->busnum);
  pb_write_be32 (p + 4, record->devnum);
  pb_write_be32 (p + 8, record->speed);
  pb_write_be16 (p + 12, record->id_vendor);
  pb_write_be16 (p + 14, record->id_product);
  pb_write_be16 (p + 16, record->bcd_device);
  p[18] = record->device_class;
  p[19] = record->device_subclass;
  p[20] = record->device_protocol;
  p[21] = record->configuration_value;
  p[22] = record->num_configurations;
  p[23] = record->num_interfaces;
  return TRUE;
}

gboolean
pb_usbip_device_record_decode (const guint8 *buf, gsize len, PbUsbipDeviceRecord *out, GError **error)
{
  const guint8 *p;

  g_return_val_if_fail (out != NULL, FALSE);
  if (!need_bytes (len, PB_USBIP_DEVICE_RECORD_SIZE, "device record", error))
    return FALSE;
  /* Only now: pointer arithmetic past a short buffer is undefined. */
  p = buf + PB_USBIP_PATH_SIZE + PB_USBIP_BUSID_SIZE;
  /* Fields are NUL-padded but may fill their whole width: terminate here. */
  memcpy (out->path, buf, PB_USBIP_PATH_SIZE);
  out->path[PB_USBIP_PATH_SIZE] = '\0';
  memcpy (out->busid, buf + PB_USBIP_PATH_SIZE, PB_USBIP_BUSID_SIZE);
  out->busid[PB_USBIP_BUSID_SIZE] = '\0';
  out->busnum = pb_read_be32 (p);
  out->devnum = pb_read_be32 (p + 4);
  out->speed = pb_read_be32 (p + 8);
  out->id_vendor = pb_read_be16 (p + 12);
  out->id_product = pb_read_be16 (p + 14);
  out->bcd_device = pb_read_be16 (p + 16);
  out->device_class = p[18];
  out->device_subclass = p[19];
  out->device_protocol = p[20];
  out->configuration_value = p[21];
  out->num_configurations = p[22];
  out->num_interfaces = p[23];
  return TRUE;
}

void
pb_usbip_interface_record_encode (const PbUsbipInterfaceRecord *record, guint8 out[PB_USBIP_INTERFACE_RECORD_SIZE])
{
  out[0] = record->interface_class;
  out[1] = record->interface_subclass;
  out[2] = record->interface_protocol;
  out[3] = 0; /* padding */
}

gboolean
pb_usbip_interface_record_decode (const guint8 *buf, gsize len, PbUsbipInterfaceRecord *out, GError **error)
{
  if (!need_bytes (len, PB_USBIP_INTERFACE_RECORD_SIZE, "interface record", error))
    return FALSE;
  out->interface_class = buf[0];
  out->interface_subclass = buf[1];
  out->interface_protocol = buf[2];
  return TRUE;
}

GBytes *
pb_usbip_rep_devlist_encode (const PbUsbipDeviceRecord *const *records, guint n_records, GError **error)
{
  g_autoptr(GByteArray) out = g_byte_array_new ();
  guint8 chunk[PB_USBIP_DEVICE_RECORD_SIZE];

  g_return_val_if_fail (records != NULL || n_records == 0, NULL);
  pb_usbip_op_header_encode (chunk, PB_USBIP_OP_REP_DEVLIST, PB_USBIP_ST_OK);
  pb_write_be32 (chunk + PB_USBIP_OP_HEADER_SIZE, n_records);
  g_byte_array_append (out, chunk, PB_USBIP_OP_HEADER_SIZE + 4);
  for (guint i = 0; i < n_records; i++)
    {
      if (!pb_usbip_device_record_encode (records[i], chunk, error))
        {
          g_prefix_error (error, "device %u of %u: ", i + 1, n_records);
          return NULL;
        }
      g_byte_array_append (out, chunk, PB_USBIP_DEVICE_RECORD_SIZE);
      for (guint j = 0; j < records[i]->num_interfaces; j++)
        {
          pb_usbip_interface_record_encode (&records[i]->interfaces[j], chunk);
          g_byte_array_append (out, chunk, PB_USBIP_INTERFACE_RECORD_SIZE);
        }
    }
  return g_byte_array_free_to_bytes (g_steal_pointer (&out));
}

GBytes *
pb_usbip_rep_import_encode (PbUsbipOpStatus status, const PbUsbipDeviceRecord *record, GError **error)
{
  guint8 out[PB_USBIP_OP_HEADER_SIZE + PB_USBIP_DEVICE_RECORD_SIZE];

  pb_usbip_op_header_encode (out, PB_USBIP_OP_REP_IMPORT, status);
  if (status != PB_USBIP_ST_OK)
    return g_bytes_new (out, PB_USBIP_OP_HEADER_SIZE);
  g_return_val_if_fail (record != NULL, NULL);
  if (!pb_usbip_device_record_encode (record, out + PB_USBIP_OP_HEADER_SIZE, error))
    return NULL;
  return g_bytes_new (out, sizeof out);
}

/* ---- URB phase ---- */

void
pb_usbip_urb_header_encode (const PbUsbipUrbHeader *header, guint8 out[PB_USBIP_URB_HEADER_SIZE])
{
  guint8 *p = out + 20;

  memset (out, 0, PB_USBIP_URB_HEADER_SIZE);
  pb_write_be32 (out, header->command);
  pb_write_be32 (out + 4, header->seqnum);
  pb_write_be32 (out + 8, header->devid);
  pb_write_be32 (out + 12, header->direction);
  pb_write_be32 (out + 16, header->ep);
  switch (header->command)
    {
    case PB_USBIP_CMD_SUBMIT:
      pb_write_be32 (p, header->u.cmd_submit.transfer_flags);
      pb_write_be32 (p + 4, header->u.cmd_submit.transfer_buffer_length);
      pb_write_be32 (p + 8, (guint32) header->u.cmd_submit.start_frame);
      pb_write_be32 (p + 12, (guint32) header->u.cmd_submit.number_of_packets);
      pb_write_be32 (p + 16, (guint32) header->u.cmd_submit.interval);
      memcpy (p + 20, header->u.cmd_submit.setup, 8);
      break;
    case PB_USBIP_RET_SUBMIT:
      pb_write_be32 (p, (guint32) header->u.ret_submit.status);
      pb_write_be32 (p + 4, header->u.ret_submit.actual_length);
      pb_write_be32 (p + 8, (guint32) header->u.ret_submit.start_frame);
      pb_write_be32 (p + 12, (guint32) header->u.ret_submit.number_of_packets);
      pb_write_be32 (p + 16, (guint32) header->u.ret_submit.error_count);
      break;
    case PB_USBIP_CMD_UNLINK:
      pb_write_be32 (p, header->u.cmd_unlink.unlink_seqnum);
      break;
    case PB_USBIP_RET_UNLINK:
      pb_write_be32 (p, (guint32) header->u.ret_unlink.status);
      break;
    default:
      break;
    }
}

gboolean
pb_usbip_urb_header_decode (const guint8 *buf, gsize len, PbUsbipUrbHeader *out, GError **error)
{
  const guint8 *p;

  g_return_val_if_fail (out != NULL, FALSE);
  if (!need_bytes (len, PB_USBIP_URB_HEADER_SIZE, "URB header", error))
    return FALSE;
  p = buf + 20;
  memset (out, 0, sizeof *out);
  out->command = pb_read_be32 (buf);
  out->seqnum = pb_read_be32 (buf + 4);
  out->devid = pb_read_be32 (buf + 8);
  out->direction = pb_read_be32 (buf + 12);
  out->ep = pb_read_be32 (buf + 16);

  switch (out->command)
    {
    case PB_USBIP_CMD_SUBMIT:
      out->u.cmd_submit.transfer_flags = pb_read_be32 (p);
      out->u.cmd_submit.transfer_buffer_length = pb_read_be32 (p + 4);
      out->u.cmd_submit.start_frame = (gint32) pb_read_be32 (p + 8);
      out->u.cmd_submit.number_of_packets = (gint32) pb_read_be32 (p + 12);
      out->u.cmd_submit.interval = (gint32) pb_read_be32 (p + 16);
      memcpy (out->u.cmd_submit.setup, p + 20, 8);
      break;
    case PB_USBIP_RET_SUBMIT:
      out->u.ret_submit.status = (gint32) pb_read_be32 (p);
      out->u.ret_submit.actual_length = pb_read_be32 (p + 4);
      out->u.ret_submit.start_frame = (gint32) pb_read_be32 (p + 8);
      out->u.ret_submit.number_of_packets = (gint32) pb_read_be32 (p + 12);
      out->u.ret_submit.error_count = (gint32) pb_read_be32 (p + 16);
      break;
    case PB_USBIP_CMD_UNLINK:
      out->u.cmd_unlink.unlink_seqnum = pb_read_be32 (p);
      break;
    case PB_USBIP_RET_UNLINK:
      out->u.ret_unlink.status = (gint32) pb_read_be32 (p);
      break;
    default:
      g_set_error (error, PB_ERROR, PB_ERROR_PROTOCOL, "unknown USB/IP command 0x%08x", out->command);
      return FALSE;
    }
  /* Unlink replies and RET_* from servers that zero the base fields carry direction 0. */
  if (out->direction > PB_USBIP_DIR_IN)
    {
      g_set_error (error, PB_ERROR, PB_ERROR_PROTOCOL, "invalid direction %u", out->direction);
      return FALSE;
    }
  return TRUE;
}

gboolean
pb_usbip_cmd_submit_validate (const PbUsbipUrbHeader *header, gboolean is_iso, guint32 max_length, GError **error)
{
  guint32 length = header->u.cmd_submit.transfer_buffer_length;
  gint32 packets = header->u.cmd_submit.number_of_packets;

  if (header->command != PB_USBIP_CMD_SUBMIT)
    {
      g_set_error (error, PB_ERROR, PB_ERROR_PROTOCOL, "command %u is not CMD_SUBMIT", header->command);
      return FALSE;
    }
  if (header->ep > 15)
    {
      g_set_error (error, PB_ERROR, PB_ERROR_PROTOCOL, "endpoint %u out of range (0..15)", header->ep);
      return FALSE;
    }
  if (header->direction > PB_USBIP_DIR_IN)
    {
      g_set_error (error, PB_ERROR, PB_ERROR_PROTOCOL, "invalid direction %u", header->direction);
      return FALSE;
    }
  if (length > max_length)
    {
      g_set_error (error, PB_ERROR, PB_ERROR_TOO_LARGE, "transfer length %u exceeds the %u-byte limit", length,
                   max_length);
      return FALSE;
    }
  if (is_iso && (packets < 1 || packets > PB_USBIP_MAX_ISO_PACKETS))
    {
      g_set_error (error, PB_ERROR, packets > PB_USBIP_MAX_ISO_PACKETS ? PB_ERROR_TOO_LARGE : PB_ERROR_PROTOCOL,
                   "isochronous packet count %d out of range (1..%d)", packets, PB_USBIP_MAX_ISO_PACKETS);
      return FALSE;
    }
  return TRUE;
}

guint32
pb_usbip_urb_payload_length (const PbUsbipUrbHeader *header)
{
  if (header->command == PB_USBIP_CMD_SUBMIT && header->direction == PB_USBIP_DIR_OUT)
    return header->u.cmd_submit.transfer_buffer_length;
  if (header->command == PB_USBIP_RET_SUBMIT && header->direction == PB_USBIP_DIR_IN)
    return header->u.ret_submit.actual_length;
  return 0;
}

void
pb_usbip_iso_packets_encode (const PbUsbipIsoPacket *packets, guint n, guint8 *out)
{
  for (guint i = 0; i < n; i++)
    {
      guint8 *p = out + (gsize) i * PB_USBIP_ISO_PACKET_SIZE;
      pb_write_be32 (p, packets[i].offset);
      pb_write_be32 (p + 4, packets[i].length);
      pb_write_be32 (p + 8, packets[i].actual_length);
      pb_write_be32 (p + 12, (guint32) packets[i].status);
    }
}

gboolean
pb_usbip_iso_packets_decode (const guint8 *buf, gsize len, guint n, guint32 buffer_length, PbUsbipIsoPacket *out,
                             GError **error)
{
  if (n > PB_USBIP_MAX_ISO_PACKETS)
    {
      g_set_error (error, PB_ERROR, PB_ERROR_TOO_LARGE, "%u isochronous packets exceed the limit of %d", n,
                   PB_USBIP_MAX_ISO_PACKETS);
      return FALSE;
    }
  if (!need_bytes (len, (gsize) n * PB_USBIP_ISO_PACKET_SIZE, "isochronous descriptors", error))
    return FALSE;
  for (guint i = 0; i < n; i++)
    {
      const guint8 *p = buf + (gsize) i * PB_USBIP_ISO_PACKET_SIZE;
      PbUsbipIsoPacket packet = {
        .offset = pb_read_be32 (p),
        .length = pb_read_be32 (p + 4),
        .actual_length = pb_read_be32 (p + 8),
        .status = (gint32) pb_read_be32 (p + 12),
      };
      if ((guint64) packet.offset + packet.length > buffer_length)
        {
          g_set_error (error, PB_ERROR, PB_ERROR_PROTOCOL,
                       "isochronous packet %u (offset %u, length %u) lies beyond the %u-byte buffer", i,
                       packet.offset, packet.length, buffer_length);
          return FALSE;
        }
      if (packet.actual_length > packet.length)
        {
          g_set_error (error, PB_ERROR, PB_ERROR_PROTOCOL,
                       "isochronous packet %u claims %u bytes of a %u-byte packet", i, packet.actual_length,
                       packet.length);
          return FALSE;
        }
      out[i] = packet;
    }
  return TRUE;
}

const char *
pb_usbip_op_status_to_string (guint32 status)
{
  switch (status)
    {
    case PB_USBIP_ST_OK: return "ok";
    case PB_USBIP_ST_NA: return "not available";
    case PB_USBIP_ST_DEV_BUSY: return "device busy";
    case PB_USBIP_ST_DEV_ERR: return "device error";
    case PB_USBIP_ST_NODEV: return "no such device";
    case PB_USBIP_ST_ERROR: return "error";
    default: return "unknown status";
    }
}

const char *
pb_usbip_speed_to_string (guint32 speed)
{
  switch (speed)
    {
    case PB_USBIP_SPEED_LOW: return "low (1.5 Mbit/s)";
    case PB_USBIP_SPEED_FULL: return "full (12 Mbit/s)";
    case PB_USBIP_SPEED_HIGH: return "high (480 Mbit/s)";
    case PB_USBIP_SPEED_WIRELESS: return "wireless";
    case PB_USBIP_SPEED_SUPER: return "super (5 Gbit/s)";
    case PB_USBIP_SPEED_SUPER_PLUS: return "super-plus (10 Gbit/s)";
    default: return "unknown";
    }
}
