/* libFuzzer target for the USB/IP wire codec. Input: one flags byte, then bytes as a peer would
 * send them. Every decoder runs over them, alone and as a client or server would chain them;
 * whatever decodes is encoded again and must decode to the same values.
 *
 * flags bit 0: treat CMD_SUBMIT/RET_SUBMIT in the URB stream as isochronous
 * flags bit 1: announce one iso descriptor more than the bytes hold (truncation path)
 * flags bit 2: announce more iso descriptors than the cap allows */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pb-usbip.h"

#define CHECK(cond) \
  do { if (!(cond)) abort (); } while (0)

static void
check_record_equal (const PbUsbipDeviceRecord *a, const PbUsbipDeviceRecord *b)
{
  CHECK (strcmp (a->path, b->path) == 0);
  CHECK (strcmp (a->busid, b->busid) == 0);
  CHECK (a->busnum == b->busnum && a->devnum == b->devnum && a->speed == b->speed);
  CHECK (a->id_vendor == b->id_vendor && a->id_product == b->id_product && a->bcd_device == b->bcd_device);
  CHECK (a->device_class == b->device_class && a->device_subclass == b->device_subclass
         && a->device_protocol == b->device_protocol);
  CHECK (a->configuration_value == b->configuration_value && a->num_configurations == b->num_configurations
         && a->num_interfaces == b->num_interfaces);
}

static void
check_interfaces_equal (const PbUsbipDeviceRecord *a, const PbUsbipDeviceRecord *b)
{
  for (guint i = 0; i < a->num_interfaces; i++)
    {
      CHECK (a->interfaces[i].interface_class == b->interfaces[i].interface_class);
      CHECK (a->interfaces[i].interface_subclass == b->interfaces[i].interface_subclass);
      CHECK (a->interfaces[i].interface_protocol == b->interfaces[i].interface_protocol);
    }
}

static void
fuzz_op_header (const guint8 *buf, gsize len)
{
  PbUsbipOpHeader header;
  guint8 out[PB_USBIP_OP_HEADER_SIZE];
  GError *error = NULL;

  if (!pb_usbip_op_header_decode (buf, len, &header, &error))
    {
      CHECK (error != NULL);
      /* A wrong version still reports what was seen. */
      if (g_error_matches (error, PB_ERROR, PB_ERROR_VERSION_MISMATCH))
        CHECK (header.version != PB_USBIP_VERSION && header.version == pb_read_be16 (buf));
      g_clear_error (&error);
      return;
    }
  CHECK (error == NULL);
  pb_usbip_op_header_encode (out, header.code, header.status);
  /* All eight bytes are meaningful: the encoding is the input. */
  CHECK (memcmp (out, buf, sizeof out) == 0);
}

static void
fuzz_busid (const guint8 *buf, gsize len)
{
  char busid[PB_USBIP_BUSID_SIZE + 1];
  char again[PB_USBIP_BUSID_SIZE + 1];
  guint8 out[PB_USBIP_REQ_IMPORT_SIZE];
  GError *error = NULL;
  gsize n;

  if (!pb_usbip_busid_decode (buf, len, busid, &error))
    {
      CHECK (error != NULL);
      g_clear_error (&error);
      return;
    }
  n = strlen (busid);
  CHECK (n >= 1 && n <= PB_USBIP_BUSID_SIZE && memcmp (busid, buf, n) == 0);
  if (!pb_usbip_req_import_encode (out, busid, &error))
    {
      /* Only an unterminated 32-byte ID is accepted but not sent. */
      CHECK (n == PB_USBIP_BUSID_SIZE);
      g_clear_error (&error);
      return;
    }
  CHECK (pb_usbip_busid_decode (out + PB_USBIP_OP_HEADER_SIZE, PB_USBIP_BUSID_SIZE, again, &error));
  CHECK (strcmp (busid, again) == 0);
}

static void
fuzz_device_record (const guint8 *buf, gsize len)
{
  g_autofree PbUsbipDeviceRecord *record = g_new0 (PbUsbipDeviceRecord, 1);
  g_autofree PbUsbipDeviceRecord *again = g_new0 (PbUsbipDeviceRecord, 1);
  guint8 out[PB_USBIP_DEVICE_RECORD_SIZE];
  GError *error = NULL;

  if (!pb_usbip_device_record_decode (buf, len, record, &error))
    {
      CHECK (len < PB_USBIP_DEVICE_RECORD_SIZE && error != NULL);
      g_clear_error (&error);
      return;
    }
  CHECK (strlen (record->path) <= PB_USBIP_PATH_SIZE && strlen (record->busid) <= PB_USBIP_BUSID_SIZE);
  /* Whatever a record holds after decoding fits its fields again. */
  CHECK (pb_usbip_device_record_encode (record, out, &error));
  CHECK (pb_usbip_device_record_decode (out, sizeof out, again, &error));
  check_record_equal (record, again);
  /* Numeric tail is copied verbatim. */
  CHECK (memcmp (out + 288, buf + 288, 24) == 0);
}

static void
fuzz_interface_record (const guint8 *buf, gsize len)
{
  PbUsbipInterfaceRecord record, again;
  guint8 out[PB_USBIP_INTERFACE_RECORD_SIZE];
  GError *error = NULL;

  if (!pb_usbip_interface_record_decode (buf, len, &record, &error))
    {
      CHECK (len < PB_USBIP_INTERFACE_RECORD_SIZE);
      g_clear_error (&error);
      return;
    }
  pb_usbip_interface_record_encode (&record, out);
  CHECK (memcmp (out, buf, 3) == 0 && out[3] == 0);
  CHECK (pb_usbip_interface_record_decode (out, sizeof out, &again, &error));
  CHECK (memcmp (&record, &again, sizeof record) == 0);
}

static gboolean
fuzz_urb_header (const guint8 *buf, gsize len, PbUsbipUrbHeader *header)
{
  PbUsbipUrbHeader again;
  guint8 out[PB_USBIP_URB_HEADER_SIZE];
  GError *error = NULL;

  if (!pb_usbip_urb_header_decode (buf, len, header, &error))
    {
      CHECK (error != NULL);
      g_clear_error (&error);
      return FALSE;
    }
  CHECK (header->command >= PB_USBIP_CMD_SUBMIT && header->command <= PB_USBIP_RET_UNLINK);
  CHECK (header->direction <= PB_USBIP_DIR_IN);
  pb_usbip_urb_header_encode (header, out);
  /* The 20 base bytes are always meaningful. */
  CHECK (memcmp (out, buf, 20) == 0);
  CHECK (pb_usbip_urb_header_decode (out, sizeof out, &again, &error));
  CHECK (memcmp (&again, header, sizeof again) == 0);
  return TRUE;
}

/* Decodes n descriptors, re-encodes them and checks each invariant the decoder promises. */
static gboolean
fuzz_iso (const guint8 *buf, gsize len, guint n, guint32 buffer_length)
{
  g_autofree PbUsbipIsoPacket *packets = NULL;
  g_autofree guint8 *out = NULL;
  GError *error = NULL;

  if (n <= PB_USBIP_MAX_ISO_PACKETS)
    packets = g_new (PbUsbipIsoPacket, n);
  if (!pb_usbip_iso_packets_decode (buf, len, n, buffer_length, packets, &error))
    {
      CHECK (error != NULL);
      g_clear_error (&error);
      return FALSE;
    }
  CHECK (n <= PB_USBIP_MAX_ISO_PACKETS && (gsize) n * PB_USBIP_ISO_PACKET_SIZE <= len);
  for (guint i = 0; i < n; i++)
    {
      CHECK ((guint64) packets[i].offset + packets[i].length <= buffer_length);
      CHECK (packets[i].actual_length <= packets[i].length);
    }
  out = g_malloc ((gsize) n * PB_USBIP_ISO_PACKET_SIZE);
  if (n > 0)
    {
      pb_usbip_iso_packets_encode (packets, n, out);
      CHECK (memcmp (out, buf, (gsize) n * PB_USBIP_ISO_PACKET_SIZE) == 0);
    }
  return TRUE;
}

/* A client reading OP_REP_DEVLIST; stops at the first failure like a client would. */
static void
fuzz_rep_devlist (const guint8 *buf, gsize len)
{
  g_autoptr(GPtrArray) records = g_ptr_array_new_with_free_func (g_free);
  g_autoptr(GBytes) encoded = NULL;
  PbUsbipOpHeader header;
  GError *error = NULL;
  gsize pos = PB_USBIP_OP_HEADER_SIZE + 4;
  guint32 count;

  if (!pb_usbip_op_header_decode (buf, len, &header, &error))
    {
      g_clear_error (&error);
      return;
    }
  if (len < pos)
    return;
  count = pb_read_be32 (buf + PB_USBIP_OP_HEADER_SIZE);
  if (count > PB_USBIP_MAX_DEVLIST_DEVICES)
    return;
  for (guint32 i = 0; i < count; i++)
    {
      g_autofree PbUsbipDeviceRecord *record = g_new0 (PbUsbipDeviceRecord, 1);

      if (!pb_usbip_device_record_decode (buf + pos, len - pos, record, &error))
        {
          g_clear_error (&error);
          return;
        }
      pos += PB_USBIP_DEVICE_RECORD_SIZE;
      for (guint j = 0; j < record->num_interfaces; j++)
        {
          if (!pb_usbip_interface_record_decode (buf + pos, len - pos, &record->interfaces[j], &error))
            {
              g_clear_error (&error);
              return;
            }
          pos += PB_USBIP_INTERFACE_RECORD_SIZE;
        }
      g_ptr_array_add (records, g_steal_pointer (&record));
    }
  CHECK (pos <= len);

  /* Encode what was read and read it back. */
  encoded = pb_usbip_rep_devlist_encode ((const PbUsbipDeviceRecord *const *) records->pdata, records->len, &error);
  CHECK (encoded != NULL && error == NULL);
  {
    gsize size;
    const guint8 *data = g_bytes_get_data (encoded, &size);
    gsize at = PB_USBIP_OP_HEADER_SIZE + 4;

    CHECK (size >= at && pb_read_be32 (data + PB_USBIP_OP_HEADER_SIZE) == records->len);
    CHECK (pb_read_be16 (data + 2) == PB_USBIP_OP_REP_DEVLIST && pb_read_be32 (data + 4) == PB_USBIP_ST_OK);
    for (guint i = 0; i < records->len; i++)
      {
        const PbUsbipDeviceRecord *original = records->pdata[i];
        g_autofree PbUsbipDeviceRecord *again = g_new0 (PbUsbipDeviceRecord, 1);

        CHECK (pb_usbip_device_record_decode (data + at, size - at, again, &error));
        at += PB_USBIP_DEVICE_RECORD_SIZE;
        for (guint j = 0; j < again->num_interfaces; j++)
          {
            CHECK (pb_usbip_interface_record_decode (data + at, size - at, &again->interfaces[j], &error));
            at += PB_USBIP_INTERFACE_RECORD_SIZE;
          }
        check_record_equal (original, again);
        check_interfaces_equal (original, again);
      }
    CHECK (at == size);
  }
}

/* A client reading OP_REP_IMPORT, then a server answering with what it read. */
static void
fuzz_rep_import (const guint8 *buf, gsize len)
{
  g_autofree PbUsbipDeviceRecord *record = g_new0 (PbUsbipDeviceRecord, 1);
  g_autoptr(GBytes) encoded = NULL;
  PbUsbipOpHeader header;
  GError *error = NULL;
  gsize size;
  const guint8 *data;

  if (!pb_usbip_op_header_decode (buf, len, &header, &error))
    {
      g_clear_error (&error);
      return;
    }
  if (header.status != PB_USBIP_ST_OK)
    {
      encoded = pb_usbip_rep_import_encode ((PbUsbipOpStatus) header.status, NULL, &error);
      CHECK (encoded != NULL && g_bytes_get_size (encoded) == PB_USBIP_OP_HEADER_SIZE);
      CHECK (pb_read_be32 ((const guint8 *) g_bytes_get_data (encoded, NULL) + 4) == header.status);
      return;
    }
  if (!pb_usbip_device_record_decode (buf + PB_USBIP_OP_HEADER_SIZE, len - PB_USBIP_OP_HEADER_SIZE, record, &error))
    {
      g_clear_error (&error);
      return;
    }
  encoded = pb_usbip_rep_import_encode (PB_USBIP_ST_OK, record, &error);
  CHECK (encoded != NULL && error == NULL);
  data = g_bytes_get_data (encoded, &size);
  CHECK (size == PB_USBIP_OP_HEADER_SIZE + PB_USBIP_DEVICE_RECORD_SIZE);
  {
    g_autofree PbUsbipDeviceRecord *again = g_new0 (PbUsbipDeviceRecord, 1);
    CHECK (pb_usbip_device_record_decode (data + PB_USBIP_OP_HEADER_SIZE, size - PB_USBIP_OP_HEADER_SIZE, again,
                                          &error));
    check_record_equal (record, again);
  }
}

/* A server (CMD_*) or client (RET_*) reading a stream of URB messages as a session does. */
static void
fuzz_urb_stream (const guint8 *buf, gsize len, gboolean is_iso)
{
  gsize pos = 0;

  while (pos < len)
    {
      PbUsbipUrbHeader header;
      GError *error = NULL;
      guint32 payload;
      gint32 packets = 0;
      guint32 buffer_length = 0;

      if (!fuzz_urb_header (buf + pos, len - pos, &header))
        return;
      pos += PB_USBIP_URB_HEADER_SIZE;

      if (header.command == PB_USBIP_CMD_SUBMIT)
        {
          if (!pb_usbip_cmd_submit_validate (&header, is_iso, PB_USBIP_MAX_TRANSFER_LENGTH, &error))
            {
              CHECK (error != NULL);
              g_clear_error (&error);
              return;
            }
          CHECK (header.ep < 16 && header.u.cmd_submit.transfer_buffer_length <= PB_USBIP_MAX_TRANSFER_LENGTH);
          if (is_iso)
            CHECK (header.u.cmd_submit.number_of_packets >= 1
                   && header.u.cmd_submit.number_of_packets <= PB_USBIP_MAX_ISO_PACKETS);
          packets = is_iso ? header.u.cmd_submit.number_of_packets : 0;
          buffer_length = header.u.cmd_submit.transfer_buffer_length;
        }
      else if (header.command == PB_USBIP_RET_SUBMIT)
        {
          /* A client knows from its request whether the transfer is iso; the count is the peer's. */
          if (is_iso)
            {
              packets = header.u.ret_submit.number_of_packets;
              if (packets < 0 || packets > PB_USBIP_MAX_ISO_PACKETS)
                return;
            }
          /* Offsets are into the request's buffer, which only the client knows: assume the cap. */
          buffer_length = PB_USBIP_MAX_TRANSFER_LENGTH;
        }
      else
        {
          /* Validation of anything else as a submission must fail. */
          CHECK (!pb_usbip_cmd_submit_validate (&header, is_iso, G_MAXUINT32, &error));
          g_clear_error (&error);
        }

      payload = pb_usbip_urb_payload_length (&header);
      if (header.command == PB_USBIP_CMD_UNLINK || header.command == PB_USBIP_RET_UNLINK)
        CHECK (payload == 0);
      if (payload > len - pos)
        return;
      pos += payload;

      if (packets > 0)
        {
          if (!fuzz_iso (buf + pos, len - pos, (guint) packets, buffer_length))
            return;
          pos += (gsize) packets * PB_USBIP_ISO_PACKET_SIZE;
        }
    }
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  const guint8 *body;
  gsize len;
  guint8 flags;

  if (size < 1)
    return 0;
  flags = data[0];
  body = data + 1;
  len = size - 1;

  /* Each decoder alone, at the start and where it sits inside its message. */
  fuzz_op_header (body, len);
  fuzz_busid (body, len);
  if (len >= PB_USBIP_OP_HEADER_SIZE)
    fuzz_busid (body + PB_USBIP_OP_HEADER_SIZE, len - PB_USBIP_OP_HEADER_SIZE);
  fuzz_device_record (body, len);
  if (len >= PB_USBIP_OP_HEADER_SIZE)
    fuzz_device_record (body + PB_USBIP_OP_HEADER_SIZE, len - PB_USBIP_OP_HEADER_SIZE);
  fuzz_interface_record (body, len);

  /* Whole messages and streams. */
  fuzz_rep_devlist (body, len);
  fuzz_rep_import (body, len);
  fuzz_urb_stream (body, len, flags & 1);

  /* Iso descriptors alone: a 32-bit buffer length, then descriptors. */
  if (len >= 4)
    {
      guint n = (len - 4) / PB_USBIP_ISO_PACKET_SIZE;

      if (flags & 2)
        n++;
      if (flags & 4)
        n += PB_USBIP_MAX_ISO_PACKETS + 1;
      fuzz_iso (body + 4, len - 4, n, pb_read_be32 (body));
    }
  return 0;
}
