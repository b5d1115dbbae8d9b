/* The SCSI side of PbMassStorage: CBW parsing and command decoding as plain functions over
 * buffers, so they can be fuzzed without USB. Block size 512. */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

#define PB_SCSI_BLOCK_SIZE 512
#define PB_BOT_CBW_SIZE 31
#define PB_BOT_CSW_SIZE 13
#define PB_BOT_CBW_SIGNATURE 0x43425355u /* "USBC" little-endian */
#define PB_BOT_CSW_SIGNATURE 0x53425355u /* "USBS" */
#define PB_SCSI_RESPONSE_MAX 256

/* Sense keys and the additional sense codes we report. */
enum {
  PB_SCSI_SENSE_NO_SENSE = 0x00,
  PB_SCSI_SENSE_NOT_READY = 0x02,
  PB_SCSI_SENSE_MEDIUM_ERROR = 0x03,
  PB_SCSI_SENSE_ILLEGAL_REQUEST = 0x05,
  PB_SCSI_SENSE_UNIT_ATTENTION = 0x06,
  PB_SCSI_SENSE_DATA_PROTECT = 0x07,
};
#define PB_SCSI_ASC_INVALID_OPCODE 0x20
#define PB_SCSI_ASC_LBA_OUT_OF_RANGE 0x21
#define PB_SCSI_ASC_INVALID_FIELD_IN_CDB 0x24
#define PB_SCSI_ASC_WRITE_PROTECTED 0x27
#define PB_SCSI_ASC_UNRECOVERED_READ_ERROR 0x11
#define PB_SCSI_ASC_WRITE_ERROR 0x0c

typedef struct {
  guint32 tag;
  guint32 data_length; /* dCBWDataTransferLength */
  gboolean data_in;    /* bmCBWFlags bit 7 */
  guint8 lun;
  guint8 cdb_length;
  guint8 cdb[16];
} PbBotCbw;

/* A valid and meaningful CBW: 31 bytes, signature, LUN 0, CDB length 1..16. */
gboolean pb_bot_cbw_parse (const guint8 *buf, gsize len, PbBotCbw *out);
void pb_bot_csw_encode (guint8 out[PB_BOT_CSW_SIZE], guint32 tag, guint32 residue, guint8 status);

typedef struct {
  guint64 block_count;
  gboolean read_only;
  char serial[24];
  /* Current sense, reported (and cleared) by REQUEST SENSE. */
  guint8 sense_key;
  guint8 asc;
  guint8 ascq;
} PbScsiDisk;

typedef enum {
  PB_SCSI_DATA_NONE,
  PB_SCSI_DATA_IN,
  PB_SCSI_DATA_OUT,
} PbScsiDataDirection;

typedef struct {
  gboolean ok;                 /* FALSE: CHECK CONDITION, sense set in the disk */
  PbScsiDataDirection direction;
  guint64 length;              /* bytes the device means to move */
  gboolean media_io;           /* READ/WRITE: the data is the image at offset */
  guint64 offset;              /* byte offset in the image */
  gboolean sync;               /* SYNCHRONIZE CACHE: flush the image */
  guint8 response[PB_SCSI_RESPONSE_MAX]; /* IN data of other commands (length bytes) */
} PbScsiCommand;

/* Decodes cdb and decides what happens. Never touches the image; fills response for commands
 * that answer from the disk's description. Sets sense on failure. */
void pb_scsi_disk_prepare (PbScsiDisk *disk, const guint8 *cdb, gsize cdb_length, PbScsiCommand *out);
void pb_scsi_disk_set_sense (PbScsiDisk *disk, guint8 key, guint8 asc, guint8 ascq);

G_END_DECLS
