/* The SCSI side of PbMassStorage: CBW/CSW coding and SCSI command decoding as plain functions
 * over buffers, so they can be fuzzed without USB. One logical unit, 512-byte blocks.
 *
 * pb_scsi_disk_prepare() decides what a command does (data direction and length, which part
 * of the image it touches, or the bytes it answers with) and sets the sense data; it never
 * touches the image. The transport moves the data and reports I/O failures back with
 * pb_scsi_disk_set_sense(). */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

#define PB_SCSI_BLOCK_SIZE 512
#define PB_BOT_CBW_SIZE 31
#define PB_BOT_CSW_SIZE 13
#define PB_BOT_CBW_SIGNATURE 0x43425355u /* "USBC" little-endian */
#define PB_BOT_CSW_SIGNATURE 0x53425355u /* "USBS" */
/* Largest answer of a command that does not move image data (bounds PbScsiCommand.response). */
#define PB_SCSI_RESPONSE_MAX 256

/* bCSWStatus */
enum {
  PB_BOT_CSW_PASSED = 0,
  PB_BOT_CSW_FAILED = 1,
  PB_BOT_CSW_PHASE_ERROR = 2,
};

/* Sense keys and the additional sense codes (ASCQ 0 unless noted) we report. */
enum {
  PB_SCSI_SENSE_NO_SENSE = 0x00,
  PB_SCSI_SENSE_NOT_READY = 0x02,
  PB_SCSI_SENSE_MEDIUM_ERROR = 0x03,
  PB_SCSI_SENSE_ILLEGAL_REQUEST = 0x05,
  PB_SCSI_SENSE_UNIT_ATTENTION = 0x06,
  PB_SCSI_SENSE_DATA_PROTECT = 0x07,
};
#define PB_SCSI_ASC_WRITE_ERROR 0x0c
#define PB_SCSI_ASC_UNRECOVERED_READ_ERROR 0x11
#define PB_SCSI_ASC_INVALID_OPCODE 0x20
#define PB_SCSI_ASC_LBA_OUT_OF_RANGE 0x21
#define PB_SCSI_ASC_INVALID_FIELD_IN_CDB 0x24
#define PB_SCSI_ASC_WRITE_PROTECTED 0x27
#define PB_SCSI_ASC_SAVING_PARAMETERS_NOT_SUPPORTED 0x39
#define PB_SCSI_ASC_MEDIUM_NOT_PRESENT 0x3a
#define PB_SCSI_ASC_MEDIUM_REMOVAL_PREVENTED 0x53 /* ASCQ 0x02 */

/* Operation codes we answer. */
enum {
  PB_SCSI_TEST_UNIT_READY = 0x00,
  PB_SCSI_REQUEST_SENSE = 0x03,
  PB_SCSI_READ_6 = 0x08,
  PB_SCSI_WRITE_6 = 0x0a,
  PB_SCSI_INQUIRY = 0x12,
  PB_SCSI_MODE_SENSE_6 = 0x1a,
  PB_SCSI_START_STOP_UNIT = 0x1b,
  PB_SCSI_PREVENT_ALLOW_MEDIUM_REMOVAL = 0x1e,
  PB_SCSI_READ_FORMAT_CAPACITIES = 0x23,
  PB_SCSI_READ_CAPACITY_10 = 0x25,
  PB_SCSI_READ_10 = 0x28,
  PB_SCSI_WRITE_10 = 0x2a,
  PB_SCSI_VERIFY_10 = 0x2f,
  PB_SCSI_SYNCHRONIZE_CACHE_10 = 0x35,
  PB_SCSI_MODE_SENSE_10 = 0x5a,
  PB_SCSI_READ_16 = 0x88,
  PB_SCSI_WRITE_16 = 0x8a,
  PB_SCSI_VERIFY_16 = 0x8f,
  PB_SCSI_SYNCHRONIZE_CACHE_16 = 0x91,
  PB_SCSI_SERVICE_ACTION_IN_16 = 0x9e, /* service action 0x10: READ CAPACITY(16) */
};

typedef struct {
  guint32 tag;
  guint32 data_length; /* dCBWDataTransferLength */
  gboolean data_in;    /* bmCBWFlags bit 7 */
  guint8 lun;
  guint8 cdb_length;
  guint8 cdb[16];
} PbBotCbw;

/* TRUE for a valid (31 bytes, signature) and meaningful (reserved bits clear, LUN 0, CDB
 * length 1..16) CBW. The caller treats both failures alike: BOT leaves the response to a
 * meaningless CBW open, and stalling until a reset recovery is the safe one. */
gboolean pb_bot_cbw_parse (const guint8 *buf, gsize len, PbBotCbw *out);
void pb_bot_csw_encode (guint8 out[PB_BOT_CSW_SIZE], guint32 tag, guint32 residue, guint8 status);

typedef struct {
  /* Set by the owner. */
  guint64 block_count;       /* > 0 */
  gboolean read_only;
  char serial[24];           /* unit serial number (VPD page 0x80), NUL-terminated */

  /* Kept by the decoder. */
  gboolean medium_removed;   /* ejected with START STOP UNIT (LOEJ) */
  gboolean prevent_removal;  /* PREVENT ALLOW MEDIUM REMOVAL */
  /* Sense of the last command, reported (and cleared) by REQUEST SENSE. */
  guint8 sense_key;
  guint8 asc;
  guint8 ascq;
} PbScsiDisk;

typedef enum {
  PB_SCSI_DATA_NONE,
  PB_SCSI_DATA_IN,  /* device to host */
  PB_SCSI_DATA_OUT, /* host to device */
} PbScsiDataDirection;

typedef struct {
  gboolean ok;                   /* FALSE: CHECK CONDITION, the sense is in the disk */
  PbScsiDataDirection direction; /* NONE exactly when length is 0 */
  guint64 length;                /* bytes the device means to move */
  gboolean media_io;             /* READ/WRITE: the data is the image at offset */
  guint64 offset;                /* byte offset in the image; offset + length <= image size */
  gboolean sync;                 /* SYNCHRONIZE CACHE: flush the image before the status */
  guint8 response[PB_SCSI_RESPONSE_MAX]; /* the IN data of other commands (length bytes) */
} PbScsiCommand;

/* A freshly plugged disk: medium loaded, removal allowed, no sense. */
void pb_scsi_disk_power_on (PbScsiDisk *disk);
/* Decodes a CDB of cdb_length bytes (0..16) and decides what happens. */
void pb_scsi_disk_prepare (PbScsiDisk *disk, const guint8 *cdb, gsize cdb_length, PbScsiCommand *out);
void pb_scsi_disk_set_sense (PbScsiDisk *disk, guint8 key, guint8 asc, guint8 ascq);

G_END_DECLS
