/* PbMassStorage through the PbDevice API, as a session drives it: descriptors and class
 * requests, the SCSI commands, data split over several requests, the thirteen BOT cases
 * (residues, phase errors, stalls), an invalid CBW and reset recovery, IN requests queued
 * before their CBW, cancel, eject, I/O errors, and the embedded FAT image. Media I/O runs on a
 * worker thread and completes through the main context, so the helpers iterate it; the tests
 * at the end keep an I/O pending on purpose (unlink, control requests, reset, dispose, exit). */
#include <errno.h>
#include <fcntl.h>
#include <glib/gstdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "pb-test-util.h"
#include "pb-default-image.h"
#include "pb-mass-storage.h"
#include "pb-mass-storage-private.h"
#include "pb-scsi.h"

#define BLOCKS 256
#define BLOCK 512
#define EP_IN 0x81
#define EP_OUT 0x02

typedef struct {
  PbMassStorage *storage;
  PbVirtualDevice *vdev;
  PbDevice *device;
  int image_fd;
  guint8 *contents; /* what the image held at the start */
  PbTestDriver driver;
  guint32 tag;
} Fixture;

typedef struct {
  gint32 data_status;   /* of the data request (0 when there was none) */
  guint32 data_actual;
  gboolean csw_stalled; /* the first CSW request stalled and the halt was cleared */
  guint8 status;
  guint32 residue;
} BotResult;

/* ---- the main context ---- */

#define WAIT_TIMEOUT_S 10

static gboolean
on_wait_timeout (gpointer user_data)
{
  *(gboolean *) user_data = TRUE;
  return G_SOURCE_REMOVE;
}

/* Iterates the main context (where I/O results arrive) until driver holds n completed URBs. */
static void
wait_completions (PbTestDriver *driver, guint n)
{
  gboolean timed_out = FALSE;
  guint id = g_timeout_add_seconds (WAIT_TIMEOUT_S, on_wait_timeout, &timed_out);

  while (driver->completed.length < n && !timed_out)
    g_main_context_iteration (NULL, TRUE);
  if (!timed_out)
    g_source_remove (id);
  g_assert_cmpuint (driver->completed.length, >=, n);
}

/* Waits for the next completion and asserts it is expected. */
static PbUrb *
take (PbTestDriver *driver, PbUrb *expected)
{
  wait_completions (driver, 1);
  return pb_test_driver_take (driver, expected);
}

/* Lets every I/O in the process finish and its result reach (or be dropped by) the device,
 * and runs whatever that triggered. The gate must be open. */
static void
settle (void)
{
  gboolean timed_out = FALSE;
  guint id = g_timeout_add_seconds (WAIT_TIMEOUT_S, on_wait_timeout, &timed_out);

  while (pb_mass_storage_get_io_count () > 0 && !timed_out)
    g_main_context_iteration (NULL, TRUE);
  if (!timed_out)
    g_source_remove (id);
  g_assert_cmpuint (pb_mass_storage_get_io_count (), ==, 0);
  while (g_main_context_iteration (NULL, FALSE))
    ;
}

/* ---- fixture ---- */

static void
fixture_open (Fixture *f)
{
  g_autoptr(GError) error = NULL;

  g_assert_true (pb_device_open (f->device, &error));
  g_assert_no_error (error);
  pb_test_driver_expect_control (&f->driver, 0x00, PB_USB_REQ_SET_CONFIGURATION, 1, 0, 0, NULL, PB_URB_OK, NULL, 0);
}

/* Fixture modes: a writable or read-only image in a temporary file, or one in a memfd with the
 * fast path on (see pb_mass_storage_set_fast_path). */
enum { IMAGE_WRITABLE, IMAGE_READ_ONLY, IMAGE_IN_MEMORY };

static void
fixture_setup (Fixture *f, gconstpointer mode)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *path = NULL;

  memset (f, 0, sizeof *f);
  pb_mass_storage_set_io_gate (FALSE);
  /* These tests drive the worker path, the one that can stall; /mass-storage/fast-path and the
   * loopback tests cover the other. */
  pb_mass_storage_set_fast_path (GPOINTER_TO_INT (mode) == IMAGE_IN_MEMORY);
  if (GPOINTER_TO_INT (mode) == IMAGE_IN_MEMORY)
    {
      f->image_fd = memfd_create ("pb-msc-test", MFD_CLOEXEC);
      g_assert_cmpint (f->image_fd, >=, 0);
    }
  else
    {
      f->image_fd = g_file_open_tmp ("pb-msc-XXXXXX.img", &path, &error);
      g_assert_no_error (error);
      g_unlink (path);
    }
  f->contents = g_malloc (BLOCKS * BLOCK);
  for (guint i = 0; i < BLOCKS * BLOCK / 4; i++)
    ((guint32 *) f->contents)[i] = g_test_rand_int ();
  g_assert_cmpint (pwrite (f->image_fd, f->contents, BLOCKS * BLOCK, 0), ==, BLOCKS * BLOCK);

  f->storage = pb_mass_storage_new (f->image_fd, GPOINTER_TO_INT (mode) == IMAGE_READ_ONLY, &error);
  g_assert_no_error (error);
  f->vdev = pb_mass_storage_get_device (f->storage);
  f->device = PB_DEVICE (f->vdev);
  pb_test_driver_init (&f->driver, f->device);
  fixture_open (f);
}

static void
fixture_teardown (Fixture *f, gconstpointer data)
{
  settle ();
  g_assert_cmpuint (f->driver.completed.length, ==, 0);
  pb_device_close (f->device);
  g_object_unref (f->storage);
  close (f->image_fd);
  g_free (f->contents);
}

/* ---- BOT helpers ---- */

static PbUrb *
submit_in (Fixture *f, guint32 length)
{
  PbUrb *urb = pb_test_driver_urb_new (&f->driver, 1, PB_USBIP_DIR_IN, length);
  pb_device_submit (f->device, urb);
  return urb;
}

/* A bulk IN request that must complete next (after its I/O, if any); returned for inspection. */
static PbUrb *
bulk_in (Fixture *f, guint32 length)
{
  PbUrb *urb = submit_in (f, length);
  return take (&f->driver, urb);
}

/* A bulk OUT request that must complete next (after its I/O, if any). Returns its status. */
static gint32
bulk_out (Fixture *f, const void *data, guint32 length, guint32 *actual)
{
  PbUrb *urb = pb_test_driver_urb_new (&f->driver, 2, PB_USBIP_DIR_OUT, length);
  gint32 status;

  memcpy (urb->buffer, data, length);
  pb_device_submit (f->device, urb);
  take (&f->driver, urb);
  status = urb->status;
  if (actual != NULL)
    *actual = urb->actual_length;
  pb_test_urb_free (urb);
  return status;
}

static void
build_cbw (guint8 cbw[31], guint32 tag, guint32 data_length, gboolean data_in, const guint8 *cdb, guint8 cdb_length)
{
  memset (cbw, 0, 31);
  cbw[0] = 'U'; cbw[1] = 'S'; cbw[2] = 'B'; cbw[3] = 'C';
  cbw[4] = tag; cbw[5] = tag >> 8; cbw[6] = tag >> 16; cbw[7] = tag >> 24;
  cbw[8] = data_length; cbw[9] = data_length >> 8; cbw[10] = data_length >> 16; cbw[11] = data_length >> 24;
  cbw[12] = data_in ? 0x80 : 0x00;
  cbw[14] = cdb_length;
  memcpy (cbw + 15, cdb, cdb_length);
}

/* Sends a valid CBW, which the device must accept; returns its tag. */
static guint32
send_cbw (Fixture *f, guint32 data_length, gboolean data_in, const guint8 *cdb, guint8 cdb_length)
{
  guint8 cbw[31];
  guint32 tag = ++f->tag;
  guint32 actual = 0;

  build_cbw (cbw, tag, data_length, data_in, cdb, cdb_length);
  g_assert_cmpint (bulk_out (f, cbw, sizeof cbw, &actual), ==, PB_URB_OK);
  g_assert_cmpuint (actual, ==, 31);
  return tag;
}

static void
clear_halt (Fixture *f, guint8 endpoint)
{
  pb_test_driver_expect_control (&f->driver, 0x02, PB_USB_REQ_CLEAR_FEATURE, PB_USB_FEATURE_ENDPOINT_HALT, endpoint,
                                 0, NULL, PB_URB_OK, NULL, 0);
}

static gboolean
endpoint_halted (Fixture *f, guint8 endpoint)
{
  PbUrb *urb = pb_test_driver_control (&f->driver, 0x82, PB_USB_REQ_GET_STATUS, 0, endpoint, 2, NULL);
  gboolean halted;

  g_assert_cmpint (urb->status, ==, PB_URB_OK);
  g_assert_cmpuint (urb->actual_length, ==, 2);
  halted = urb->buffer[0] & 1;
  pb_test_urb_free (urb);
  g_assert_cmpint (halted, ==, pb_virtual_device_get_halt (f->vdev, endpoint));
  return halted;
}

static void
parse_csw (PbUrb *urb, guint32 tag, BotResult *r)
{
  g_assert_cmpint (urb->status, ==, PB_URB_OK);
  g_assert_cmpuint (urb->actual_length, ==, 13);
  g_assert_cmpmem (urb->buffer, 4, "USBS", 4);
  g_assert_cmphex (urb->buffer[4] | urb->buffer[5] << 8 | urb->buffer[6] << 16 | (guint32) urb->buffer[7] << 24, ==, tag);
  r->residue = urb->buffer[8] | urb->buffer[9] << 8 | urb->buffer[10] << 16 | (guint32) urb->buffer[11] << 24;
  r->status = urb->buffer[12];
}

/* Reads the CSW; a stall is recovered as a host does it (clear the halt, ask again). */
static void
read_csw (Fixture *f, guint32 tag, BotResult *r)
{
  PbUrb *urb = bulk_in (f, 13);

  if (urb->status == PB_URB_EPIPE)
    {
      r->csw_stalled = TRUE;
      pb_test_urb_free (urb);
      clear_halt (f, EP_IN);
      urb = bulk_in (f, 13);
    }
  parse_csw (urb, tag, r);
  pb_test_urb_free (urb);
}

static void
expect_csw (Fixture *f, guint32 tag, guint32 residue, guint8 status)
{
  BotResult r = { 0 };

  read_csw (f, tag, &r);
  g_assert_false (r.csw_stalled);
  g_assert_cmpuint (r.status, ==, status);
  g_assert_cmpuint (r.residue, ==, residue);
}

/* One whole command with the data in a single request, as Linux's usb-storage does it: CBW,
 * data (a stall cleared), CSW (a stall cleared). */
static void
command (Fixture *f, const guint8 *cdb, guint8 cdb_length, gboolean data_in, guint8 *data, guint32 data_length,
         BotResult *r)
{
  guint32 tag;

  memset (r, 0, sizeof *r);
  tag = send_cbw (f, data_length, data_in, cdb, cdb_length);
  if (data_length > 0 && data_in)
    {
      PbUrb *urb = bulk_in (f, data_length);
      r->data_status = urb->status;
      r->data_actual = urb->actual_length;
      memcpy (data, urb->buffer, urb->actual_length);
      pb_test_urb_free (urb);
    }
  else if (data_length > 0)
    r->data_status = bulk_out (f, data, data_length, &r->data_actual);
  if (r->data_status == PB_URB_EPIPE)
    clear_halt (f, data_in ? EP_IN : EP_OUT);
  else
    g_assert_cmpint (r->data_status, ==, PB_URB_OK);
  read_csw (f, tag, r);
}

static void
request_sense (Fixture *f, guint8 *key, guint8 *asc, guint8 *ascq)
{
  static const guint8 cdb[6] = { PB_SCSI_REQUEST_SENSE, 0, 0, 0, 18, 0 };
  guint8 sense[18];
  BotResult r;

  command (f, cdb, sizeof cdb, TRUE, sense, sizeof sense, &r);
  g_assert_cmpuint (r.status, ==, 0);
  g_assert_cmpuint (r.data_actual, ==, 18);
  g_assert_cmpuint (r.residue, ==, 0);
  g_assert_cmphex (sense[0], ==, 0x70);
  g_assert_cmpuint (sense[7], ==, 10);
  *key = sense[2] & 0x0f;
  *asc = sense[12];
  if (ascq != NULL)
    *ascq = sense[13];
}

static void
expect_sense (Fixture *f, guint8 key, guint8 asc, guint8 ascq)
{
  guint8 got_key, got_asc, got_ascq;

  request_sense (f, &got_key, &got_asc, &got_ascq);
  g_assert_cmphex (got_key, ==, key);
  g_assert_cmphex (got_asc, ==, asc);
  g_assert_cmphex (got_ascq, ==, ascq);
}

static void
make_rw10 (guint8 cdb[10], guint8 opcode, guint32 lba, guint16 blocks)
{
  memset (cdb, 0, 10);
  cdb[0] = opcode;
  cdb[2] = lba >> 24; cdb[3] = lba >> 16; cdb[4] = lba >> 8; cdb[5] = lba;
  cdb[7] = blocks >> 8; cdb[8] = blocks;
}

static void
make_rw16 (guint8 cdb[16], guint8 opcode, guint64 lba, guint32 blocks)
{
  memset (cdb, 0, 16);
  cdb[0] = opcode;
  for (guint i = 0; i < 8; i++)
    cdb[2 + i] = lba >> (56 - 8 * i);
  cdb[10] = blocks >> 24; cdb[11] = blocks >> 16; cdb[12] = blocks >> 8; cdb[13] = blocks;
}

static void
assert_image (Fixture *f, guint64 offset, const guint8 *expected, gsize length)
{
  g_autofree guint8 *now = g_malloc (length);

  g_assert_cmpint (pread (f->image_fd, now, length, (off_t) offset), ==, (gssize) length);
  g_assert_cmpmem (now, length, expected, length);
}

static void
assert_image_unchanged (Fixture *f)
{
  assert_image (f, 0, f->contents, BLOCKS * BLOCK);
}

static guint32
read_be32 (const guint8 *p)
{
  return (guint32) p[0] << 24 | (guint32) p[1] << 16 | (guint32) p[2] << 8 | p[3];
}

/* ---- descriptors and class requests ---- */

static char *
get_string (Fixture *f, guint8 index)
{
  PbUrb *urb = pb_test_driver_control (&f->driver, 0x80, PB_USB_REQ_GET_DESCRIPTOR, 0x0300 | index, 0x0409, 255, NULL);
  GString *s = g_string_new (NULL);

  g_assert_cmpint (urb->status, ==, PB_URB_OK);
  g_assert_cmpuint (urb->actual_length, ==, urb->buffer[0]);
  g_assert_cmpuint (urb->buffer[1], ==, PB_USB_DT_STRING);
  for (guint i = 2; i + 1 < urb->actual_length; i += 2)
    {
      g_assert_cmpuint (urb->buffer[i + 1], ==, 0); /* ASCII only */
      g_string_append_c (s, (char) urb->buffer[i]);
    }
  pb_test_urb_free (urb);
  return g_string_free (s, FALSE);
}

static void
test_descriptors (Fixture *f, gconstpointer data)
{
  g_autofree char *manufacturer = NULL, *product = NULL, *serial = NULL;
  PbUsbipDeviceRecord record = { 0 };
  guint8 max_lun = 0;
  PbUrb *urb;

  /* Device descriptor: class per interface, USB 2.0, three strings, one configuration. */
  urb = pb_test_driver_control (&f->driver, 0x80, PB_USB_REQ_GET_DESCRIPTOR, 0x0100, 0, 64, NULL);
  g_assert_cmpint (urb->status, ==, PB_URB_OK);
  g_assert_cmpuint (urb->actual_length, ==, 18);
  g_assert_cmpuint (urb->buffer[1], ==, PB_USB_DT_DEVICE);
  g_assert_cmphex (urb->buffer[2] | urb->buffer[3] << 8, ==, 0x0200);
  g_assert_cmpuint (urb->buffer[4], ==, 0);
  g_assert_cmpuint (urb->buffer[16], ==, 3); /* iSerialNumber */
  g_assert_cmpuint (urb->buffer[17], ==, 1);
  pb_test_urb_free (urb);

  /* Configuration: one BOT interface with a 512-byte bulk endpoint each way. */
  urb = pb_test_driver_control (&f->driver, 0x80, PB_USB_REQ_GET_DESCRIPTOR, 0x0200, 0, 255, NULL);
  g_assert_cmpint (urb->status, ==, PB_URB_OK);
  g_assert_cmpuint (urb->actual_length, ==, 32);
  g_assert_cmpuint (urb->buffer[2], ==, 32);
  g_assert_cmpuint (pb_test_find_interface (urb->buffer, urb->actual_length, 0x08), ==, 0);
  g_assert_cmphex (urb->buffer[9 + 6], ==, 0x06); /* SCSI transparent */
  g_assert_cmphex (urb->buffer[9 + 7], ==, 0x50); /* Bulk-Only */
  g_assert_cmphex (pb_test_find_endpoint (urb->buffer, urb->actual_length, 0x08, 2, TRUE), ==, EP_IN);
  g_assert_cmphex (pb_test_find_endpoint (urb->buffer, urb->actual_length, 0x08, 2, FALSE), ==, EP_OUT);
  g_assert_cmpuint (urb->buffer[18 + 4] | urb->buffer[18 + 5] << 8, ==, 512);
  g_assert_cmpuint (urb->buffer[25 + 4] | urb->buffer[25 + 5] << 8, ==, 512);
  pb_test_urb_free (urb);

  /* What a high-speed device says about full speed. */
  urb = pb_test_driver_control (&f->driver, 0x80, PB_USB_REQ_GET_DESCRIPTOR, 0x0600, 0, 10, NULL);
  g_assert_cmpint (urb->status, ==, PB_URB_OK);
  g_assert_cmpuint (urb->actual_length, ==, 10);
  g_assert_cmpuint (urb->buffer[1], ==, PB_USB_DT_DEVICE_QUALIFIER);
  pb_test_urb_free (urb);
  urb = pb_test_driver_control (&f->driver, 0x80, PB_USB_REQ_GET_DESCRIPTOR, 0x0700, 0, 255, NULL);
  g_assert_cmpint (urb->status, ==, PB_URB_OK);
  g_assert_cmpuint (urb->actual_length, ==, 32);
  g_assert_cmpuint (urb->buffer[1], ==, 0x07);
  g_assert_cmpuint (urb->buffer[18 + 4] | urb->buffer[18 + 5] << 8, ==, 64);
  pb_test_urb_free (urb);

  manufacturer = get_string (f, 1);
  product = get_string (f, 2);
  serial = get_string (f, 3);
  g_assert_cmpstr (manufacturer, ==, "Plugboard");
  g_assert_cmpstr (product, ==, "Plugboard Virtual Disk");
  /* BOT 4.1.1: at least 12 characters, hex digits only. */
  g_assert_cmpuint (strlen (serial), >=, 12);
  for (const char *p = serial; *p != '\0'; p++)
    g_assert_true (g_ascii_isxdigit (*p) && !g_ascii_islower (*p));
  g_assert_cmpstr (serial, ==, pb_mass_storage_get_serial (f->storage));

  pb_device_describe (f->device, &record);
  g_assert_cmpuint (record.speed, ==, PB_USBIP_SPEED_HIGH);
  g_assert_cmpuint (record.num_interfaces, ==, 1);
  g_assert_cmphex (record.interfaces[0].interface_class, ==, 0x08);
  g_assert_cmphex (record.interfaces[0].interface_subclass, ==, 0x06);
  g_assert_cmphex (record.interfaces[0].interface_protocol, ==, 0x50);
  g_assert_cmpuint (pb_mass_storage_get_block_count (f->storage), ==, BLOCKS);
  g_assert_false (pb_mass_storage_is_read_only (f->storage));

  /* Get Max LUN: one LUN. Wrong interface, direction or a vendor request stall. */
  pb_test_driver_expect_control (&f->driver, 0xa1, 0xfe, 0, 0, 1, NULL, PB_URB_OK, &max_lun, 1);
  pb_test_driver_expect_control (&f->driver, 0xa1, 0xfe, 0, 1, 1, NULL, PB_URB_EPIPE, NULL, 0);
  pb_test_driver_expect_control (&f->driver, 0x21, 0xfe, 0, 0, 0, NULL, PB_URB_EPIPE, NULL, 0);
  pb_test_driver_expect_control (&f->driver, 0xc1, 0x01, 0, 0, 4, NULL, PB_URB_EPIPE, NULL, 0);
  /* Bulk-Only Mass Storage Reset with a data stage is malformed. */
  pb_test_driver_expect_control (&f->driver, 0x21, 0xff, 0, 0, 0, NULL, PB_URB_OK, NULL, 0);
  pb_test_driver_expect_control (&f->driver, 0xa1, 0xff, 0, 0, 1, NULL, PB_URB_EPIPE, NULL, 0);
}

/* ---- SCSI commands ---- */

static void
test_inquiry (Fixture *f, gconstpointer data)
{
  static const guint8 standard[6] = { PB_SCSI_INQUIRY, 0, 0, 0, 36, 0 };
  static const guint8 vpd_pages[6] = { PB_SCSI_INQUIRY, 1, 0x00, 0, 255, 0 };
  static const guint8 vpd_serial[6] = { PB_SCSI_INQUIRY, 1, 0x80, 0, 255, 0 };
  static const guint8 vpd_ids[6] = { PB_SCSI_INQUIRY, 1, 0x83, 0, 255, 0 };
  static const guint8 vpd_unknown[6] = { PB_SCSI_INQUIRY, 1, 0xb0, 0, 255, 0 };
  static const guint8 page_without_evpd[6] = { PB_SCSI_INQUIRY, 0, 0x80, 0, 255, 0 };
  const char *serial = pb_mass_storage_get_serial (f->storage);
  guint8 buf[255];
  BotResult r;

  command (f, standard, sizeof standard, TRUE, buf, 36, &r);
  g_assert_cmpuint (r.status, ==, 0);
  g_assert_cmpuint (r.data_actual, ==, 36);
  g_assert_cmpuint (r.residue, ==, 0);
  g_assert_cmphex (buf[0], ==, 0x00);  /* direct access */
  g_assert_cmphex (buf[1], ==, 0x80);  /* removable */
  g_assert_cmpuint (buf[4] + 5, ==, 36);
  g_assert_cmpmem (buf + 8, 8, "Plugbrd ", 8);
  g_assert_cmpmem (buf + 16, 16, "Virtual Disk    ", 16);

  command (f, vpd_pages, sizeof vpd_pages, TRUE, buf, 255, &r);
  g_assert_cmpuint (r.status, ==, 0);
  g_assert_cmpuint (r.data_actual, ==, 4 + buf[3]);
  g_assert_cmpuint (r.residue, ==, 255 - r.data_actual);
  g_assert_true (r.csw_stalled); /* short data ends with a stall of bulk IN */
  g_assert_nonnull (memchr (buf + 4, 0x80, buf[3]));
  g_assert_nonnull (memchr (buf + 4, 0x83, buf[3]));

  command (f, vpd_serial, sizeof vpd_serial, TRUE, buf, 255, &r);
  g_assert_cmpuint (r.status, ==, 0);
  g_assert_cmphex (buf[1], ==, 0x80);
  g_assert_cmpuint (buf[3], ==, strlen (serial));
  g_assert_cmpmem (buf + 4, buf[3], serial, strlen (serial));

  command (f, vpd_ids, sizeof vpd_ids, TRUE, buf, 255, &r);
  g_assert_cmpuint (r.status, ==, 0);
  g_assert_cmphex (buf[1], ==, 0x83);
  g_assert_cmpuint (r.data_actual, ==, 4 + (buf[2] << 8 | buf[3]));
  g_assert_cmphex (buf[5] & 0x0f, ==, 0x01); /* T10 vendor ID designator */
  g_assert_cmpuint (buf[7], ==, 8 + 16 + strlen (serial));
  g_assert_cmpmem (buf + 8, 8, "Plugbrd ", 8);
  g_assert_cmpmem (buf + 32, strlen (serial), serial, strlen (serial));

  /* Failed commands that wanted data: bulk IN stalls, the CSW says failed, full residue. */
  command (f, vpd_unknown, sizeof vpd_unknown, TRUE, buf, 255, &r);
  g_assert_cmpint (r.data_status, ==, PB_URB_EPIPE);
  g_assert_cmpuint (r.status, ==, 1);
  g_assert_cmpuint (r.residue, ==, 255);
  expect_sense (f, PB_SCSI_SENSE_ILLEGAL_REQUEST, PB_SCSI_ASC_INVALID_FIELD_IN_CDB, 0);
  command (f, page_without_evpd, sizeof page_without_evpd, TRUE, buf, 255, &r);
  g_assert_cmpuint (r.status, ==, 1);
  expect_sense (f, PB_SCSI_SENSE_ILLEGAL_REQUEST, PB_SCSI_ASC_INVALID_FIELD_IN_CDB, 0);

  /* REQUEST SENSE clears the sense, and a passing command starts with none. */
  expect_sense (f, PB_SCSI_SENSE_NO_SENSE, 0, 0);
}

static void
test_capacity (Fixture *f, gconstpointer data)
{
  static const guint8 capacity10[10] = { PB_SCSI_READ_CAPACITY_10, 0 };
  static const guint8 capacity10_lba_without_pmi[10] = { PB_SCSI_READ_CAPACITY_10, 0, 0, 0, 0, 1, 0, 0, 0, 0 };
  static const guint8 capacity16[16] = { PB_SCSI_SERVICE_ACTION_IN_16, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0 };
  static const guint8 capacity16_short[16] = { PB_SCSI_SERVICE_ACTION_IN_16, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 12, 0, 0 };
  static const guint8 format_capacities[10] = { PB_SCSI_READ_FORMAT_CAPACITIES, 0, 0, 0, 0, 0, 0, 0, 252, 0 };
  guint8 buf[252];
  BotResult r;

  command (f, capacity10, sizeof capacity10, TRUE, buf, 8, &r);
  g_assert_cmpuint (r.status, ==, 0);
  g_assert_cmpuint (r.data_actual, ==, 8);
  g_assert_cmpuint (read_be32 (buf), ==, BLOCKS - 1);
  g_assert_cmpuint (read_be32 (buf + 4), ==, BLOCK);

  command (f, capacity10_lba_without_pmi, sizeof capacity10_lba_without_pmi, TRUE, buf, 8, &r);
  g_assert_cmpuint (r.status, ==, 1);
  expect_sense (f, PB_SCSI_SENSE_ILLEGAL_REQUEST, PB_SCSI_ASC_INVALID_FIELD_IN_CDB, 0);

  command (f, capacity16, sizeof capacity16, TRUE, buf, 32, &r);
  g_assert_cmpuint (r.status, ==, 0);
  g_assert_cmpuint (r.data_actual, ==, 32);
  g_assert_cmpuint (read_be32 (buf), ==, 0);
  g_assert_cmpuint (read_be32 (buf + 4), ==, BLOCKS - 1);
  g_assert_cmpuint (read_be32 (buf + 8), ==, BLOCK);

  /* The allocation length cuts the answer. */
  command (f, capacity16_short, sizeof capacity16_short, TRUE, buf, 12, &r);
  g_assert_cmpuint (r.status, ==, 0);
  g_assert_cmpuint (r.data_actual, ==, 12);
  g_assert_cmpuint (r.residue, ==, 0);
  g_assert_cmpuint (read_be32 (buf + 8), ==, BLOCK);

  command (f, format_capacities, sizeof format_capacities, TRUE, buf, 252, &r);
  g_assert_cmpuint (r.status, ==, 0);
  g_assert_cmpuint (r.data_actual, ==, 12);
  g_assert_cmpuint (r.residue, ==, 240);
  g_assert_cmpuint (buf[3], ==, 8);
  g_assert_cmpuint (read_be32 (buf + 4), ==, BLOCKS);
  g_assert_cmphex (buf[8], ==, 0x02); /* formatted medium */
  g_assert_cmpuint (read_be32 (buf + 8) & 0xffffff, ==, BLOCK);
}

/* Writes with WRITE(10) in three uneven OUT requests, reads back with READ(10) in three IN
 * requests, and reads the whole disk in one. */
static void
test_read_write_10 (Fixture *f, gconstpointer data)
{
  const guint32 lba = 10, blocks = 8, length = blocks * BLOCK;
  const guint32 out_split[] = { 1000, 3000, length - 4000 };
  const guint32 in_split[] = { 512, 2048, length - 2560 };
  g_autofree guint8 *fresh = g_malloc (length);
  g_autofree guint8 *back = g_malloc (length);
  g_autofree guint8 *whole = g_malloc (BLOCKS * BLOCK);
  guint8 cdb[10];
  guint32 tag, offset = 0;
  BotResult r;

  for (guint i = 0; i < length; i++)
    fresh[i] = g_test_rand_int_range (0, 256);

  make_rw10 (cdb, PB_SCSI_WRITE_10, lba, blocks);
  tag = send_cbw (f, length, FALSE, cdb, sizeof cdb);
  for (guint i = 0; i < G_N_ELEMENTS (out_split); i++)
    {
      guint32 actual = 0;
      g_assert_cmpint (bulk_out (f, fresh + offset, out_split[i], &actual), ==, PB_URB_OK);
      g_assert_cmpuint (actual, ==, out_split[i]);
      offset += out_split[i];
    }
  expect_csw (f, tag, 0, 0);
  assert_image (f, (guint64) lba * BLOCK, fresh, length);
  assert_image (f, 0, f->contents, lba * BLOCK); /* neighbours untouched */
  assert_image (f, (guint64) (lba + blocks) * BLOCK, f->contents + (lba + blocks) * BLOCK,
                (BLOCKS - lba - blocks) * BLOCK);

  make_rw10 (cdb, PB_SCSI_READ_10, lba, blocks);
  tag = send_cbw (f, length, TRUE, cdb, sizeof cdb);
  offset = 0;
  for (guint i = 0; i < G_N_ELEMENTS (in_split); i++)
    {
      PbUrb *urb = bulk_in (f, in_split[i]);
      g_assert_cmpint (urb->status, ==, PB_URB_OK);
      g_assert_cmpuint (urb->actual_length, ==, in_split[i]);
      memcpy (back + offset, urb->buffer, in_split[i]);
      offset += in_split[i];
      pb_test_urb_free (urb);
    }
  expect_csw (f, tag, 0, 0);
  g_assert_cmpmem (back, length, fresh, length);

  memcpy (f->contents + lba * BLOCK, fresh, length);
  make_rw10 (cdb, PB_SCSI_READ_10, 0, BLOCKS);
  command (f, cdb, sizeof cdb, TRUE, whole, BLOCKS * BLOCK, &r);
  g_assert_cmpuint (r.status, ==, 0);
  g_assert_cmpuint (r.residue, ==, 0);
  g_assert_false (r.csw_stalled);
  g_assert_cmpmem (whole, BLOCKS * BLOCK, f->contents, BLOCKS * BLOCK);

  /* A transfer length of 0 moves nothing and passes. */
  make_rw10 (cdb, PB_SCSI_READ_10, 5, 0);
  command (f, cdb, sizeof cdb, TRUE, NULL, 0, &r);
  g_assert_cmpuint (r.status, ==, 0);
}

static void
test_read_write_16_and_6 (Fixture *f, gconstpointer data)
{
  const guint32 length = 4 * BLOCK;
  g_autofree guint8 *fresh = g_malloc (length);
  g_autofree guint8 *back = g_malloc (length);
  guint8 cdb16[16], cdb6[6] = { 0 };
  BotResult r;

  for (guint i = 0; i < length; i++)
    fresh[i] = g_test_rand_int_range (0, 256);

  make_rw16 (cdb16, PB_SCSI_WRITE_16, BLOCKS - 4, 4);
  command (f, cdb16, sizeof cdb16, FALSE, fresh, length, &r);
  g_assert_cmpuint (r.status, ==, 0);
  g_assert_cmpuint (r.residue, ==, 0);
  g_assert_cmpuint (r.data_actual, ==, length);
  assert_image (f, (guint64) (BLOCKS - 4) * BLOCK, fresh, length);

  make_rw16 (cdb16, PB_SCSI_READ_16, BLOCKS - 4, 4);
  command (f, cdb16, sizeof cdb16, TRUE, back, length, &r);
  g_assert_cmpuint (r.status, ==, 0);
  g_assert_cmpuint (r.residue, ==, 0);
  g_assert_cmpmem (back, length, fresh, length);

  /* Protection information is not supported. */
  make_rw16 (cdb16, PB_SCSI_READ_16, 0, 1);
  cdb16[1] = 0x20;
  command (f, cdb16, sizeof cdb16, TRUE, back, BLOCK, &r);
  g_assert_cmpuint (r.status, ==, 1);
  expect_sense (f, PB_SCSI_SENSE_ILLEGAL_REQUEST, PB_SCSI_ASC_INVALID_FIELD_IN_CDB, 0);

  /* The six-byte forms, at LBA 3, two blocks. */
  cdb6[0] = PB_SCSI_WRITE_6;
  cdb6[3] = 3;
  cdb6[4] = 2;
  command (f, cdb6, sizeof cdb6, FALSE, fresh, 2 * BLOCK, &r);
  g_assert_cmpuint (r.status, ==, 0);
  assert_image (f, 3 * BLOCK, fresh, 2 * BLOCK);
  cdb6[0] = PB_SCSI_READ_6;
  command (f, cdb6, sizeof cdb6, TRUE, back, 2 * BLOCK, &r);
  g_assert_cmpuint (r.status, ==, 0);
  g_assert_cmpmem (back, 2 * BLOCK, fresh, 2 * BLOCK);
}

/* The data and CSW requests may reach the device before their CBW: they wait, in order. */
static void
test_in_before_cbw (Fixture *f, gconstpointer data)
{
  PbUrb *data_urb = submit_in (f, 2 * BLOCK);
  PbUrb *csw_urb = submit_in (f, 13);
  PbUrb *cbw_urb = pb_test_driver_urb_new (&f->driver, 2, PB_USBIP_DIR_OUT, 31);
  guint8 cdb[10];
  BotResult r = { 0 };

  g_assert_cmpuint (f->driver.completed.length, ==, 0);
  make_rw10 (cdb, PB_SCSI_READ_10, 7, 2);
  build_cbw (cbw_urb->buffer, 77, 2 * BLOCK, TRUE, cdb, sizeof cdb);
  pb_device_submit (f->device, cbw_urb);

  take (&f->driver, cbw_urb);
  g_assert_cmpint (cbw_urb->status, ==, PB_URB_OK);
  take (&f->driver, data_urb);
  g_assert_cmpint (data_urb->status, ==, PB_URB_OK);
  g_assert_cmpmem (data_urb->buffer, data_urb->actual_length, f->contents + 7 * BLOCK, 2 * BLOCK);
  take (&f->driver, csw_urb);
  parse_csw (csw_urb, 77, &r);
  g_assert_cmpuint (r.status, ==, 0);
  g_assert_cmpuint (r.residue, ==, 0);
  pb_test_urb_free (cbw_urb);
  pb_test_urb_free (data_urb);
  pb_test_urb_free (csw_urb);

  /* During a write the CSW request waits for the last OUT data. */
  {
    guint8 block[BLOCK];
    guint32 tag;

    memset (block, 0xab, sizeof block);
    make_rw10 (cdb, PB_SCSI_WRITE_10, 9, 1);
    tag = send_cbw (f, BLOCK, FALSE, cdb, sizeof cdb);
    csw_urb = submit_in (f, 13);
    g_assert_cmpuint (f->driver.completed.length, ==, 0);
    g_assert_cmpint (bulk_out (f, block, 100, NULL), ==, PB_URB_OK);
    g_assert_cmpuint (f->driver.completed.length, ==, 0);
    g_assert_cmpint (bulk_out (f, block + 100, BLOCK - 100, NULL), ==, PB_URB_OK);
    take (&f->driver, csw_urb);
    parse_csw (csw_urb, tag, &r);
    g_assert_cmpuint (r.status, ==, 0);
    pb_test_urb_free (csw_urb);
    assert_image (f, 9 * BLOCK, block, BLOCK);
  }
}

static void
test_out_of_range (Fixture *f, gconstpointer data)
{
  guint8 cdb10[10], cdb16[16];
  g_autofree guint8 *buf = g_malloc0 (4 * BLOCK);
  BotResult r;

  /* Reading past the end: no data (bulk IN stalls), failed, full residue. */
  make_rw10 (cdb10, PB_SCSI_READ_10, BLOCKS - 1, 2);
  command (f, cdb10, sizeof cdb10, TRUE, buf, 2 * BLOCK, &r);
  g_assert_cmpint (r.data_status, ==, PB_URB_EPIPE);
  g_assert_cmpuint (r.status, ==, 1);
  g_assert_cmpuint (r.residue, ==, 2 * BLOCK);
  expect_sense (f, PB_SCSI_SENSE_ILLEGAL_REQUEST, PB_SCSI_ASC_LBA_OUT_OF_RANGE, 0);

  /* An LBA at the capacity is out of range even for zero blocks. */
  make_rw10 (cdb10, PB_SCSI_READ_10, BLOCKS, 0);
  command (f, cdb10, sizeof cdb10, TRUE, NULL, 0, &r);
  g_assert_cmpuint (r.status, ==, 1);
  expect_sense (f, PB_SCSI_SENSE_ILLEGAL_REQUEST, PB_SCSI_ASC_LBA_OUT_OF_RANGE, 0);

  /* Writing far past the end (the 64-bit LBA must not wrap): the data is taken and dropped. */
  make_rw16 (cdb16, PB_SCSI_WRITE_16, G_GUINT64_CONSTANT (0xffffffffffffff00), 0x100);
  command (f, cdb16, sizeof cdb16, FALSE, buf, BLOCK, &r);
  g_assert_cmpint (r.data_status, ==, PB_URB_OK);
  g_assert_cmpuint (r.status, ==, 1);
  g_assert_cmpuint (r.residue, ==, BLOCK);
  expect_sense (f, PB_SCSI_SENSE_ILLEGAL_REQUEST, PB_SCSI_ASC_LBA_OUT_OF_RANGE, 0);
  assert_image_unchanged (f);
}

static void
test_unknown_opcode (Fixture *f, gconstpointer data)
{
  static const guint8 vendor[6] = { 0xc7, 0, 0, 0, 0, 0 };
  static const guint8 log_sense[10] = { 0x4d, 0, 0, 0, 0, 0, 0, 0, 64, 0 };
  static const guint8 wrong_service_action[16] = { PB_SCSI_SERVICE_ACTION_IN_16, 0x11, 0 };
  static const guint8 tur[6] = { 0 };
  guint8 buf[64];
  BotResult r;

  command (f, vendor, sizeof vendor, FALSE, NULL, 0, &r);
  g_assert_cmpuint (r.status, ==, 1);
  g_assert_cmpuint (r.residue, ==, 0);
  expect_sense (f, PB_SCSI_SENSE_ILLEGAL_REQUEST, PB_SCSI_ASC_INVALID_OPCODE, 0);

  command (f, log_sense, sizeof log_sense, TRUE, buf, 64, &r);
  g_assert_cmpuint (r.status, ==, 1);
  g_assert_cmpuint (r.residue, ==, 64);
  expect_sense (f, PB_SCSI_SENSE_ILLEGAL_REQUEST, PB_SCSI_ASC_INVALID_OPCODE, 0);

  /* A CDB shorter than its opcode group's. */
  command (f, log_sense, 6, TRUE, buf, 64, &r);
  g_assert_cmpuint (r.status, ==, 1);
  expect_sense (f, PB_SCSI_SENSE_ILLEGAL_REQUEST, PB_SCSI_ASC_INVALID_OPCODE, 0);

  command (f, wrong_service_action, sizeof wrong_service_action, TRUE, buf, 32, &r);
  g_assert_cmpuint (r.status, ==, 1);
  expect_sense (f, PB_SCSI_SENSE_ILLEGAL_REQUEST, PB_SCSI_ASC_INVALID_FIELD_IN_CDB, 0);

  command (f, tur, sizeof tur, FALSE, NULL, 0, &r);
  g_assert_cmpuint (r.status, ==, 0);
}

/* Host and device disagree on the amount (cases 4, 5, 9, 11): no phase error, the residue
 * says by how much. */
static void
test_residue (Fixture *f, gconstpointer data)
{
  static const guint8 inquiry[6] = { PB_SCSI_INQUIRY, 0, 0, 0, 96, 0 };
  static const guint8 tur[6] = { 0 };
  guint8 buf[3 * BLOCK], cdb[10];
  guint32 tag;
  PbUrb *urb;
  BotResult r;

  /* Case 5, one request: short data, then the CSW request stalls (the end of the data). */
  command (f, inquiry, sizeof inquiry, TRUE, buf, 96, &r);
  g_assert_cmpint (r.data_status, ==, PB_URB_OK);
  g_assert_cmpuint (r.data_actual, ==, 36);
  g_assert_true (r.csw_stalled);
  g_assert_cmpuint (r.status, ==, 0);
  g_assert_cmpuint (r.residue, ==, 96 - 36);

  /* Case 5 over several requests: the one after the data stalls. */
  make_rw10 (cdb, PB_SCSI_READ_10, 4, 1);
  tag = send_cbw (f, 2 * BLOCK, TRUE, cdb, sizeof cdb);
  urb = bulk_in (f, BLOCK);
  g_assert_cmpint (urb->status, ==, PB_URB_OK);
  g_assert_cmpmem (urb->buffer, urb->actual_length, f->contents + 4 * BLOCK, BLOCK);
  pb_test_urb_free (urb);
  urb = bulk_in (f, BLOCK);
  g_assert_cmpint (urb->status, ==, PB_URB_EPIPE);
  pb_test_urb_free (urb);
  g_assert_true (endpoint_halted (f, EP_IN));
  clear_halt (f, EP_IN);
  expect_csw (f, tag, BLOCK, 0);

  /* Case 4: the host wants data, the command has none. */
  command (f, tur, sizeof tur, TRUE, buf, 64, &r);
  g_assert_cmpint (r.data_status, ==, PB_URB_EPIPE);
  g_assert_cmpuint (r.status, ==, 0);
  g_assert_cmpuint (r.residue, ==, 64);

  /* Case 9: the host sends data with a command that takes none: taken, dropped. */
  command (f, tur, sizeof tur, FALSE, buf, BLOCK, &r);
  g_assert_cmpint (r.data_status, ==, PB_URB_OK);
  g_assert_cmpuint (r.data_actual, ==, BLOCK);
  g_assert_cmpuint (r.status, ==, 0);
  g_assert_cmpuint (r.residue, ==, BLOCK);

  /* Case 11: the host sends more than the write takes: the block is written, the rest dropped. */
  memset (buf, 0x3c, sizeof buf);
  make_rw10 (cdb, PB_SCSI_WRITE_10, 20, 1);
  command (f, cdb, sizeof cdb, FALSE, buf, 3 * BLOCK, &r);
  g_assert_cmpuint (r.status, ==, 0);
  g_assert_cmpuint (r.residue, ==, 2 * BLOCK);
  assert_image (f, 20 * BLOCK, buf, BLOCK);
  assert_image (f, 21 * BLOCK, f->contents + 21 * BLOCK, 2 * BLOCK);

  /* A CSW request too small for the CSW babbles; the command is over all the same. */
  tag = send_cbw (f, 0, FALSE, tur, sizeof tur);
  urb = bulk_in (f, 0);
  g_assert_cmpint (urb->status, ==, PB_URB_OK); /* a zero-length request takes nothing */
  g_assert_cmpuint (urb->actual_length, ==, 0);
  pb_test_urb_free (urb);
  urb = bulk_in (f, 8);
  g_assert_cmpint (urb->status, ==, PB_URB_EOVERFLOW);
  g_assert_cmpuint (urb->actual_length, ==, 8);
  g_assert_cmpmem (urb->buffer, 4, "USBS", 4);
  pb_test_urb_free (urb);
  command (f, tur, sizeof tur, FALSE, NULL, 0, &r);
  g_assert_cmpuint (r.status, ==, 0);
}

/* Phase errors (cases 2, 3, 7, 8, 10, 13), each followed by a reset recovery as a host does. */
static void
reset_recovery (Fixture *f)
{
  pb_test_driver_expect_control (&f->driver, 0x21, 0xff, 0, 0, 0, NULL, PB_URB_OK, NULL, 0);
  clear_halt (f, EP_IN);
  clear_halt (f, EP_OUT);
}

static void
test_phase_errors (Fixture *f, gconstpointer data)
{
  static const guint8 inquiry[6] = { PB_SCSI_INQUIRY, 0, 0, 0, 36, 0 };
  guint8 buf[2 * BLOCK], cdb[10];
  guint32 tag;
  BotResult r;

  memset (buf, 0xee, sizeof buf);

  /* Case 2: no data expected, the device has some. */
  command (f, inquiry, sizeof inquiry, TRUE, NULL, 0, &r);
  g_assert_cmpuint (r.status, ==, 2);
  reset_recovery (f);

  /* Case 3: no data expected, the device wants some: nothing written. */
  make_rw10 (cdb, PB_SCSI_WRITE_10, 1, 1);
  command (f, cdb, sizeof cdb, FALSE, NULL, 0, &r);
  g_assert_cmpuint (r.status, ==, 2);
  reset_recovery (f);

  /* Case 7: the host reads less than the command moves: it gets what it asked for. */
  make_rw10 (cdb, PB_SCSI_READ_10, 0, 2);
  command (f, cdb, sizeof cdb, TRUE, buf, BLOCK, &r);
  g_assert_cmpint (r.data_status, ==, PB_URB_OK);
  g_assert_cmpuint (r.data_actual, ==, BLOCK);
  g_assert_cmpmem (buf, BLOCK, f->contents, BLOCK);
  g_assert_cmpuint (r.status, ==, 2);
  reset_recovery (f);

  /* Case 8: the host reads, the device wants to receive: bulk IN stalls. */
  make_rw10 (cdb, PB_SCSI_WRITE_10, 1, 1);
  tag = send_cbw (f, BLOCK, TRUE, cdb, sizeof cdb);
  {
    PbUrb *urb = bulk_in (f, BLOCK);
    g_assert_cmpint (urb->status, ==, PB_URB_EPIPE);
    g_assert_cmpuint (urb->actual_length, ==, 0);
    pb_test_urb_free (urb);
  }
  g_assert_true (endpoint_halted (f, EP_IN));
  clear_halt (f, EP_IN);
  expect_csw (f, tag, BLOCK, 2);
  reset_recovery (f);

  /* Case 10: the host sends, the device wants to send: bulk OUT stalls. */
  make_rw10 (cdb, PB_SCSI_READ_10, 1, 1);
  tag = send_cbw (f, BLOCK, FALSE, cdb, sizeof cdb);
  g_assert_true (endpoint_halted (f, EP_OUT));
  g_assert_cmpint (bulk_out (f, buf, BLOCK, NULL), ==, PB_URB_EPIPE);
  clear_halt (f, EP_OUT);
  expect_csw (f, tag, BLOCK, 2);
  reset_recovery (f);

  /* Case 13: the host sends less than the write needs: bulk OUT stalls, nothing written. */
  make_rw10 (cdb, PB_SCSI_WRITE_10, 1, 2);
  command (f, cdb, sizeof cdb, FALSE, buf, BLOCK, &r);
  g_assert_cmpint (r.data_status, ==, PB_URB_EPIPE);
  g_assert_cmpuint (r.status, ==, 2);
  reset_recovery (f);

  assert_image_unchanged (f);
  make_rw10 (cdb, PB_SCSI_READ_10, 0, 2);
  command (f, cdb, sizeof cdb, TRUE, buf, 2 * BLOCK, &r);
  g_assert_cmpuint (r.status, ==, 0);
  g_assert_cmpmem (buf, 2 * BLOCK, f->contents, 2 * BLOCK);
}

static void
test_invalid_cbw (Fixture *f, gconstpointer data)
{
  static const guint8 tur[6] = { 0 };
  struct {
    const char *what;
    guint length;
    guint offset;
    guint8 value;
  } bad[] = {
    { "no signature", 31, 0, 'X' },
    { "30 bytes", 30, 0, 'U' },
    { "32 bytes", 32, 0, 'U' },
    { "LUN 1", 31, 13, 1 },
    { "reserved flag bit", 31, 12, 0x01 },
    { "CDB length 0", 31, 14, 0 },
    { "CDB length 17", 31, 14, 17 },
  };

  for (guint i = 0; i < G_N_ELEMENTS (bad); i++)
    {
      guint8 cbw[32] = { 0 };
      PbUrb *held;
      BotResult r;

      g_test_message ("invalid CBW: %s", bad[i].what);
      build_cbw (cbw, 1000 + i, 0, FALSE, tur, sizeof tur);
      cbw[bad[i].offset] = bad[i].value;

      /* A CSW request already waiting is stalled along with the pipe. */
      held = submit_in (f, 13);
      g_assert_cmpint (bulk_out (f, cbw, bad[i].length, NULL), ==, PB_URB_EPIPE);
      pb_test_driver_take (&f->driver, held);
      g_assert_cmpint (held->status, ==, PB_URB_EPIPE);
      pb_test_urb_free (held);
      g_assert_true (endpoint_halted (f, EP_IN));
      g_assert_true (endpoint_halted (f, EP_OUT));

      /* Clearing the halts alone does not help: both stay halted until a reset recovery. */
      clear_halt (f, EP_IN);
      clear_halt (f, EP_OUT);
      g_assert_true (endpoint_halted (f, EP_IN));
      g_assert_true (endpoint_halted (f, EP_OUT));
      build_cbw (cbw, 2000 + i, 0, FALSE, tur, sizeof tur);
      g_assert_cmpint (bulk_out (f, cbw, 31, NULL), ==, PB_URB_EPIPE);
      held = bulk_in (f, 13);
      g_assert_cmpint (held->status, ==, PB_URB_EPIPE);
      pb_test_urb_free (held);

      /* The class reset alone keeps the halts (BOT 3.1); clearing them then works. */
      pb_test_driver_expect_control (&f->driver, 0x21, 0xff, 0, 0, 0, NULL, PB_URB_OK, NULL, 0);
      g_assert_true (endpoint_halted (f, EP_IN));
      g_assert_true (endpoint_halted (f, EP_OUT));
      clear_halt (f, EP_IN);
      clear_halt (f, EP_OUT);
      g_assert_false (endpoint_halted (f, EP_IN));
      g_assert_false (endpoint_halted (f, EP_OUT));

      command (f, tur, sizeof tur, FALSE, NULL, 0, &r);
      g_assert_cmpuint (r.status, ==, 0);
    }

  /* A second CBW before the CSW is refused; the first command's CSW still comes. */
  {
    guint8 cbw[31];
    guint32 tag = send_cbw (f, 0, FALSE, tur, sizeof tur);

    build_cbw (cbw, 3000, 0, FALSE, tur, sizeof tur);
    g_assert_cmpint (bulk_out (f, cbw, sizeof cbw, NULL), ==, PB_URB_EPIPE);
    clear_halt (f, EP_OUT);
    expect_csw (f, tag, 0, 0);
  }
}

static void
test_cancel_held (Fixture *f, gconstpointer data)
{
  static const guint8 tur[6] = { 0 };
  PbUrb *first = submit_in (f, 13);
  PbUrb *second = submit_in (f, 13);
  PbUrb *third = submit_in (f, 13);
  BotResult r = { 0 };
  guint32 tag;

  g_assert_cmpuint (f->driver.completed.length, ==, 0);

  /* The middle one goes first, and comes back at once: an unlinked request does not wait for
   * the one before it. */
  second->cancelled = TRUE;
  pb_device_cancel (f->device, second);
  pb_test_driver_take (&f->driver, second);
  g_assert_cmpint (second->status, ==, PB_URB_ECONNRESET);
  first->cancelled = TRUE;
  pb_device_cancel (f->device, first);
  pb_test_driver_take (&f->driver, first);
  g_assert_cmpint (first->status, ==, PB_URB_ECONNRESET);
  g_assert_cmpuint (f->driver.completed.length, ==, 0);

  tag = send_cbw (f, 0, FALSE, tur, sizeof tur);
  pb_test_driver_take (&f->driver, third);
  parse_csw (third, tag, &r);
  g_assert_cmpuint (r.status, ==, 0);

  pb_test_urb_free (first);
  pb_test_urb_free (second);
  pb_test_urb_free (third);
}

static void
test_mode_sense (Fixture *f, gconstpointer data)
{
  static const guint8 all6[6] = { PB_SCSI_MODE_SENSE_6, 0, 0x3f, 0, 192, 0 };
  static const guint8 all6_header_only[6] = { PB_SCSI_MODE_SENSE_6, 0, 0x3f, 0, 4, 0 };
  static const guint8 all_subpages6[6] = { PB_SCSI_MODE_SENSE_6, 0, 0x3f, 0xff, 192, 0 };
  static const guint8 caching10[10] = { PB_SCSI_MODE_SENSE_10, 0, 0x08, 0, 0, 0, 0, 0, 255, 0 };
  static const guint8 changeable10[10] = { PB_SCSI_MODE_SENSE_10, 0, 0x48, 0, 0, 0, 0, 0, 255, 0 };
  static const guint8 saved6[6] = { PB_SCSI_MODE_SENSE_6, 0, 0xff, 0, 192, 0 };
  static const guint8 unknown_page6[6] = { PB_SCSI_MODE_SENSE_6, 0, 0x0a, 0, 192, 0 };
  static const guint8 subpage6[6] = { PB_SCSI_MODE_SENSE_6, 0, 0x08, 0x01, 192, 0 };
  guint8 buf[255];
  BotResult r;

  command (f, all6, sizeof all6, TRUE, buf, 192, &r);
  g_assert_cmpuint (r.status, ==, 0);
  g_assert_cmpuint (buf[0] + 1u, ==, r.data_actual);
  g_assert_cmpuint (r.residue, ==, 192 - r.data_actual);
  g_assert_cmphex (buf[2] & 0x80, ==, 0); /* not write protected */
  g_assert_cmpuint (buf[3], ==, 0);       /* no block descriptors */
  g_assert_cmphex (buf[4], ==, 0x08);     /* caching, write cache enabled */
  g_assert_cmpuint (buf[5], ==, 18);
  g_assert_cmphex (buf[6] & 0x04, ==, 0x04);
  g_assert_cmphex (buf[24], ==, 0x1c);    /* informational exceptions */
  g_assert_cmpuint (r.data_actual, ==, 4 + 20 + 12);

  /* The allocation length cuts the answer, not the mode data length. */
  command (f, all6_header_only, sizeof all6_header_only, TRUE, buf, 4, &r);
  g_assert_cmpuint (r.status, ==, 0);
  g_assert_cmpuint (r.data_actual, ==, 4);
  g_assert_cmpuint (r.residue, ==, 0);
  g_assert_cmpuint (buf[0], ==, 35);

  command (f, all_subpages6, sizeof all_subpages6, TRUE, buf, 192, &r);
  g_assert_cmpuint (r.status, ==, 0);
  g_assert_cmpuint (r.data_actual, ==, 36);

  command (f, caching10, sizeof caching10, TRUE, buf, 255, &r);
  g_assert_cmpuint (r.status, ==, 0);
  g_assert_cmpuint (r.data_actual, ==, 8 + 20);
  g_assert_cmpuint (buf[0] << 8 | buf[1], ==, 8 + 20 - 2);
  g_assert_cmphex (buf[3] & 0x80, ==, 0);
  g_assert_cmphex (buf[8], ==, 0x08);

  /* Nothing is changeable. */
  command (f, changeable10, sizeof changeable10, TRUE, buf, 255, &r);
  g_assert_cmpuint (r.status, ==, 0);
  g_assert_cmpuint (r.data_actual, ==, 28);
  for (guint i = 10; i < 28; i++)
    g_assert_cmpuint (buf[i], ==, 0);

  command (f, saved6, sizeof saved6, TRUE, buf, 192, &r);
  g_assert_cmpuint (r.status, ==, 1);
  expect_sense (f, PB_SCSI_SENSE_ILLEGAL_REQUEST, PB_SCSI_ASC_SAVING_PARAMETERS_NOT_SUPPORTED, 0);
  command (f, unknown_page6, sizeof unknown_page6, TRUE, buf, 192, &r);
  g_assert_cmpuint (r.status, ==, 1);
  expect_sense (f, PB_SCSI_SENSE_ILLEGAL_REQUEST, PB_SCSI_ASC_INVALID_FIELD_IN_CDB, 0);
  command (f, subpage6, sizeof subpage6, TRUE, buf, 192, &r);
  g_assert_cmpuint (r.status, ==, 1);
  expect_sense (f, PB_SCSI_SENSE_ILLEGAL_REQUEST, PB_SCSI_ASC_INVALID_FIELD_IN_CDB, 0);
}

static void
test_read_only (Fixture *f, gconstpointer data)
{
  static const guint8 mode_sense6[6] = { PB_SCSI_MODE_SENSE_6, 0, 0x3f, 0, 192, 0 };
  static const guint8 mode_sense10[10] = { PB_SCSI_MODE_SENSE_10, 0, 0x3f, 0, 0, 0, 0, 0, 255, 0 };
  guint8 buf[2 * BLOCK], cdb10[10], cdb16[16];
  BotResult r;

  g_assert_true (pb_mass_storage_is_read_only (f->storage));
  command (f, mode_sense6, sizeof mode_sense6, TRUE, buf, 192, &r);
  g_assert_cmpuint (r.status, ==, 0);
  g_assert_cmphex (buf[2] & 0x80, ==, 0x80); /* WP */
  command (f, mode_sense10, sizeof mode_sense10, TRUE, buf, 255, &r);
  g_assert_cmpuint (r.status, ==, 0);
  g_assert_cmphex (buf[3] & 0x80, ==, 0x80);

  /* The data is taken and dropped; the command fails with DATA PROTECT. */
  memset (buf, 0xee, sizeof buf);
  make_rw10 (cdb10, PB_SCSI_WRITE_10, 1, 1);
  command (f, cdb10, sizeof cdb10, FALSE, buf, BLOCK, &r);
  g_assert_cmpint (r.data_status, ==, PB_URB_OK);
  g_assert_cmpuint (r.status, ==, 1);
  g_assert_cmpuint (r.residue, ==, BLOCK);
  expect_sense (f, PB_SCSI_SENSE_DATA_PROTECT, PB_SCSI_ASC_WRITE_PROTECTED, 0);

  make_rw16 (cdb16, PB_SCSI_WRITE_16, 2, 2);
  command (f, cdb16, sizeof cdb16, FALSE, buf, 2 * BLOCK, &r);
  g_assert_cmpuint (r.status, ==, 1);
  expect_sense (f, PB_SCSI_SENSE_DATA_PROTECT, PB_SCSI_ASC_WRITE_PROTECTED, 0);
  assert_image_unchanged (f);

  /* Reads still work. */
  make_rw10 (cdb10, PB_SCSI_READ_10, 1, 2);
  command (f, cdb10, sizeof cdb10, TRUE, buf, 2 * BLOCK, &r);
  g_assert_cmpuint (r.status, ==, 0);
  g_assert_cmpmem (buf, 2 * BLOCK, f->contents + BLOCK, 2 * BLOCK);
}

static void
test_synchronize_cache (Fixture *f, gconstpointer data)
{
  static const guint8 sync10[10] = { PB_SCSI_SYNCHRONIZE_CACHE_10, 0 };
  static const guint8 sync16[16] = { PB_SCSI_SYNCHRONIZE_CACHE_16, 0 };
  static const guint8 sync10_beyond[10] = { PB_SCSI_SYNCHRONIZE_CACHE_10, 0, 0, 0, 0x10, 0, 0, 0, 1, 0 };
  static const guint8 verify10[10] = { PB_SCSI_VERIFY_10, 0, 0, 0, 0, 0, 0, 0, 8, 0 };
  static const guint8 verify10_bytchk[10] = { PB_SCSI_VERIFY_10, 0x02, 0, 0, 0, 0, 0, 0, 8, 0 };
  guint8 cdb[10], block[BLOCK];
  BotResult r;

  memset (block, 0x77, sizeof block);
  make_rw10 (cdb, PB_SCSI_WRITE_10, 30, 1);
  command (f, cdb, sizeof cdb, FALSE, block, BLOCK, &r);
  g_assert_cmpuint (r.status, ==, 0);

  command (f, sync10, sizeof sync10, FALSE, NULL, 0, &r);
  g_assert_cmpuint (r.status, ==, 0);
  g_assert_cmpuint (r.residue, ==, 0);
  command (f, sync16, sizeof sync16, FALSE, NULL, 0, &r);
  g_assert_cmpuint (r.status, ==, 0);
  assert_image (f, 30 * BLOCK, block, BLOCK);

  command (f, sync10_beyond, sizeof sync10_beyond, FALSE, NULL, 0, &r);
  g_assert_cmpuint (r.status, ==, 1);
  expect_sense (f, PB_SCSI_SENSE_ILLEGAL_REQUEST, PB_SCSI_ASC_LBA_OUT_OF_RANGE, 0);

  command (f, verify10, sizeof verify10, FALSE, NULL, 0, &r);
  g_assert_cmpuint (r.status, ==, 0);
  command (f, verify10_bytchk, sizeof verify10_bytchk, FALSE, NULL, 0, &r);
  g_assert_cmpuint (r.status, ==, 1);
  expect_sense (f, PB_SCSI_SENSE_ILLEGAL_REQUEST, PB_SCSI_ASC_INVALID_FIELD_IN_CDB, 0);
}

/* START STOP UNIT with LOEJ ejects the medium unless removal is prevented; a load or a new
 * client brings it back. */
static void
test_eject (Fixture *f, gconstpointer data)
{
  static const guint8 tur[6] = { 0 };
  static const guint8 prevent[6] = { PB_SCSI_PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, 1, 0 };
  static const guint8 allow[6] = { PB_SCSI_PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, 0, 0 };
  static const guint8 eject[6] = { PB_SCSI_START_STOP_UNIT, 0, 0, 0, 0x02, 0 };
  static const guint8 load[6] = { PB_SCSI_START_STOP_UNIT, 0, 0, 0, 0x03, 0 };
  static const guint8 stop[6] = { PB_SCSI_START_STOP_UNIT, 0, 0, 0, 0x00, 0 };
  static const guint8 capacity10[10] = { PB_SCSI_READ_CAPACITY_10, 0 };
  guint8 buf[BLOCK], cdb[10];
  BotResult r;

  command (f, stop, sizeof stop, FALSE, NULL, 0, &r); /* no LOEJ: nothing to do */
  g_assert_cmpuint (r.status, ==, 0);
  command (f, tur, sizeof tur, FALSE, NULL, 0, &r);
  g_assert_cmpuint (r.status, ==, 0);

  command (f, prevent, sizeof prevent, FALSE, NULL, 0, &r);
  g_assert_cmpuint (r.status, ==, 0);
  command (f, eject, sizeof eject, FALSE, NULL, 0, &r);
  g_assert_cmpuint (r.status, ==, 1);
  expect_sense (f, PB_SCSI_SENSE_ILLEGAL_REQUEST, PB_SCSI_ASC_MEDIUM_REMOVAL_PREVENTED, 0x02);

  command (f, allow, sizeof allow, FALSE, NULL, 0, &r);
  g_assert_cmpuint (r.status, ==, 0);
  command (f, eject, sizeof eject, FALSE, NULL, 0, &r);
  g_assert_cmpuint (r.status, ==, 0);
  command (f, tur, sizeof tur, FALSE, NULL, 0, &r);
  g_assert_cmpuint (r.status, ==, 1);
  expect_sense (f, PB_SCSI_SENSE_NOT_READY, PB_SCSI_ASC_MEDIUM_NOT_PRESENT, 0);
  /* With nothing pending, REQUEST SENSE still reports the missing medium. */
  expect_sense (f, PB_SCSI_SENSE_NOT_READY, PB_SCSI_ASC_MEDIUM_NOT_PRESENT, 0);
  make_rw10 (cdb, PB_SCSI_READ_10, 0, 1);
  command (f, cdb, sizeof cdb, TRUE, buf, BLOCK, &r);
  g_assert_cmpuint (r.status, ==, 1);
  command (f, capacity10, sizeof capacity10, TRUE, buf, 8, &r);
  g_assert_cmpuint (r.status, ==, 1);

  command (f, load, sizeof load, FALSE, NULL, 0, &r);
  g_assert_cmpuint (r.status, ==, 0);
  command (f, tur, sizeof tur, FALSE, NULL, 0, &r);
  g_assert_cmpuint (r.status, ==, 0);

  /* Ejected again, then the client goes and another comes: a freshly plugged disk. */
  command (f, eject, sizeof eject, FALSE, NULL, 0, &r);
  g_assert_cmpuint (r.status, ==, 0);
  pb_device_close (f->device);
  fixture_open (f);
  command (f, tur, sizeof tur, FALSE, NULL, 0, &r);
  g_assert_cmpuint (r.status, ==, 0);
}

/* A client that leaves mid-command: the session cancels what the device holds and closes; the
 * next client starts from a clean transport. */
static void
test_close_mid_command (Fixture *f, gconstpointer data)
{
  static const guint8 tur[6] = { 0 };
  static const guint8 unknown[6] = { 0xc7, 0 };
  guint8 cdb[10], block[BLOCK] = { 0 };
  PbUrb *held;
  BotResult r;

  command (f, unknown, sizeof unknown, FALSE, NULL, 0, &r); /* leaves a sense behind */
  make_rw10 (cdb, PB_SCSI_WRITE_10, 0, 2);
  send_cbw (f, 2 * BLOCK, FALSE, cdb, sizeof cdb);
  g_assert_cmpint (bulk_out (f, block, BLOCK, NULL), ==, PB_URB_OK);
  held = submit_in (f, 13);
  held->cancelled = TRUE;
  pb_device_cancel (f->device, held);
  pb_test_driver_take (&f->driver, held);
  g_assert_cmpint (held->status, ==, PB_URB_ECONNRESET);
  pb_test_urb_free (held);
  pb_device_close (f->device);

  fixture_open (f);
  command (f, tur, sizeof tur, FALSE, NULL, 0, &r);
  g_assert_cmpuint (r.status, ==, 0);
  expect_sense (f, PB_SCSI_SENSE_NO_SENSE, 0, 0);

  /* SET_CONFIGURATION also starts the transport over. */
  send_cbw (f, 2 * BLOCK, FALSE, cdb, sizeof cdb);
  pb_test_driver_expect_control (&f->driver, 0x00, PB_USB_REQ_SET_CONFIGURATION, 1, 0, 0, NULL, PB_URB_OK, NULL, 0);
  command (f, tur, sizeof tur, FALSE, NULL, 0, &r);
  g_assert_cmpuint (r.status, ==, 0);
}

/* The image shrinks under the device: reads past the new end fail with MEDIUM ERROR after
 * sending what could be read. */
static void
test_medium_error (Fixture *f, gconstpointer data)
{
  guint8 cdb[10], buf[2 * BLOCK];
  BotResult r;

  g_assert_cmpint (ftruncate (f->image_fd, (BLOCKS / 2) * BLOCK), ==, 0);
  make_rw10 (cdb, PB_SCSI_READ_10, BLOCKS / 2 - 1, 2);
  command (f, cdb, sizeof cdb, TRUE, buf, 2 * BLOCK, &r);
  g_assert_cmpint (r.data_status, ==, PB_URB_OK);
  g_assert_cmpuint (r.data_actual, ==, BLOCK);
  g_assert_cmpmem (buf, BLOCK, f->contents + (BLOCKS / 2 - 1) * BLOCK, BLOCK);
  g_assert_true (r.csw_stalled);
  g_assert_cmpuint (r.status, ==, 1);
  g_assert_cmpuint (r.residue, ==, BLOCK);
  expect_sense (f, PB_SCSI_SENSE_MEDIUM_ERROR, PB_SCSI_ASC_UNRECOVERED_READ_ERROR, 0);

  make_rw10 (cdb, PB_SCSI_READ_10, BLOCKS / 2 + 1, 1);
  command (f, cdb, sizeof cdb, TRUE, buf, BLOCK, &r);
  g_assert_cmpint (r.data_status, ==, PB_URB_EPIPE);
  g_assert_cmpuint (r.status, ==, 1);
  g_assert_cmpuint (r.residue, ==, BLOCK);
}

/* ---- media I/O off the main loop ----
 *
 * The I/O gate (pb-mass-storage-private.h) stands in for a stalled disk: the host cannot stall
 * real storage, so these tests hold the worker at the gate instead (the QEMU suite stalls a
 * real one with device-mapper suspend, against the real kernel's timeouts and unlinks). */

static PbUrb *
submit_out (Fixture *f, const void *data, guint32 length)
{
  PbUrb *urb = pb_test_driver_urb_new (&f->driver, 2, PB_USBIP_DIR_OUT, length);

  memcpy (urb->buffer, data, length);
  pb_device_submit (f->device, urb);
  return urb;
}

static PbUrb *
submit_cbw (Fixture *f, guint32 tag, guint32 data_length, gboolean data_in, const guint8 *cdb, guint8 cdb_length)
{
  guint8 cbw[31];

  build_cbw (cbw, tag, data_length, data_in, cdb, cdb_length);
  return submit_out (f, cbw, sizeof cbw);
}

/* A control request submitted by hand, for one that completes along with other requests. */
static PbUrb *
submit_control (Fixture *f, guint8 request_type, guint8 request, guint16 value, guint16 index)
{
  PbUrb *urb = pb_test_driver_urb_new (&f->driver, 0, (request_type & 0x80) ? PB_USBIP_DIR_IN : PB_USBIP_DIR_OUT, 0);
  guint8 setup[8] = { request_type, request, value & 0xff, value >> 8, index & 0xff, index >> 8, 0, 0 };

  memcpy (urb->setup, setup, 8);
  pb_device_submit (f->device, urb);
  return urb;
}

/* Takes the next completion, which must be urb with status, and frees it. */
static void
take_status (Fixture *f, PbUrb *urb, gint32 status)
{
  take (&f->driver, urb);
  g_assert_cmpint (urb->status, ==, status);
  pb_test_urb_free (urb);
}

/* From now on media I/O hangs, as on a stalled disk, until the gate opens. */
static void
stall_disk (void)
{
  pb_mass_storage_set_io_gate (TRUE);
}

/* The command's I/O reached the gate; the main context ran meanwhile and nothing completed. */
static void
wait_stalled (Fixture *f)
{
  g_assert_true (pb_mass_storage_wait_io_gated (1, WAIT_TIMEOUT_S * 1000));
  while (g_main_context_iteration (NULL, FALSE))
    ;
  g_assert_cmpuint (f->driver.completed.length, ==, 0);
  g_assert_cmpuint (pb_mass_storage_get_io_count (), ==, 1);
}

/* Every request of a write and of a read submitted before any I/O finished: OUT requests wait
 * behind the write at the worker, IN requests behind the read; one I/O at a time; each request
 * completes once, in order, with the right bytes. */
static void
test_queued_read_write (Fixture *f, gconstpointer data)
{
  const guint32 lba = 40, blocks = 6, length = blocks * BLOCK;
  const guint32 split[] = { 1536, 512, length - 2048 };
  g_autofree guint8 *fresh = g_malloc (length);
  PbUrb *cbw, *parts[G_N_ELEMENTS (split)], *csw;
  guint8 cdb[10];
  guint32 offset = 0;
  BotResult r = { 0 };

  for (guint i = 0; i < length; i++)
    fresh[i] = g_test_rand_int_range (0, 256);

  make_rw10 (cdb, PB_SCSI_WRITE_10, lba, blocks);
  cbw = submit_cbw (f, 500, length, FALSE, cdb, sizeof cdb);
  for (guint i = 0; i < G_N_ELEMENTS (split); i++)
    {
      parts[i] = submit_out (f, fresh + offset, split[i]);
      offset += split[i];
    }
  csw = submit_in (f, 13);
  g_assert_cmpuint (pb_mass_storage_get_io_count (), ==, 1);
  take_status (f, cbw, PB_URB_OK);
  for (guint i = 0; i < G_N_ELEMENTS (split); i++)
    {
      take (&f->driver, parts[i]);
      g_assert_cmpint (parts[i]->status, ==, PB_URB_OK);
      g_assert_cmpuint (parts[i]->actual_length, ==, split[i]);
      pb_test_urb_free (parts[i]);
    }
  take (&f->driver, csw);
  parse_csw (csw, 500, &r);
  g_assert_cmpuint (r.status, ==, 0);
  g_assert_cmpuint (r.residue, ==, 0);
  pb_test_urb_free (csw);
  assert_image (f, (guint64) lba * BLOCK, fresh, length);

  make_rw10 (cdb, PB_SCSI_READ_10, lba, blocks);
  cbw = submit_cbw (f, 501, length, TRUE, cdb, sizeof cdb);
  for (guint i = 0; i < G_N_ELEMENTS (split); i++)
    parts[i] = submit_in (f, split[i]);
  csw = submit_in (f, 13);
  g_assert_cmpuint (pb_mass_storage_get_io_count (), ==, 1);
  take_status (f, cbw, PB_URB_OK);
  offset = 0;
  for (guint i = 0; i < G_N_ELEMENTS (split); i++)
    {
      take (&f->driver, parts[i]);
      g_assert_cmpint (parts[i]->status, ==, PB_URB_OK);
      g_assert_cmpmem (parts[i]->buffer, parts[i]->actual_length, fresh + offset, split[i]);
      offset += split[i];
      pb_test_urb_free (parts[i]);
    }
  take (&f->driver, csw);
  parse_csw (csw, 501, &r);
  g_assert_cmpuint (r.status, ==, 0);
  g_assert_cmpuint (r.residue, ==, 0);
  pb_test_urb_free (csw);
}

/* I/O that cannot stall (here: the image is in a memfd) skips the worker: no job is ever
 * queued, and the bytes are right both ways. */
static void
test_fast_path (Fixture *f, gconstpointer data)
{
  const guint32 lba = 12, blocks = 8, length = blocks * BLOCK;
  g_autofree guint8 *fresh = g_malloc (length);
  guint8 cdb[10];
  BotResult r = { 0 };
  PbUrb *cbw, *data_urb, *csw;

  for (guint i = 0; i < length; i++)
    fresh[i] = g_test_rand_int_range (0, 256);

  make_rw10 (cdb, PB_SCSI_WRITE_10, lba, blocks);
  cbw = submit_cbw (f, 600, length, FALSE, cdb, sizeof cdb);
  data_urb = submit_out (f, fresh, length);
  g_assert_cmpuint (pb_mass_storage_get_io_count (), ==, 0);
  csw = submit_in (f, 13);
  take_status (f, cbw, PB_URB_OK);
  take (&f->driver, data_urb);
  g_assert_cmpint (data_urb->status, ==, PB_URB_OK);
  g_assert_cmpuint (data_urb->actual_length, ==, length);
  take (&f->driver, csw);
  parse_csw (csw, 600, &r);
  g_assert_cmpuint (r.status, ==, 0);
  pb_test_urb_free (data_urb);
  pb_test_urb_free (csw);
  assert_image (f, (guint64) lba * BLOCK, fresh, length);

  make_rw10 (cdb, PB_SCSI_READ_10, lba, blocks);
  cbw = submit_cbw (f, 601, length, TRUE, cdb, sizeof cdb);
  data_urb = submit_in (f, length);
  g_assert_cmpuint (pb_mass_storage_get_io_count (), ==, 0);
  take_status (f, cbw, PB_URB_OK);
  take (&f->driver, data_urb);
  g_assert_cmpint (data_urb->status, ==, PB_URB_OK);
  g_assert_cmpmem (data_urb->buffer, data_urb->actual_length, fresh, length);
  pb_test_urb_free (data_urb);
  csw = submit_in (f, 13);
  take (&f->driver, csw);
  parse_csw (csw, 601, &r);
  g_assert_cmpuint (r.status, ==, 0);
  g_assert_cmpuint (r.residue, ==, 0);
  pb_test_urb_free (csw);
}

/* The kernel's SCSI timeout unlinks the request whose read hangs: it completes at once with
 * the cancel status, the late result is dropped (the request's memory is already freed: ASan
 * sees any write into it), and the command fails with a phase error. */
static void
test_cancel_pending_read (Fixture *f, gconstpointer data)
{
  g_autofree guint8 *buf = g_malloc (4 * BLOCK);
  guint8 cdb[10];
  PbUrb *urb;
  guint32 tag;
  BotResult r = { 0 };

  stall_disk ();
  make_rw10 (cdb, PB_SCSI_READ_10, 3, 4);
  tag = send_cbw (f, 4 * BLOCK, TRUE, cdb, sizeof cdb);
  urb = submit_in (f, 2 * BLOCK);
  wait_stalled (f);

  urb->cancelled = TRUE;
  pb_device_cancel (f->device, urb);
  g_assert_cmpuint (f->driver.completed.length, ==, 1);
  pb_test_driver_take (&f->driver, urb);
  g_assert_cmpint (urb->status, ==, PB_URB_ECONNRESET);
  g_assert_cmpuint (urb->actual_length, ==, 0);
  pb_test_urb_free (urb);

  /* The disk wakes up: nothing completes a second time. */
  pb_mass_storage_set_io_gate (FALSE);
  settle ();
  g_assert_cmpuint (f->driver.completed.length, ==, 0);

  /* The data phase ended with a stall; never a passing CSW for a cancelled command. */
  read_csw (f, tag, &r);
  g_assert_true (r.csw_stalled);
  g_assert_cmpuint (r.status, ==, 2);
  g_assert_cmpuint (r.residue, ==, 4 * BLOCK);
  reset_recovery (f);

  command (f, cdb, sizeof cdb, TRUE, buf, 4 * BLOCK, &r);
  g_assert_cmpuint (r.status, ==, 0);
  g_assert_cmpmem (buf, 4 * BLOCK, f->contents + 3 * BLOCK, 4 * BLOCK);
}

/* A write whose request is unlinked while its pwrite hangs: the request completes at once, the
 * requests behind it stall, and the CSW says phase error even though the data may land. */
static void
test_cancel_pending_write (Fixture *f, gconstpointer data)
{
  guint8 block[BLOCK], cdb[10];
  PbUrb *first, *second, *csw;
  BotResult r = { 0 };

  memset (block, 0x5a, sizeof block);
  stall_disk ();
  make_rw10 (cdb, PB_SCSI_WRITE_10, 50, 2);
  send_cbw (f, 2 * BLOCK, FALSE, cdb, sizeof cdb);
  first = submit_out (f, block, BLOCK);
  second = submit_out (f, block, BLOCK);
  csw = submit_in (f, 13);
  wait_stalled (f);

  first->cancelled = TRUE;
  pb_device_cancel (f->device, first);
  g_assert_cmpuint (f->driver.completed.length, ==, 3);
  pb_test_driver_take (&f->driver, first);
  g_assert_cmpint (first->status, ==, PB_URB_ECONNRESET);
  pb_test_urb_free (first);
  pb_test_driver_take (&f->driver, second);
  g_assert_cmpint (second->status, ==, PB_URB_EPIPE);
  pb_test_urb_free (second);
  pb_test_driver_take (&f->driver, csw);
  parse_csw (csw, f->tag, &r);
  g_assert_cmpuint (r.status, ==, 2);
  g_assert_cmpuint (r.residue, ==, 2 * BLOCK);
  pb_test_urb_free (csw);

  pb_mass_storage_set_io_gate (FALSE);
  settle ();
  g_assert_cmpuint (f->driver.completed.length, ==, 0);
  assert_image (f, 51 * BLOCK, f->contents + 51 * BLOCK, BLOCK); /* the second block never went */
  reset_recovery (f);
  expect_sense (f, PB_SCSI_SENSE_NO_SENSE, 0, 0);
}

/* While a read hangs, ep0 is served: descriptors, class requests, endpoint status, a halt
 * cleared. Then the disk wakes up and the read completes as if nothing happened. */
static void
test_control_while_pending (Fixture *f, gconstpointer data)
{
  static const guint8 max_lun = 0;
  guint8 cdb[10];
  PbUrb *urb, *descriptor;
  guint32 tag;

  stall_disk ();
  make_rw10 (cdb, PB_SCSI_READ_10, 100, 2);
  tag = send_cbw (f, 2 * BLOCK, TRUE, cdb, sizeof cdb);
  urb = submit_in (f, 2 * BLOCK);
  wait_stalled (f);

  descriptor = pb_test_driver_control (&f->driver, 0x80, PB_USB_REQ_GET_DESCRIPTOR, 0x0100, 0, 18, NULL);
  g_assert_cmpint (descriptor->status, ==, PB_URB_OK);
  g_assert_cmpuint (descriptor->actual_length, ==, 18);
  pb_test_urb_free (descriptor);
  pb_test_driver_expect_control (&f->driver, 0xa1, 0xfe, 0, 0, 1, NULL, PB_URB_OK, &max_lun, 1);
  pb_test_driver_expect_control (&f->driver, 0x80, PB_USB_REQ_GET_CONFIGURATION, 0, 0, 1, NULL, PB_URB_OK,
                                 (const guint8 *) "\x01", 1);
  g_assert_false (endpoint_halted (f, EP_IN));
  clear_halt (f, EP_OUT);
  g_assert_cmpuint (f->driver.completed.length, ==, 0);

  pb_mass_storage_set_io_gate (FALSE);
  take (&f->driver, urb);
  g_assert_cmpint (urb->status, ==, PB_URB_OK);
  g_assert_cmpmem (urb->buffer, urb->actual_length, f->contents + 100 * BLOCK, 2 * BLOCK);
  pb_test_urb_free (urb);
  expect_csw (f, tag, 0, 0);
}

/* The transport starts over while an I/O hangs. A class reset (Bulk-Only Mass Storage Reset)
 * drops the result and the IN request waits again, as held IN requests do; a port reset ends
 * every request; a client that leaves cancels, closes, and the next one finds a working disk. */
static void
test_reset_with_pending_io (Fixture *f, gconstpointer data)
{
  static const guint8 tur[6] = { 0 };
  guint8 block[BLOCK], cdb[10];
  PbUrb *urb, *first, *second, *csw, *reset;
  guint32 tag;
  BotResult r = { 0 };

  /* Class reset during a read. */
  stall_disk ();
  make_rw10 (cdb, PB_SCSI_READ_10, 0, 2);
  send_cbw (f, 2 * BLOCK, TRUE, cdb, sizeof cdb);
  urb = submit_in (f, 2 * BLOCK);
  wait_stalled (f);
  pb_test_driver_expect_control (&f->driver, 0x21, 0xff, 0, 0, 0, NULL, PB_URB_OK, NULL, 0);
  pb_mass_storage_set_io_gate (FALSE);
  settle ();
  g_assert_cmpuint (f->driver.completed.length, ==, 0); /* the late data is not sent */
  tag = send_cbw (f, 0, FALSE, tur, sizeof tur);
  take (&f->driver, urb);
  parse_csw (urb, tag, &r);
  g_assert_cmpuint (r.status, ==, 0);
  pb_test_urb_free (urb);

  /* Port reset during a write: the request at the worker and those waiting all end. */
  memset (block, 0x11, sizeof block);
  stall_disk ();
  make_rw10 (cdb, PB_SCSI_WRITE_10, 60, 2);
  send_cbw (f, 2 * BLOCK, FALSE, cdb, sizeof cdb);
  first = submit_out (f, block, BLOCK);
  second = submit_out (f, block, BLOCK);
  csw = submit_in (f, 13);
  wait_stalled (f);
  reset = submit_control (f, 0x23, PB_USB_REQ_SET_FEATURE, 4, 1);
  take_status (f, csw, PB_URB_ESHUTDOWN);
  take_status (f, first, PB_URB_ESHUTDOWN);
  take_status (f, second, PB_URB_ESHUTDOWN);
  take_status (f, reset, PB_URB_OK);
  pb_mass_storage_set_io_gate (FALSE);
  settle ();
  g_assert_cmpuint (f->driver.completed.length, ==, 0);
  assert_image (f, 61 * BLOCK, f->contents + 61 * BLOCK, BLOCK);
  command (f, tur, sizeof tur, FALSE, NULL, 0, &r);
  g_assert_cmpuint (r.status, ==, 0);

  /* The client leaves during a read, as a session does it: cancel, then close. */
  stall_disk ();
  make_rw10 (cdb, PB_SCSI_READ_10, 0, 1);
  send_cbw (f, BLOCK, TRUE, cdb, sizeof cdb);
  urb = submit_in (f, BLOCK);
  wait_stalled (f);
  urb->cancelled = TRUE;
  pb_device_cancel (f->device, urb);
  take_status (f, urb, PB_URB_ECONNRESET);
  pb_device_close (f->device);
  fixture_open (f);
  /* The abandoned read still holds the device's I/O slot: the next read waits for it. */
  tag = send_cbw (f, BLOCK, TRUE, cdb, sizeof cdb);
  urb = submit_in (f, BLOCK);
  while (g_main_context_iteration (NULL, FALSE))
    ;
  g_assert_cmpuint (f->driver.completed.length, ==, 0);
  g_assert_cmpuint (pb_mass_storage_get_io_count (), ==, 1);
  pb_mass_storage_set_io_gate (FALSE);
  take (&f->driver, urb);
  g_assert_cmpint (urb->status, ==, PB_URB_OK);
  g_assert_cmpmem (urb->buffer, urb->actual_length, f->contents, BLOCK);
  pb_test_urb_free (urb);
  expect_csw (f, tag, 0, 0);
}

/* ---- construction ---- */

static void
test_bad_images (void)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *path = NULL;
  int fd = g_file_open_tmp ("pb-msc-XXXXXX.img", &path, &error);
  int pipe_fds[2];
  int ro_fd, wo_fd;
  PbMassStorage *storage;

  g_assert_no_error (error);

  storage = pb_mass_storage_new (fd, FALSE, &error); /* empty */
  g_assert_null (storage);
  g_assert_error (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT);
  g_clear_error (&error);

  g_assert_cmpint (ftruncate (fd, 1000), ==, 0); /* not whole blocks */
  storage = pb_mass_storage_new (fd, FALSE, &error);
  g_assert_null (storage);
  g_assert_error (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT);
  g_clear_error (&error);

  g_assert_cmpint (pipe (pipe_fds), ==, 0);
  storage = pb_mass_storage_new (pipe_fds[0], FALSE, &error);
  g_assert_null (storage);
  g_assert_error (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT);
  g_clear_error (&error);
  close (pipe_fds[0]);
  close (pipe_fds[1]);

  /* A descriptor open for reading only makes a read-only disk whatever was asked. */
  g_assert_cmpint (ftruncate (fd, 64 * BLOCK), ==, 0);
  ro_fd = open (path, O_RDONLY | O_CLOEXEC);
  g_assert_cmpint (ro_fd, >=, 0);
  storage = pb_mass_storage_new (ro_fd, FALSE, &error);
  g_assert_no_error (error);
  g_assert_true (pb_mass_storage_is_read_only (storage));
  g_assert_cmpuint (pb_mass_storage_get_block_count (storage), ==, 64);
  g_object_unref (storage);
  close (ro_fd);

  wo_fd = open (path, O_WRONLY | O_CLOEXEC);
  g_assert_cmpint (wo_fd, >=, 0);
  storage = pb_mass_storage_new (wo_fd, FALSE, &error);
  g_assert_null (storage);
  g_assert_error (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT);
  close (wo_fd);

  g_unlink (path);
  close (fd);
}

/* Disposing the storage while a session still holds the device and a request. */
static void
test_dispose_while_held (void)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *path = NULL;
  int fd = g_file_open_tmp ("pb-msc-XXXXXX.img", &path, &error);
  PbMassStorage *storage;
  PbDevice *device;
  PbTestDriver driver;
  PbUrb *urb;

  g_assert_no_error (error);
  g_unlink (path);
  g_assert_cmpint (ftruncate (fd, 16 * BLOCK), ==, 0);
  storage = pb_mass_storage_new (fd, FALSE, &error);
  g_assert_no_error (error);
  device = g_object_ref (PB_DEVICE (pb_mass_storage_get_device (storage)));
  pb_test_driver_init (&driver, device);
  g_assert_true (pb_device_open (device, &error));
  pb_test_driver_expect_control (&driver, 0x00, PB_USB_REQ_SET_CONFIGURATION, 1, 0, 0, NULL, PB_URB_OK, NULL, 0);

  urb = pb_test_driver_urb_new (&driver, 1, PB_USBIP_DIR_IN, 13);
  pb_device_submit (device, urb);
  g_assert_cmpuint (driver.completed.length, ==, 0);
  g_object_unref (storage);
  pb_test_driver_take (&driver, urb);
  g_assert_cmpint (urb->status, ==, PB_URB_ESHUTDOWN);
  pb_test_urb_free (urb);

  /* The device outlives the program: transfers end, standard requests still work. */
  urb = pb_test_driver_urb_new (&driver, 2, PB_USBIP_DIR_OUT, 31);
  pb_device_submit (device, urb);
  pb_test_driver_take (&driver, urb);
  g_assert_cmpint (urb->status, ==, PB_URB_ESHUTDOWN);
  pb_test_urb_free (urb);
  pb_test_driver_expect_control (&driver, 0x80, PB_USB_REQ_GET_CONFIGURATION, 0, 0, 1, NULL, PB_URB_OK,
                                 (const guint8 *) "\x01", 1);
  pb_device_close (device);
  g_object_unref (device);
  close (fd);
}

/* A storage whose device the caller keeps (as a session does), opened and configured, with a
 * READ(10) of blocks at lba whose data request is at the worker, held at the closed gate. */
static PbMassStorage *
storage_with_stalled_read (int *fd, PbDevice **device, PbTestDriver *driver, PbUrb **data_urb)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *path = NULL;
  PbMassStorage *storage;
  guint8 cdb[10];
  PbUrb *cbw;

  pb_mass_storage_set_fast_path (FALSE); /* the read must reach the gate */
  *fd = g_file_open_tmp ("pb-msc-XXXXXX.img", &path, &error);
  g_assert_no_error (error);
  g_unlink (path);
  g_assert_cmpint (ftruncate (*fd, 16 * BLOCK), ==, 0);
  storage = pb_mass_storage_new (*fd, FALSE, &error);
  g_assert_no_error (error);
  *device = g_object_ref (PB_DEVICE (pb_mass_storage_get_device (storage)));
  pb_test_driver_init (driver, *device);
  g_assert_true (pb_device_open (*device, &error));
  pb_test_driver_expect_control (driver, 0x00, PB_USB_REQ_SET_CONFIGURATION, 1, 0, 0, NULL, PB_URB_OK, NULL, 0);

  pb_mass_storage_set_io_gate (TRUE);
  make_rw10 (cdb, PB_SCSI_READ_10, 2, 4);
  cbw = pb_test_driver_urb_new (driver, 2, PB_USBIP_DIR_OUT, 31);
  build_cbw (cbw->buffer, 1, 4 * BLOCK, TRUE, cdb, sizeof cdb);
  pb_device_submit (*device, cbw);
  pb_test_driver_take (driver, cbw);
  g_assert_cmpint (cbw->status, ==, PB_URB_OK);
  pb_test_urb_free (cbw);
  *data_urb = pb_test_driver_urb_new (driver, 1, PB_USBIP_DIR_IN, 4 * BLOCK);
  pb_device_submit (*device, *data_urb);
  g_assert_true (pb_mass_storage_wait_io_gated (1, WAIT_TIMEOUT_S * 1000));
  g_assert_cmpuint (driver->completed.length, ==, 0);
  return storage;
}

/* The storage goes while its read hangs: the request completes at once and its memory is
 * freed; the late result is dropped without touching the storage, the request or the closed
 * descriptor (run under ASan: no use after free, no leak). */
static void
test_dispose_with_pending_io (void)
{
  PbTestDriver driver;
  PbDevice *device;
  PbUrb *urb;
  int fd;
  PbMassStorage *storage = storage_with_stalled_read (&fd, &device, &driver, &urb);

  g_object_unref (storage);
  g_assert_cmpuint (driver.completed.length, ==, 1);
  pb_test_driver_take (&driver, urb);
  g_assert_cmpint (urb->status, ==, PB_URB_ESHUTDOWN);
  pb_test_urb_free (urb);
  pb_device_close (device);
  g_object_unref (device);
  close (fd);

  pb_mass_storage_set_io_gate (FALSE);
  settle ();
  g_assert_cmpuint (driver.completed.length, ==, 0);
}

/* A read that never returns must not keep the process from exiting once its storage is gone. */
static void
test_exit_with_hung_io (void)
{
  if (g_test_subprocess ())
    {
      PbTestDriver driver;
      PbDevice *device;
      PbUrb *urb;
      int fd;
      PbMassStorage *storage = storage_with_stalled_read (&fd, &device, &driver, &urb);

      g_object_unref (storage);
      pb_test_driver_take (&driver, urb);
      pb_test_urb_free (urb);
      pb_device_close (device);
      g_object_unref (device);
      close (fd);
      return; /* the worker stays at the closed gate */
    }
  g_test_trap_subprocess (NULL, 30 * G_USEC_PER_SEC, G_TEST_SUBPROCESS_DEFAULT);
  g_test_trap_assert_passed ();
}

/* ---- the embedded image ---- */

static void
test_default_image (void)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *dir = g_dir_make_tmp ("pb-image-XXXXXX", &error);
  g_autofree char *path = g_build_filename (dir, "default.img", NULL);
  g_autofree char *contents = NULL;
  g_autofree char *fsck_path = g_find_program_in_path ("fsck.fat");
  g_autofree char *mtype_path = g_find_program_in_path ("mtype");
  int fd = pb_default_image_create (&error);
  Fixture fixture = { 0 }, *f = &fixture;
  guint8 sector[BLOCK], cdb[10];
  BotResult r;

  g_assert_no_error (error);
  g_assert_cmpint (fd, >=, 0);
  g_assert_cmpint (fcntl (fd, F_GETFD) & FD_CLOEXEC, ==, FD_CLOEXEC);

  /* Served as a disk: a FAT16 boot sector at LBA 0, no partition table. */
  f->storage = pb_mass_storage_new (fd, FALSE, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (pb_mass_storage_get_block_count (f->storage), ==, PB_DEFAULT_IMAGE_SIZE / BLOCK);
  f->vdev = pb_mass_storage_get_device (f->storage);
  f->device = PB_DEVICE (f->vdev);
  pb_test_driver_init (&f->driver, f->device);
  fixture_open (f);
  make_rw10 (cdb, PB_SCSI_READ_10, 0, 1);
  command (f, cdb, sizeof cdb, TRUE, sector, BLOCK, &r);
  g_assert_cmpuint (r.status, ==, 0);
  g_assert_cmphex (sector[510], ==, 0x55);
  g_assert_cmphex (sector[511], ==, 0xaa);
  g_assert_cmpuint (sector[11] | sector[12] << 8, ==, 512);
  g_assert_cmpuint (sector[13], ==, 4);
  g_assert_cmpuint (sector[16], ==, 2);
  g_assert_cmphex (sector[21], ==, 0xf8);
  g_assert_cmpmem (sector + 43, 11, "PLUGBOARD  ", 11);
  g_assert_cmpmem (sector + 54, 8, "FAT16   ", 8);
  pb_device_close (f->device);
  g_object_unref (f->storage);

  contents = g_malloc (PB_DEFAULT_IMAGE_SIZE);
  g_assert_cmpint (pread (fd, contents, PB_DEFAULT_IMAGE_SIZE, 0), ==, PB_DEFAULT_IMAGE_SIZE);
  close (fd);
  g_assert_true (g_file_set_contents (path, contents, PB_DEFAULT_IMAGE_SIZE, &error));
  g_assert_nonnull (strstr (pb_default_image_readme_text (), "msc:"));

  if (fsck_path == NULL || mtype_path == NULL)
    g_test_skip ("dosfstools and mtools are needed (tools/install-deps installs them)");
  else
    {
      const char *fsck[] = { fsck_path, "-n", path, NULL };
      const char *mtype[] = { mtype_path, "-i", path, "::README.TXT", NULL };
      g_autofree char *fsck_out = NULL;
      g_autofree char *out = NULL;
      int status;

      g_assert_true (g_spawn_sync (NULL, (char **) fsck, NULL, G_SPAWN_DEFAULT, NULL, NULL, &fsck_out, NULL,
                                   &status, &error));
      g_assert_no_error (error);
      g_test_message ("fsck.fat: %s", fsck_out);
      g_assert_true (g_spawn_check_wait_status (status, &error));
      g_assert_no_error (error);
      g_assert_true (g_spawn_sync (NULL, (char **) mtype, NULL, G_SPAWN_DEFAULT, NULL, NULL, &out,
                                   NULL, &status, &error));
      g_assert_no_error (error);
      g_assert_true (g_spawn_check_wait_status (status, &error));
      g_assert_no_error (error);
      g_assert_cmpstr (out, ==, pb_default_image_readme_text ());
    }
  g_unlink (path);
  g_rmdir (dir);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);

#define ADD(name, read_only, func) \
  g_test_add ("/mass-storage/" name, Fixture, GINT_TO_POINTER (read_only), fixture_setup, func, fixture_teardown)
  ADD ("descriptors", FALSE, test_descriptors);
  ADD ("inquiry", FALSE, test_inquiry);
  ADD ("capacity", FALSE, test_capacity);
  ADD ("read-write-10", FALSE, test_read_write_10);
  ADD ("read-write-16-and-6", FALSE, test_read_write_16_and_6);
  ADD ("in-before-cbw", FALSE, test_in_before_cbw);
  ADD ("out-of-range", FALSE, test_out_of_range);
  ADD ("unknown-opcode", FALSE, test_unknown_opcode);
  ADD ("residue", FALSE, test_residue);
  ADD ("phase-errors", FALSE, test_phase_errors);
  ADD ("invalid-cbw", FALSE, test_invalid_cbw);
  ADD ("cancel-held", FALSE, test_cancel_held);
  ADD ("mode-sense", FALSE, test_mode_sense);
  ADD ("read-only", TRUE, test_read_only);
  ADD ("synchronize-cache", FALSE, test_synchronize_cache);
  ADD ("eject", FALSE, test_eject);
  ADD ("close-mid-command", FALSE, test_close_mid_command);
  ADD ("medium-error", FALSE, test_medium_error);
  g_test_add ("/mass-storage/fast-path", Fixture, GINT_TO_POINTER (IMAGE_IN_MEMORY), fixture_setup, test_fast_path,
              fixture_teardown);
  ADD ("queued-read-write", FALSE, test_queued_read_write);
  ADD ("cancel-pending-read", FALSE, test_cancel_pending_read);
  ADD ("cancel-pending-write", FALSE, test_cancel_pending_write);
  ADD ("control-while-pending", FALSE, test_control_while_pending);
  ADD ("reset-with-pending-io", FALSE, test_reset_with_pending_io);
#undef ADD
  g_test_add_func ("/mass-storage/bad-images", test_bad_images);
  g_test_add_func ("/mass-storage/dispose-while-held", test_dispose_while_held);
  g_test_add_func ("/mass-storage/dispose-with-pending-io", test_dispose_with_pending_io);
  g_test_add_func ("/mass-storage/exit-with-hung-io", test_exit_with_hung_io);
  g_test_add_func ("/mass-storage/default-image", test_default_image);
  return g_test_run ();
}
