/* SCSI block commands (SPC/SBC subset) for one 512-byte-block logical unit, and the BOT
 * command/status wrappers. No I/O here: see pb-scsi.h. */
#define G_LOG_DOMAIN "plugboard"

#include "pb-scsi.h"

#include <string.h>

/* T10 vendor identification is exactly 8 characters, so "Plugboard" does not fit. */
#define INQUIRY_VENDOR "Plugbrd "
#define INQUIRY_PRODUCT "Virtual Disk    "
#define INQUIRY_REVISION "1.00"

G_STATIC_ASSERT (sizeof INQUIRY_VENDOR - 1 == 8);
G_STATIC_ASSERT (sizeof INQUIRY_PRODUCT - 1 == 16);
G_STATIC_ASSERT (sizeof INQUIRY_REVISION - 1 == 4);

static guint32
le32 (const guint8 *p)
{
  return (guint32) p[0] | ((guint32) p[1] << 8) | ((guint32) p[2] << 16) | ((guint32) p[3] << 24);
}

static void
put_le32 (guint8 *p, guint32 v)
{
  p[0] = v & 0xff;
  p[1] = (v >> 8) & 0xff;
  p[2] = (v >> 16) & 0xff;
  p[3] = v >> 24;
}

static guint16
be16 (const guint8 *p)
{
  return (guint16) ((p[0] << 8) | p[1]);
}

static guint32
be32 (const guint8 *p)
{
  return ((guint32) p[0] << 24) | ((guint32) p[1] << 16) | ((guint32) p[2] << 8) | p[3];
}

static guint64
be64 (const guint8 *p)
{
  return ((guint64) be32 (p) << 32) | be32 (p + 4);
}

static void
put_be16 (guint8 *p, guint16 v)
{
  p[0] = v >> 8;
  p[1] = v & 0xff;
}

static void
put_be32 (guint8 *p, guint32 v)
{
  p[0] = v >> 24;
  p[1] = (v >> 16) & 0xff;
  p[2] = (v >> 8) & 0xff;
  p[3] = v & 0xff;
}

static void
put_be64 (guint8 *p, guint64 v)
{
  put_be32 (p, v >> 32);
  put_be32 (p + 4, v & 0xffffffffu);
}

/* ---- Bulk-Only Transport wrappers ---- */

gboolean
pb_bot_cbw_parse (const guint8 *buf, gsize len, PbBotCbw *out)
{
  if (buf == NULL || len != PB_BOT_CBW_SIZE || le32 (buf) != PB_BOT_CBW_SIGNATURE)
    return FALSE;
  /* bmCBWFlags bits 0..6, bCBWLUN bits 4..7 and bCBWCBLength bits 5..7 are reserved. */
  if ((buf[12] & 0x7f) != 0 || (buf[13] & 0xf0) != 0 || (buf[14] & 0xe0) != 0)
    return FALSE;
  if (buf[13] != 0 || buf[14] < 1 || buf[14] > 16)
    return FALSE;
  out->tag = le32 (buf + 4);
  out->data_length = le32 (buf + 8);
  out->data_in = (buf[12] & 0x80) != 0;
  out->lun = buf[13];
  out->cdb_length = buf[14];
  memset (out->cdb, 0, sizeof out->cdb);
  memcpy (out->cdb, buf + 15, out->cdb_length);
  return TRUE;
}

void
pb_bot_csw_encode (guint8 out[PB_BOT_CSW_SIZE], guint32 tag, guint32 residue, guint8 status)
{
  put_le32 (out, PB_BOT_CSW_SIGNATURE);
  put_le32 (out + 4, tag);
  put_le32 (out + 8, residue);
  out[12] = status;
}

/* ---- the disk ---- */

void
pb_scsi_disk_set_sense (PbScsiDisk *disk, guint8 key, guint8 asc, guint8 ascq)
{
  disk->sense_key = key;
  disk->asc = asc;
  disk->ascq = ascq;
}

void
pb_scsi_disk_power_on (PbScsiDisk *disk)
{
  disk->medium_removed = FALSE;
  disk->prevent_removal = FALSE;
  pb_scsi_disk_set_sense (disk, PB_SCSI_SENSE_NO_SENSE, 0, 0);
}

static void
fail (PbScsiDisk *disk, PbScsiCommand *out, guint8 key, guint8 asc, guint8 ascq)
{
  pb_scsi_disk_set_sense (disk, key, asc, ascq);
  out->ok = FALSE;
  out->direction = PB_SCSI_DATA_NONE;
  out->length = 0;
  out->media_io = FALSE;
  out->sync = FALSE;
}

static void
fail_invalid_field (PbScsiDisk *disk, PbScsiCommand *out)
{
  fail (disk, out, PB_SCSI_SENSE_ILLEGAL_REQUEST, PB_SCSI_ASC_INVALID_FIELD_IN_CDB, 0);
}

/* The answer is the first produced bytes of response, cut to the allocation length; an
 * allocation length of 0 is no data phase at all, not an error. */
static void
respond (PbScsiCommand *out, gsize produced, guint32 allocation_length)
{
  g_assert (produced <= PB_SCSI_RESPONSE_MAX);
  out->length = MIN (produced, allocation_length);
  out->direction = out->length > 0 ? PB_SCSI_DATA_IN : PB_SCSI_DATA_NONE;
}

static gboolean
check_medium (PbScsiDisk *disk, PbScsiCommand *out)
{
  if (!disk->medium_removed && disk->block_count > 0)
    return TRUE;
  fail (disk, out, PB_SCSI_SENSE_NOT_READY, PB_SCSI_ASC_MEDIUM_NOT_PRESENT, 0);
  return FALSE;
}

static gboolean
check_range (PbScsiDisk *disk, guint64 lba, guint64 blocks, PbScsiCommand *out)
{
  if (lba < disk->block_count && blocks <= disk->block_count - lba)
    return TRUE;
  fail (disk, out, PB_SCSI_SENSE_ILLEGAL_REQUEST, PB_SCSI_ASC_LBA_OUT_OF_RANGE, 0);
  return FALSE;
}

static void
prepare_media_io (PbScsiDisk *disk, guint64 lba, guint64 blocks, gboolean write, PbScsiCommand *out)
{
  if (!check_medium (disk, out) || !check_range (disk, lba, blocks, out))
    return;
  if (write && disk->read_only)
    {
      fail (disk, out, PB_SCSI_SENSE_DATA_PROTECT, PB_SCSI_ASC_WRITE_PROTECTED, 0);
      return;
    }
  if (blocks == 0)
    return; /* SBC: a transfer length of 0 moves nothing and is not an error */
  out->direction = write ? PB_SCSI_DATA_OUT : PB_SCSI_DATA_IN;
  out->media_io = TRUE;
  out->offset = lba * PB_SCSI_BLOCK_SIZE;
  out->length = blocks * PB_SCSI_BLOCK_SIZE;
}

static void
prepare_inquiry (PbScsiDisk *disk, const guint8 *cdb, PbScsiCommand *out)
{
  guint32 allocation = be16 (cdb + 3);
  guint8 *r = out->response;
  gsize serial_length = strnlen (disk->serial, sizeof disk->serial - 1);

  if (cdb[1] & 0xfe) /* CMDDT is obsolete, the rest reserved */
    {
      fail_invalid_field (disk, out);
      return;
    }
  if (cdb[1] & 0x01)
    {
      /* Vital product data: byte 0 is the device type (direct access), byte 1 the page. */
      r[1] = cdb[2];
      switch (cdb[2])
        {
        case 0x00: /* supported pages */
          r[3] = 3;
          r[4] = 0x00;
          r[5] = 0x80;
          r[6] = 0x83;
          respond (out, 7, allocation);
          return;
        case 0x80: /* unit serial number */
          r[3] = (guint8) serial_length;
          memcpy (r + 4, disk->serial, serial_length);
          respond (out, 4 + serial_length, allocation);
          return;
        case 0x83: /* device identification: one T10 vendor ID designator, ASCII */
          {
            guint8 *d = r + 4;
            gsize id_length = 8 + 16 + serial_length;

            d[0] = 0x02; /* code set ASCII */
            d[1] = 0x01; /* logical unit, T10 vendor ID based */
            d[3] = (guint8) id_length;
            memcpy (d + 4, INQUIRY_VENDOR, 8);
            memcpy (d + 12, INQUIRY_PRODUCT, 16);
            memcpy (d + 28, disk->serial, serial_length);
            put_be16 (r + 2, (guint16) (4 + id_length));
            respond (out, 4 + 4 + id_length, allocation);
            return;
          }
        default:
          fail_invalid_field (disk, out);
          return;
        }
    }
  if (cdb[2] != 0)
    {
      fail_invalid_field (disk, out);
      return;
    }
  r[0] = 0x00;   /* direct-access block device, connected */
  r[1] = 0x80;   /* removable medium: START STOP UNIT can eject it */
  r[2] = 0x06;   /* SPC-4 */
  r[3] = 0x02;   /* response data format 2 */
  r[4] = 36 - 5; /* additional length */
  memcpy (r + 8, INQUIRY_VENDOR, 8);
  memcpy (r + 16, INQUIRY_PRODUCT, 16);
  memcpy (r + 32, INQUIRY_REVISION, 4);
  respond (out, 36, allocation);
}

static void
prepare_request_sense (PbScsiDisk *disk, const guint8 *cdb, PbScsiCommand *out)
{
  guint8 *r = out->response;

  if (cdb[1] & 0x01)
    {
      /* DESC: only fixed-format sense is implemented. */
      fail_invalid_field (disk, out);
      return;
    }
  /* With nothing pending, report the standing condition (an ejected medium). */
  if (disk->sense_key == PB_SCSI_SENSE_NO_SENSE && disk->asc == 0 && disk->medium_removed)
    pb_scsi_disk_set_sense (disk, PB_SCSI_SENSE_NOT_READY, PB_SCSI_ASC_MEDIUM_NOT_PRESENT, 0);
  r[0] = 0x70; /* current error, fixed format */
  r[2] = disk->sense_key;
  r[7] = 18 - 8;
  r[12] = disk->asc;
  r[13] = disk->ascq;
  respond (out, 18, cdb[4]);
  pb_scsi_disk_set_sense (disk, PB_SCSI_SENSE_NO_SENSE, 0, 0);
}

/* Appends the mode pages asked for; FALSE for a page we do not have. */
static gboolean
put_mode_pages (guint8 page, gboolean changeable, guint8 *p, gsize *n)
{
  gboolean known = FALSE;

  if (page == 0x08 || page == 0x3f)
    {
      /* Caching: writes sit in the server's page cache until SYNCHRONIZE CACHE, which is a
       * volatile write cache, so say so (WCE) and hosts that care will flush. */
      memset (p + *n, 0, 20);
      p[*n] = 0x08;
      p[*n + 1] = 18;
      if (!changeable)
        p[*n + 2] = 0x04;
      *n += 20;
      known = TRUE;
    }
  if (page == 0x1c || page == 0x3f)
    {
      /* Informational exceptions control: we have no failure prediction (DEXCPT). */
      memset (p + *n, 0, 12);
      p[*n] = 0x1c;
      p[*n + 1] = 10;
      if (!changeable)
        p[*n + 2] = 0x08;
      *n += 12;
      known = TRUE;
    }
  return known;
}

static void
prepare_mode_sense (PbScsiDisk *disk, const guint8 *cdb, gboolean ten, PbScsiCommand *out)
{
  guint8 page_control = cdb[2] >> 6;
  guint8 page = cdb[2] & 0x3f;
  guint8 subpage = cdb[3];
  guint8 *r = out->response;
  gsize header = ten ? 8 : 4;
  guint32 allocation = ten ? be16 (cdb + 7) : cdb[4];
  gsize n = header;

  if (page_control == 3)
    {
      fail (disk, out, PB_SCSI_SENSE_ILLEGAL_REQUEST, PB_SCSI_ASC_SAVING_PARAMETERS_NOT_SUPPORTED, 0);
      return;
    }
  if (subpage != 0 && !(subpage == 0xff && page == 0x3f))
    {
      fail_invalid_field (disk, out);
      return;
    }
  /* Page 0 (vendor specific, no page format) answers with the header alone: Linux's sd asks
   * for it to learn the write-protect bit when a device refuses page 0x3f. */
  if (!put_mode_pages (page, page_control == 1, r, &n) && page != 0x00)
    {
      fail_invalid_field (disk, out);
      return;
    }
  if (ten)
    {
      put_be16 (r, (guint16) (n - 2));
      r[3] = disk->read_only ? 0x80 : 0x00; /* WP in the device-specific parameter */
    }
  else
    {
      r[0] = (guint8) (n - 1);
      r[2] = disk->read_only ? 0x80 : 0x00;
    }
  respond (out, n, allocation);
}

static void
prepare_start_stop (PbScsiDisk *disk, const guint8 *cdb, PbScsiCommand *out)
{
  gboolean start = (cdb[4] & 0x01) != 0;
  gboolean load_eject = (cdb[4] & 0x02) != 0;

  /* A power condition overrides START and LOEJ; we have no power states to enter. */
  if ((cdb[4] & 0xf0) != 0 || !load_eject)
    return;
  if (start)
    disk->medium_removed = FALSE;
  else if (disk->prevent_removal)
    fail (disk, out, PB_SCSI_SENSE_ILLEGAL_REQUEST, PB_SCSI_ASC_MEDIUM_REMOVAL_PREVENTED, 0x02);
  else
    disk->medium_removed = TRUE;
}

void
pb_scsi_disk_prepare (PbScsiDisk *disk, const guint8 *cdb, gsize cdb_length, PbScsiCommand *out)
{
  /* Shortest CDB of each opcode group (SPC 4.2.5); 0 for the reserved and vendor groups. */
  static const gsize minimum_length[8] = { 6, 10, 10, 0, 16, 12, 0, 0 };
  guint8 *r = out->response;
  guint8 opcode;

  memset (out, 0, sizeof *out);
  out->ok = TRUE;
  if (cdb_length == 0 || cdb_length > 16)
    {
      fail (disk, out, PB_SCSI_SENSE_ILLEGAL_REQUEST, PB_SCSI_ASC_INVALID_OPCODE, 0);
      return;
    }
  opcode = cdb[0];
  if (minimum_length[opcode >> 5] == 0 || cdb_length < minimum_length[opcode >> 5])
    {
      fail (disk, out, PB_SCSI_SENSE_ILLEGAL_REQUEST, PB_SCSI_ASC_INVALID_OPCODE, 0);
      return;
    }

  /* The sense describes the last command; REQUEST SENSE reads it. */
  if (opcode != PB_SCSI_REQUEST_SENSE)
    pb_scsi_disk_set_sense (disk, PB_SCSI_SENSE_NO_SENSE, 0, 0);

  switch (opcode)
    {
    case PB_SCSI_TEST_UNIT_READY:
      check_medium (disk, out);
      return;

    case PB_SCSI_REQUEST_SENSE:
      prepare_request_sense (disk, cdb, out);
      return;

    case PB_SCSI_INQUIRY:
      prepare_inquiry (disk, cdb, out);
      return;

    case PB_SCSI_MODE_SENSE_6:
      prepare_mode_sense (disk, cdb, FALSE, out);
      return;

    case PB_SCSI_MODE_SENSE_10:
      prepare_mode_sense (disk, cdb, TRUE, out);
      return;

    case PB_SCSI_START_STOP_UNIT:
      prepare_start_stop (disk, cdb, out);
      return;

    case PB_SCSI_PREVENT_ALLOW_MEDIUM_REMOVAL:
      disk->prevent_removal = (cdb[4] & 0x01) != 0;
      return;

    case PB_SCSI_READ_CAPACITY_10:
      /* Without PMI the LBA field must be 0. */
      if (!(cdb[8] & 0x01) && be32 (cdb + 2) != 0)
        {
          fail_invalid_field (disk, out);
          return;
        }
      if (!check_medium (disk, out))
        return;
      /* 0xffffffff tells the host to ask READ CAPACITY(16). */
      put_be32 (r, (guint32) MIN (disk->block_count - 1, G_GUINT64_CONSTANT (0xffffffff)));
      put_be32 (r + 4, PB_SCSI_BLOCK_SIZE);
      respond (out, 8, 8);
      return;

    case PB_SCSI_SERVICE_ACTION_IN_16:
      if ((cdb[1] & 0x1f) != 0x10) /* only READ CAPACITY(16) */
        {
          fail_invalid_field (disk, out);
          return;
        }
      if (!check_medium (disk, out))
        return;
      put_be64 (r, disk->block_count - 1);
      put_be32 (r + 8, PB_SCSI_BLOCK_SIZE);
      respond (out, 32, be32 (cdb + 10));
      return;

    case PB_SCSI_READ_FORMAT_CAPACITIES:
      /* One current/maximum capacity descriptor; it answers even without a medium. */
      r[3] = 8;
      put_be32 (r + 4, (guint32) MIN (disk->block_count, G_GUINT64_CONSTANT (0xffffffff)));
      r[8] = disk->medium_removed ? 0x03 : 0x02; /* no medium / formatted medium */
      r[9] = (PB_SCSI_BLOCK_SIZE >> 16) & 0xff;
      r[10] = (PB_SCSI_BLOCK_SIZE >> 8) & 0xff;
      r[11] = PB_SCSI_BLOCK_SIZE & 0xff;
      respond (out, 12, be16 (cdb + 7));
      return;

    case PB_SCSI_READ_6:
    case PB_SCSI_WRITE_6:
      /* 21-bit LBA; a transfer length of 0 means 256 blocks here. */
      prepare_media_io (disk, ((guint32) (cdb[1] & 0x1f) << 16) | be16 (cdb + 2), cdb[4] != 0 ? cdb[4] : 256,
                        opcode == PB_SCSI_WRITE_6, out);
      return;

    case PB_SCSI_READ_10:
    case PB_SCSI_WRITE_10:
      if (cdb[1] & 0xe0) /* RDPROTECT/WRPROTECT: no protection information */
        {
          fail_invalid_field (disk, out);
          return;
        }
      prepare_media_io (disk, be32 (cdb + 2), be16 (cdb + 7), opcode == PB_SCSI_WRITE_10, out);
      return;

    case PB_SCSI_READ_16:
    case PB_SCSI_WRITE_16:
      if (cdb[1] & 0xe0)
        {
          fail_invalid_field (disk, out);
          return;
        }
      prepare_media_io (disk, be64 (cdb + 2), be32 (cdb + 10), opcode == PB_SCSI_WRITE_16, out);
      return;

    case PB_SCSI_VERIFY_10:
    case PB_SCSI_VERIFY_16:
      {
        gboolean ten = opcode == PB_SCSI_VERIFY_10;

        /* Medium verification only: comparing against host data (BYTCHK) is not offered. */
        if (cdb[1] & 0xe6)
          {
            fail_invalid_field (disk, out);
            return;
          }
        if (check_medium (disk, out))
          check_range (disk, ten ? be32 (cdb + 2) : be64 (cdb + 2), ten ? be16 (cdb + 7) : be32 (cdb + 10), out);
        return;
      }

    case PB_SCSI_SYNCHRONIZE_CACHE_10:
    case PB_SCSI_SYNCHRONIZE_CACHE_16:
      {
        gboolean ten = opcode == PB_SCSI_SYNCHRONIZE_CACHE_10;

        /* The whole image is flushed whatever the range; a range must still exist. */
        if (check_medium (disk, out) &&
            check_range (disk, ten ? be32 (cdb + 2) : be64 (cdb + 2), ten ? be16 (cdb + 7) : be32 (cdb + 10), out))
          out->sync = TRUE;
        return;
      }

    default:
      fail (disk, out, PB_SCSI_SENSE_ILLEGAL_REQUEST, PB_SCSI_ASC_INVALID_OPCODE, 0);
      return;
    }
}
