#define G_LOG_DOMAIN "plugboard"

#include "pb-scsi.h"

#include <string.h>

static guint32
le32 (const guint8 *p)
{
  return p[0] | (p[1] << 8) | (p[2] << 16) | ((guint32) p[3] << 24);
}

static void
put_le32 (guint8 *p, guint32 v)
{
  p[0] = v & 0xff;
  p[1] = (v >> 8) & 0xff;
  p[2] = (v >> 16) & 0xff;
  p[3] = v >> 24;
}

static guint32
be32 (const guint8 *p)
{
  return ((guint32) p[0] << 24) | (p[1] << 16) | (p[2] << 8) | p[3];
}

static guint64
be64 (const guint8 *p)
{
  return ((guint64) be32 (p) << 32) | be32 (p + 4);
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

gboolean
pb_bot_cbw_parse (const guint8 *buf, gsize len, PbBotCbw *out)
{
  if (len != PB_BOT_CBW_SIZE || le32 (buf) != PB_BOT_CBW_SIGNATURE)
    return FALSE;
  out->tag = le32 (buf + 4);
  out->data_length = le32 (buf + 8);
  out->data_in = (buf[12] & 0x80) != 0;
  out->lun = buf[13] & 0x0f;
  out->cdb_length = buf[14] & 0x1f;
  /* One LUN; reserved bits must be zero for the CBW to be meaningful. */
  if (out->lun != 0 || (buf[12] & 0x7f) != 0 || out->cdb_length < 1 || out->cdb_length > 16)
    return FALSE;
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

void
pb_scsi_disk_set_sense (PbScsiDisk *disk, guint8 key, guint8 asc, guint8 ascq)
{
  disk->sense_key = key;
  disk->asc = asc;
  disk->ascq = ascq;
}

static void
fail (PbScsiDisk *disk, PbScsiCommand *out, guint8 key, guint8 asc)
{
  pb_scsi_disk_set_sense (disk, key, asc, 0);
  out->ok = FALSE;
  out->direction = PB_SCSI_DATA_NONE;
  out->length = 0;
  out->media_io = FALSE;
}

static void
respond (PbScsiCommand *out, gsize produced, guint32 allocation_length)
{
  out->direction = PB_SCSI_DATA_IN;
  out->length = MIN (produced, allocation_length);
}

static void
prepare_inquiry (PbScsiDisk *disk, const guint8 *cdb, PbScsiCommand *out)
{
  guint32 allocation = (cdb[3] << 8) | cdb[4];
  guint8 *r = out->response;

  if (cdb[1] & 0x01)
    {
      /* Vital product data pages. */
      switch (cdb[2])
        {
        case 0x00:
          r[1] = 0x00;
          r[3] = 2;
          r[4] = 0x00;
          r[5] = 0x80;
          respond (out, 6, allocation);
          return;
        case 0x80:
          {
            gsize n = strlen (disk->serial);
            r[1] = 0x80;
            r[3] = (guint8) n;
            memcpy (r + 4, disk->serial, n);
            respond (out, 4 + n, allocation);
            return;
          }
        default:
          fail (disk, out, PB_SCSI_SENSE_ILLEGAL_REQUEST, PB_SCSI_ASC_INVALID_FIELD_IN_CDB);
          return;
        }
    }
  if (cdb[2] != 0)
    {
      fail (disk, out, PB_SCSI_SENSE_ILLEGAL_REQUEST, PB_SCSI_ASC_INVALID_FIELD_IN_CDB);
      return;
    }
  r[0] = 0x00;       /* direct-access block device */
  r[1] = 0x80;       /* removable */
  r[2] = 0x06;       /* SPC-4 */
  r[3] = 0x02;       /* response data format */
  r[4] = 36 - 5;     /* additional length */
  memcpy (r + 8, "Plugbrd ", 8); /* T10 vendor IDs are 8 characters */
  memcpy (r + 16, "Virtual Disk    ", 16);
  memcpy (r + 32, "0100", 4);
  respond (out, 36, allocation);
}

static gsize
mode_pages (PbScsiDisk *disk, guint8 page, guint8 *p, gboolean *known)
{
  gsize n = 0;

  *known = FALSE;
  if (page == 0x08 || page == 0x3f)
    {
      /* Caching: write cache disabled, so hosts do not wait for flushes that buy nothing. */
      p[n] = 0x08;
      p[n + 1] = 18;
      memset (p + n + 2, 0, 18);
      n += 20;
      *known = TRUE;
    }
  if (page == 0x1c || page == 0x3f)
    {
      /* Informational exceptions control: nothing to report. */
      p[n] = 0x1c;
      p[n + 1] = 10;
      memset (p + n + 2, 0, 10);
      n += 12;
      *known = TRUE;
    }
  return n;
}

static void
prepare_mode_sense (PbScsiDisk *disk, const guint8 *cdb, gboolean ten, PbScsiCommand *out)
{
  guint8 page = cdb[2] & 0x3f;
  guint8 *r = out->response;
  gsize header = ten ? 8 : 4;
  guint32 allocation = ten ? (guint32) ((cdb[7] << 8) | cdb[8]) : cdb[4];
  gboolean known;
  gsize n;

  n = mode_pages (disk, page, r + header, &known);
  if (!known && page != 0x00)
    {
      fail (disk, out, PB_SCSI_SENSE_ILLEGAL_REQUEST, PB_SCSI_ASC_INVALID_FIELD_IN_CDB);
      return;
    }
  /* Page control 1 asks which fields are changeable: none are. The bodies are zero already
   * except the page headers, so nothing to clear. */
  if (ten)
    {
      r[0] = ((n + header - 2) >> 8) & 0xff;
      r[1] = (n + header - 2) & 0xff;
      r[3] = disk->read_only ? 0x80 : 0x00; /* WP */
    }
  else
    {
      r[0] = (guint8) (n + header - 1);
      r[2] = disk->read_only ? 0x80 : 0x00;
    }
  respond (out, header + n, allocation);
}

static void
prepare_media_io (PbScsiDisk *disk, guint64 lba, guint64 blocks, gboolean write, PbScsiCommand *out)
{
  if (lba > disk->block_count || blocks > disk->block_count - lba)
    {
      fail (disk, out, PB_SCSI_SENSE_ILLEGAL_REQUEST, PB_SCSI_ASC_LBA_OUT_OF_RANGE);
      return;
    }
  if (write && disk->read_only)
    {
      fail (disk, out, PB_SCSI_SENSE_DATA_PROTECT, PB_SCSI_ASC_WRITE_PROTECTED);
      return;
    }
  out->direction = blocks == 0 ? PB_SCSI_DATA_NONE : (write ? PB_SCSI_DATA_OUT : PB_SCSI_DATA_IN);
  out->media_io = blocks > 0;
  out->offset = lba * PB_SCSI_BLOCK_SIZE;
  out->length = blocks * PB_SCSI_BLOCK_SIZE;
}

void
pb_scsi_disk_prepare (PbScsiDisk *disk, const guint8 *cdb, gsize cdb_length, PbScsiCommand *out)
{
  guint8 *r = out->response;
  static const gsize minimum_length[8] = { 6, 10, 10, 0, 16, 12, 0, 0 }; /* by opcode group */
  guint8 opcode;

  memset (out, 0, sizeof *out);
  out->ok = TRUE;
  if (cdb_length == 0)
    {
      fail (disk, out, PB_SCSI_SENSE_ILLEGAL_REQUEST, PB_SCSI_ASC_INVALID_OPCODE);
      return;
    }
  opcode = cdb[0];
  if (minimum_length[opcode >> 5] == 0 || cdb_length < minimum_length[opcode >> 5])
    {
      fail (disk, out, PB_SCSI_SENSE_ILLEGAL_REQUEST, PB_SCSI_ASC_INVALID_OPCODE);
      return;
    }

  /* Any command but REQUEST SENSE starts with a clean sense. */
  if (opcode != 0x03)
    pb_scsi_disk_set_sense (disk, PB_SCSI_SENSE_NO_SENSE, 0, 0);

  switch (opcode)
    {
    case 0x00: /* TEST UNIT READY */
    case 0x1e: /* PREVENT ALLOW MEDIUM REMOVAL */
    case 0x1b: /* START STOP UNIT */
      return;

    case 0x03: /* REQUEST SENSE, fixed format */
      r[0] = 0x70;
      r[2] = disk->sense_key;
      r[7] = 10;
      r[12] = disk->asc;
      r[13] = disk->ascq;
      respond (out, 18, cdb[4]);
      pb_scsi_disk_set_sense (disk, PB_SCSI_SENSE_NO_SENSE, 0, 0);
      return;

    case 0x12: /* INQUIRY */
      prepare_inquiry (disk, cdb, out);
      return;

    case 0x1a: /* MODE SENSE(6) */
      prepare_mode_sense (disk, cdb, FALSE, out);
      return;

    case 0x5a: /* MODE SENSE(10) */
      prepare_mode_sense (disk, cdb, TRUE, out);
      return;

    case 0x25: /* READ CAPACITY(10) */
      put_be32 (r, disk->block_count > 0xffffffffull ? 0xffffffffu : (guint32) (disk->block_count - 1));
      put_be32 (r + 4, PB_SCSI_BLOCK_SIZE);
      respond (out, 8, 8);
      return;

    case 0x9e: /* SERVICE ACTION IN(16) */
      if ((cdb[1] & 0x1f) != 0x10) /* READ CAPACITY(16) */
        {
          fail (disk, out, PB_SCSI_SENSE_ILLEGAL_REQUEST, PB_SCSI_ASC_INVALID_FIELD_IN_CDB);
          return;
        }
      put_be64 (r, disk->block_count - 1);
      put_be32 (r + 8, PB_SCSI_BLOCK_SIZE);
      respond (out, 32, be32 (cdb + 10));
      return;

    case 0x23: /* READ FORMAT CAPACITIES */
      r[3] = 8; /* capacity list length */
      put_be32 (r + 4, disk->block_count > 0xffffffffull ? 0xffffffffu : (guint32) disk->block_count);
      r[8] = 0x02; /* formatted media */
      r[9] = (PB_SCSI_BLOCK_SIZE >> 16) & 0xff;
      r[10] = (PB_SCSI_BLOCK_SIZE >> 8) & 0xff;
      r[11] = PB_SCSI_BLOCK_SIZE & 0xff;
      respond (out, 12, (cdb[7] << 8) | cdb[8]);
      return;

    case 0x28: /* READ(10) */
      prepare_media_io (disk, be32 (cdb + 2), (cdb[7] << 8) | cdb[8], FALSE, out);
      return;
    case 0x88: /* READ(16) */
      prepare_media_io (disk, be64 (cdb + 2), be32 (cdb + 10), FALSE, out);
      return;
    case 0x2a: /* WRITE(10) */
      prepare_media_io (disk, be32 (cdb + 2), (cdb[7] << 8) | cdb[8], TRUE, out);
      return;
    case 0x8a: /* WRITE(16) */
      prepare_media_io (disk, be64 (cdb + 2), be32 (cdb + 10), TRUE, out);
      return;
    case 0x2f: /* VERIFY(10): the image cannot be worse than what we read back */
      prepare_media_io (disk, be32 (cdb + 2), (cdb[7] << 8) | cdb[8], FALSE, out);
      out->direction = PB_SCSI_DATA_NONE;
      out->media_io = FALSE;
      out->length = 0;
      return;

    case 0x35: /* SYNCHRONIZE CACHE(10) */
    case 0x91: /* SYNCHRONIZE CACHE(16) */
      out->sync = TRUE;
      return;

    default:
      fail (disk, out, PB_SCSI_SENSE_ILLEGAL_REQUEST, PB_SCSI_ASC_INVALID_OPCODE);
      return;
    }
}
