/* PbMassStorage through the PbDevice API, as a session drives it: the BOT edge cases the
 * loopback test does not reach (phase errors, residues, invalid CBW and reset recovery, IN
 * requests queued before their CBW, cancel), and the embedded FAT image. */
#include <glib/gstdio.h>
#include <string.h>
#include <unistd.h>

#include "pb-test-util.h"
#include "pb-default-image.h"
#include "pb-mass-storage.h"
#include "pb-scsi.h"

#define BLOCKS 256

typedef struct {
  PbMassStorage *storage;
  PbDevice *device;
  int image_fd;
  PbTestDriver driver;
  guint32 tag;
} Fixture;

/* Runs a control request; returns its status, copying IN data to data when given. */
static gint32
control_status (Fixture *f, guint8 type, guint8 request, guint16 value, guint16 index, guint16 length, guint8 *data)
{
  PbUrb *urb = pb_test_driver_control (&f->driver, type, request, value, index, length, NULL);
  gint32 status = urb->status;

  if (data != NULL)
    memcpy (data, urb->buffer, urb->actual_length);
  pb_test_urb_free (urb);
  return status;
}

static void
fixture_setup (Fixture *f, gconstpointer read_only)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *path = NULL;
  guint8 block[512];

  memset (f, 0, sizeof *f);
  f->image_fd = g_file_open_tmp ("pb-msc-XXXXXX.img", &path, &error);
  g_assert_no_error (error);
  g_unlink (path);
  for (guint i = 0; i < BLOCKS; i++)
    {
      memset (block, i & 0xff, sizeof block);
      g_assert_cmpint (pwrite (f->image_fd, block, sizeof block, (off_t) i * 512), ==, 512);
    }
  f->storage = pb_mass_storage_new (f->image_fd, GPOINTER_TO_INT (read_only), &error);
  g_assert_no_error (error);
  f->device = PB_DEVICE (pb_mass_storage_get_device (f->storage));
  pb_test_driver_init (&f->driver, f->device);
  g_assert_true (pb_device_open (f->device, &error));
  g_assert_cmpint (control_status (f, 0x00, PB_USB_REQ_SET_CONFIGURATION, 1, 0, 0, NULL), ==, 0);
}

static void
fixture_teardown (Fixture *f, gconstpointer data)
{
  g_assert_cmpuint (f->driver.completed.length, ==, 0);
  pb_device_close (f->device);
  g_object_unref (f->storage);
  close (f->image_fd);
}

/* Sends a CBW; returns its tag. */
static guint32
send_cbw (Fixture *f, guint32 data_length, gboolean data_in, const guint8 *cdb, guint8 cdb_length)
{
  PbUrb *urb = pb_test_driver_urb_new (&f->driver, 2, PB_USBIP_DIR_OUT, PB_BOT_CBW_SIZE);
  guint32 tag = ++f->tag;
  guint8 *b = urb->buffer;

  b[0] = 'U'; b[1] = 'S'; b[2] = 'B'; b[3] = 'C';
  memcpy (b + 4, &tag, 4);
  memcpy (b + 8, &data_length, 4);
  b[12] = data_in ? 0x80 : 0x00;
  b[14] = cdb_length;
  memcpy (b + 15, cdb, cdb_length);
  pb_device_submit (f->device, urb);
  pb_test_driver_take (&f->driver, urb);
  g_assert_cmpint (urb->status, ==, 0);
  pb_test_urb_free (urb);
  return tag;
}

static void
expect_csw (Fixture *f, guint32 tag, guint32 residue, guint8 status)
{
  PbUrb *urb = pb_test_driver_urb_new (&f->driver, 1, PB_USBIP_DIR_IN, 13);
  guint32 value;

  pb_device_submit (f->device, urb);
  pb_test_driver_take (&f->driver, urb);
  g_assert_cmpint (urb->status, ==, 0);
  g_assert_cmpuint (urb->actual_length, ==, 13);
  g_assert_cmpmem (urb->buffer, 4, "USBS", 4);
  memcpy (&value, urb->buffer + 4, 4);
  g_assert_cmpuint (value, ==, tag);
  memcpy (&value, urb->buffer + 8, 4);
  g_assert_cmpuint (value, ==, residue);
  g_assert_cmpuint (urb->buffer[12], ==, status);
  pb_test_urb_free (urb);
}

static PbUrb *
data_in (Fixture *f, guint32 length)
{
  PbUrb *urb = pb_test_driver_urb_new (&f->driver, 1, PB_USBIP_DIR_IN, length);
  pb_device_submit (f->device, urb);
  return pb_test_driver_take (&f->driver, urb);
}

static void
request_sense (Fixture *f, guint8 *key, guint8 *asc)
{
  static const guint8 cdb[6] = { 0x03, 0, 0, 0, 18, 0 };
  guint32 tag = send_cbw (f, 18, TRUE, cdb, 6);
  PbUrb *urb = data_in (f, 18);

  g_assert_cmpuint (urb->actual_length, ==, 18);
  *key = urb->buffer[2] & 0x0f;
  *asc = urb->buffer[12];
  pb_test_urb_free (urb);
  expect_csw (f, tag, 0, 0);
}

static void
test_read_write (Fixture *f, gconstpointer data)
{
  static const guint8 read10[10] = { 0x28, 0, 0, 0, 0, 5, 0, 0, 2, 0 }; /* LBA 5, 2 blocks */
  static const guint8 write10[10] = { 0x2a, 0, 0, 0, 0, 9, 0, 0, 1, 0 };
  guint8 block[512];
  PbUrb *urb;
  guint32 tag;

  /* The CSW's IN request may arrive before the command: it waits. */
  tag = send_cbw (f, 1024, TRUE, read10, 10);
  urb = data_in (f, 1024);
  g_assert_cmpuint (urb->actual_length, ==, 1024);
  g_assert_cmpuint (urb->buffer[0], ==, 5);
  g_assert_cmpuint (urb->buffer[1023], ==, 6);
  pb_test_urb_free (urb);
  expect_csw (f, tag, 0, 0);

  tag = send_cbw (f, 512, FALSE, write10, 10);
  urb = pb_test_driver_urb_new (&f->driver, 2, PB_USBIP_DIR_OUT, 512);
  memset (urb->buffer, 0xab, 512);
  {
    PbUrb *csw = pb_test_driver_urb_new (&f->driver, 1, PB_USBIP_DIR_IN, 13);
    pb_device_submit (f->device, csw); /* queued before the data arrives */
    g_assert_cmpuint (f->driver.completed.length, ==, 0);
    pb_device_submit (f->device, urb);
    pb_test_driver_take (&f->driver, urb);
    pb_test_driver_take (&f->driver, csw);
    g_assert_cmpuint (csw->buffer[12], ==, 0);
    pb_test_urb_free (csw);
  }
  pb_test_urb_free (urb);
  g_assert_cmpint (pread (f->image_fd, block, 512, 9 * 512), ==, 512);
  g_assert_cmpuint (block[0], ==, 0xab);
  g_assert_cmpuint (block[511], ==, 0xab);
}

static void
test_out_of_range_and_unknown (Fixture *f, gconstpointer data)
{
  static const guint8 read_beyond[10] = { 0x28, 0, 0, 0, 0, 255, 0, 0, 2, 0 };
  static const guint8 unknown[6] = { 0xc7, 0, 0, 0, 0, 0 };
  guint8 key, asc;
  PbUrb *urb;
  guint32 tag;

  tag = send_cbw (f, 1024, TRUE, read_beyond, 10);
  /* No data: bulk IN stalls, the host clears it, the CSW says failed with the full residue. */
  urb = data_in (f, 1024);
  g_assert_cmpint (urb->status, ==, PB_URB_EPIPE);
  pb_test_urb_free (urb);
  g_assert_cmpint (control_status (f, 0x02, PB_USB_REQ_CLEAR_FEATURE, 0, 0x81, 0, NULL), ==, 0);
  expect_csw (f, tag, 1024, 1);
  request_sense (f, &key, &asc);
  g_assert_cmpuint (key, ==, PB_SCSI_SENSE_ILLEGAL_REQUEST);
  g_assert_cmpuint (asc, ==, PB_SCSI_ASC_LBA_OUT_OF_RANGE);

  tag = send_cbw (f, 0, FALSE, unknown, 6);
  expect_csw (f, tag, 0, 1);
  request_sense (f, &key, &asc);
  g_assert_cmpuint (key, ==, PB_SCSI_SENSE_ILLEGAL_REQUEST);
  g_assert_cmpuint (asc, ==, PB_SCSI_ASC_INVALID_OPCODE);
}

static void
test_residue_and_phase (Fixture *f, gconstpointer data)
{
  static const guint8 inquiry[6] = { 0x12, 0, 0, 0, 36, 0 };
  static const guint8 read_two[10] = { 0x28, 0, 0, 0, 0, 0, 0, 0, 2, 0 };
  static const guint8 tur[6] = { 0 };
  PbUrb *urb;
  guint32 tag;

  /* The host expects more than the device has (case 5): short data, residue. */
  tag = send_cbw (f, 96, TRUE, inquiry, 6);
  urb = data_in (f, 96);
  g_assert_cmpuint (urb->actual_length, ==, 36);
  g_assert_cmpmem (urb->buffer + 16, 12, "Virtual Disk", 12);
  pb_test_urb_free (urb);
  expect_csw (f, tag, 96 - 36, 0);

  /* The host expects less than the command moves (case 7): phase error. */
  tag = send_cbw (f, 512, TRUE, read_two, 10);
  urb = data_in (f, 512);
  g_assert_cmpuint (urb->actual_length, ==, 512);
  pb_test_urb_free (urb);
  expect_csw (f, tag, 0, 2);

  /* The host sends data with a command that takes none (case 9/11 family): accepted, residue. */
  tag = send_cbw (f, 512, FALSE, tur, 6);
  urb = pb_test_driver_urb_new (&f->driver, 2, PB_USBIP_DIR_OUT, 512);
  pb_device_submit (f->device, urb);
  pb_test_driver_take (&f->driver, urb);
  pb_test_urb_free (urb);
  expect_csw (f, tag, 512, 0);
}

static void
test_invalid_cbw_needs_reset (Fixture *f, gconstpointer data)
{
  static const guint8 tur[6] = { 0 };
  PbUrb *urb = pb_test_driver_urb_new (&f->driver, 2, PB_USBIP_DIR_OUT, 31);
  guint8 max_lun = 0xff;
  guint32 tag;

  memset (urb->buffer, 0x5a, 31); /* no signature */
  pb_device_submit (f->device, urb);
  pb_test_driver_take (&f->driver, urb);
  pb_test_urb_free (urb);

  /* Both pipes stay halted, even after CLEAR_FEATURE, until a reset recovery. */
  urb = data_in (f, 13);
  g_assert_cmpint (urb->status, ==, PB_URB_EPIPE);
  pb_test_urb_free (urb);
  g_assert_cmpint (control_status (f, 0x02, PB_USB_REQ_CLEAR_FEATURE, 0, 0x81, 0, NULL), ==, 0);
  g_assert_true (pb_virtual_device_get_halt (pb_mass_storage_get_device (f->storage), 0x81));

  g_assert_cmpint (control_status (f, 0x21, 0xff, 0, 0, 0, NULL), ==, 0); /* Bulk-Only Mass Storage Reset */
  g_assert_cmpint (control_status (f, 0x02, PB_USB_REQ_CLEAR_FEATURE, 0, 0x81, 0, NULL), ==, 0);
  g_assert_cmpint (control_status (f, 0x02, PB_USB_REQ_CLEAR_FEATURE, 0, 0x02, 0, NULL), ==, 0);
  g_assert_false (pb_virtual_device_get_halt (pb_mass_storage_get_device (f->storage), 0x81));
  g_assert_false (pb_virtual_device_get_halt (pb_mass_storage_get_device (f->storage), 0x02));

  g_assert_cmpint (control_status (f, 0xa1, 0xfe, 0, 0, 1, &max_lun), ==, 0);
  g_assert_cmpuint (max_lun, ==, 0);
  tag = send_cbw (f, 0, FALSE, tur, 6);
  expect_csw (f, tag, 0, 0);
}

static void
test_cancel_held (Fixture *f, gconstpointer data)
{
  PbUrb *urb = pb_test_driver_urb_new (&f->driver, 1, PB_USBIP_DIR_IN, 13);

  pb_device_submit (f->device, urb);
  g_assert_cmpuint (f->driver.completed.length, ==, 0);
  urb->cancelled = TRUE;
  pb_device_cancel (f->device, urb);
  pb_test_driver_take (&f->driver, urb);
  g_assert_cmpint (urb->status, ==, PB_URB_ECONNRESET);
  pb_test_urb_free (urb);
}

static void
test_read_only (Fixture *f, gconstpointer data)
{
  static const guint8 write10[10] = { 0x2a, 0, 0, 0, 0, 1, 0, 0, 1, 0 };
  static const guint8 mode_sense[6] = { 0x1a, 0, 0x3f, 0, 192, 0 };
  guint8 block[512], key, asc;
  guint32 actual, tag;
  PbUrb *urb;

  g_assert_true (pb_mass_storage_is_read_only (f->storage));
  tag = send_cbw (f, 192, TRUE, mode_sense, 6);
  urb = data_in (f, 192);
  actual = urb->actual_length;
  g_assert_cmpuint (urb->buffer[2] & 0x80, ==, 0x80); /* write protect */
  g_assert_cmpuint (urb->buffer[0] + 1u, ==, actual);
  pb_test_urb_free (urb);
  expect_csw (f, tag, 192 - actual, 0);

  /* The data is taken and dropped; the command fails with DATA PROTECT; the image is intact. */
  tag = send_cbw (f, 512, FALSE, write10, 10);
  urb = pb_test_driver_urb_new (&f->driver, 2, PB_USBIP_DIR_OUT, 512);
  memset (urb->buffer, 0xee, 512);
  pb_device_submit (f->device, urb);
  pb_test_driver_take (&f->driver, urb);
  pb_test_urb_free (urb);
  expect_csw (f, tag, 512, 1);
  request_sense (f, &key, &asc);
  g_assert_cmpuint (key, ==, PB_SCSI_SENSE_DATA_PROTECT);
  g_assert_cmpuint (asc, ==, PB_SCSI_ASC_WRITE_PROTECTED);
  g_assert_cmpint (pread (f->image_fd, block, 512, 512), ==, 512);
  g_assert_cmpuint (block[0], ==, 1);
}

static void
test_default_image (void)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *dir = g_dir_make_tmp ("pb-image-XXXXXX", &error);
  g_autofree char *path = g_build_filename (dir, "default.img", NULL);
  g_autofree char *contents = NULL;
  g_autofree char *out = NULL;
  int fd = pb_default_image_create (&error);
  int status;

  g_assert_no_error (error);
  g_assert_cmpint (fd, >=, 0);
  contents = g_malloc (PB_DEFAULT_IMAGE_SIZE);
  g_assert_cmpint (pread (fd, contents, PB_DEFAULT_IMAGE_SIZE, 0), ==, PB_DEFAULT_IMAGE_SIZE);
  close (fd);
  g_assert_true (g_file_set_contents (path, contents, PB_DEFAULT_IMAGE_SIZE, &error));

  g_autofree char *fsck_path = g_find_program_in_path ("fsck.fat");
  g_autofree char *mtype_path = g_find_program_in_path ("mtype");

  if (fsck_path == NULL || mtype_path == NULL)
    {
      g_test_skip ("dosfstools and mtools are needed (tools/install-deps installs them)");
    }
  else
    {
      const char *fsck[] = { "fsck.fat", "-n", path, NULL };
      const char *mtype[] = { "mtype", "-i", path, "::README.TXT", NULL };

      g_assert_true (g_spawn_sync (NULL, (char **) fsck, NULL, G_SPAWN_SEARCH_PATH | G_SPAWN_STDOUT_TO_DEV_NULL, NULL,
                                   NULL, NULL, NULL, &status, &error));
      g_assert_true (g_spawn_check_wait_status (status, NULL));
      g_assert_true (g_spawn_sync (NULL, (char **) mtype, NULL, G_SPAWN_SEARCH_PATH, NULL, NULL, &out, NULL, &status,
                                   &error));
      g_assert_true (g_spawn_check_wait_status (status, NULL));
      g_assert_cmpstr (out, ==, pb_default_image_readme_text ());
    }
  g_unlink (path);
  g_rmdir (dir);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add ("/mass-storage/read-write", Fixture, GINT_TO_POINTER (FALSE), fixture_setup, test_read_write, fixture_teardown);
  g_test_add ("/mass-storage/out-of-range-and-unknown", Fixture, GINT_TO_POINTER (FALSE), fixture_setup,
              test_out_of_range_and_unknown, fixture_teardown);
  g_test_add ("/mass-storage/residue-and-phase", Fixture, GINT_TO_POINTER (FALSE), fixture_setup,
              test_residue_and_phase, fixture_teardown);
  g_test_add ("/mass-storage/invalid-cbw-needs-reset", Fixture, GINT_TO_POINTER (FALSE), fixture_setup,
              test_invalid_cbw_needs_reset, fixture_teardown);
  g_test_add ("/mass-storage/cancel-held", Fixture, GINT_TO_POINTER (FALSE), fixture_setup, test_cancel_held,
              fixture_teardown);
  g_test_add ("/mass-storage/read-only", Fixture, GINT_TO_POINTER (TRUE), fixture_setup, test_read_only,
              fixture_teardown);
  g_test_add_func ("/mass-storage/default-image", test_default_image);
  return g_test_run ();
}
