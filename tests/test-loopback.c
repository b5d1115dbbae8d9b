/* Loopback integration: a real `plugboard serve` process and the userspace client (PbRemote,
 * PbRemoteDevice) in this process, over 127.0.0.1. Drives the three built-in devices the way a
 * host's drivers would: enumeration, Bulk-Only Transport with SCSI for the disk, interrupt IN
 * polling for the keyboard, CDC-ACM requests and bulk data through a pty for the serial port. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include "pb-remote.h"
#include "pb-test-util.h"
#include "pb-virtual-device.h"

#define TRANSFER_TIMEOUT_MS 10000
#define LOG_TIMEOUT_MS 10000

/* ---- small helpers over PbRemoteDevice ---- */

static PbRemoteDevice *
import_device (PbTestServer *server, const char *busid)
{
  g_autoptr(GError) error = NULL;
  PbRemoteDevice *device = pb_remote_import ("127.0.0.1", pb_test_server_get_port (server), busid, NULL, &error);

  g_assert_no_error (error);
  g_assert_nonnull (device);
  g_assert_cmpstr (pb_remote_device_get_record (device)->busid, ==, busid);
  return device;
}

static void
close_device (PbTestServer *server, PbRemoteDevice *device, const char *busid)
{
  g_autofree char *prefix = g_strdup_printf ("close %s ", busid);
  guint closes = pb_test_server_count_lines (server, prefix);

  pb_remote_device_close (device);
  g_object_unref (device);
  /* The device is free for the next import once the server logged the close. */
  g_assert_true (pb_test_server_wait_lines (server, prefix, closes + 1, LOG_TIMEOUT_MS));
}

static guint32
control_in (PbRemoteDevice *device, guint8 request_type, guint8 request, guint16 value, guint16 index,
            guint8 *data, guint16 length)
{
  g_autoptr(GError) error = NULL;
  guint32 actual = 0;
  gint32 status = 1;

  g_assert_true (pb_remote_device_control (device, request_type | PB_USB_DIR_IN, request, value, index, data, length,
                                           &actual, TRANSFER_TIMEOUT_MS, &status, &error));
  g_assert_no_error (error);
  g_assert_cmpint (status, ==, 0);
  g_assert_cmpuint (actual, <=, length);
  return actual;
}

static void
control_out (PbRemoteDevice *device, guint8 request_type, guint8 request, guint16 value, guint16 index,
             guint8 *data, guint16 length)
{
  g_autoptr(GError) error = NULL;
  guint32 actual = 0;
  gint32 status = 1;

  g_assert_true (pb_remote_device_control (device, request_type, request, value, index, data, length, &actual,
                                           TRANSFER_TIMEOUT_MS, &status, &error));
  g_assert_no_error (error);
  g_assert_cmpint (status, ==, 0);
  g_assert_cmpuint (actual, ==, length);
}

static guint32
get_descriptor (PbRemoteDevice *device, guint8 type, guint8 index, guint16 langid, guint8 *data, guint16 length)
{
  return control_in (device, PB_USB_TYPE_STANDARD | PB_USB_RECIP_DEVICE, PB_USB_REQ_GET_DESCRIPTOR,
                     (guint16) (type << 8 | index), langid, data, length);
}

/* The whole configuration descriptor: the 9-byte header first, then wTotalLength bytes. */
static GBytes *
get_configuration (PbRemoteDevice *device)
{
  guint8 header[9];
  guint16 total;
  guint8 *full;

  g_assert_cmpuint (get_descriptor (device, PB_USB_DT_CONFIG, 0, 0, header, sizeof header), ==, 9);
  g_assert_cmpuint (header[0], ==, 9);
  g_assert_cmpuint (header[1], ==, PB_USB_DT_CONFIG);
  total = (guint16) (header[2] | header[3] << 8);
  g_assert_cmpuint (total, >=, 9);
  full = g_malloc (total);
  g_assert_cmpuint (get_descriptor (device, PB_USB_DT_CONFIG, 0, 0, full, total), ==, total);
  g_assert_cmpmem (full, 9, header, 9);
  return g_bytes_new_take (full, total);
}

static void
set_configuration (PbRemoteDevice *device, GBytes *configuration)
{
  const guint8 *config = g_bytes_get_data (configuration, NULL);

  control_out (device, PB_USB_TYPE_STANDARD | PB_USB_RECIP_DEVICE, PB_USB_REQ_SET_CONFIGURATION, config[5], 0,
               NULL, 0);
}

/* A string descriptor as UTF-8. */
static char *
get_string (PbRemoteDevice *device, guint8 index)
{
  guint8 data[255];
  guint32 n = get_descriptor (device, PB_USB_DT_STRING, index, 0x0409, data, sizeof data);
  gunichar2 utf16[127];
  g_autoptr(GError) error = NULL;
  char *utf8;

  g_assert_cmpuint (n, >=, 2);
  g_assert_cmpuint (data[0], ==, n);
  g_assert_cmpuint (data[1], ==, PB_USB_DT_STRING);
  g_assert_cmpuint (n % 2, ==, 0);
  for (guint i = 0; i < (n - 2) / 2; i++)
    utf16[i] = (gunichar2) (data[2 + 2 * i] | data[3 + 2 * i] << 8);
  utf8 = g_utf16_to_utf8 (utf16, (n - 2) / 2, NULL, NULL, &error);
  g_assert_no_error (error);
  return utf8;
}

static void
clear_halt (PbRemoteDevice *device, guint8 endpoint_address)
{
  control_out (device, PB_USB_TYPE_STANDARD | PB_USB_RECIP_ENDPOINT, PB_USB_REQ_CLEAR_FEATURE,
               PB_USB_FEATURE_ENDPOINT_HALT, endpoint_address, NULL, 0);
}

/* One bulk/interrupt transfer. Returns the URB status (0 or a negative errno) and the actual
 * length; a transport failure (timeout, closed connection) fails the test. */
static gint32
transfer (PbRemoteDevice *device, guint8 endpoint_address, guint8 *data, guint32 length, guint32 *actual)
{
  g_autoptr(GError) error = NULL;
  gint32 status = 1;
  gboolean ok;

  *actual = 0;
  ok = pb_remote_device_transfer (device, endpoint_address & 0x0f,
                                  (endpoint_address & 0x80) ? PB_USBIP_DIR_IN : PB_USBIP_DIR_OUT, data, length,
                                  actual, TRANSFER_TIMEOUT_MS, &status, &error);
  if (!ok && status == 0)
    g_error ("transfer on endpoint 0x%02x failed: %s", endpoint_address, error->message);
  g_assert_true (ok == (status == 0));
  g_assert_cmpuint (*actual, <=, length);
  return status;
}

static char *
sha256_of_file (const char *path)
{
  g_autofree char *contents = NULL;
  gsize len = 0;
  g_autoptr(GError) error = NULL;

  g_file_get_contents (path, &contents, &len, &error);
  g_assert_no_error (error);
  return g_compute_checksum_for_data (G_CHECKSUM_SHA256, (const guchar *) contents, len);
}

static guint8 *
random_bytes (gsize len)
{
  guint8 *data = g_malloc (len);

  for (gsize i = 0; i < len; i += 4)
    {
      guint32 r = g_random_int ();
      memcpy (data + i, &r, MIN (4, len - i));
    }
  return data;
}

/* ---- enumeration ---- */

static const struct {
  guint8 class, subclass, protocol;
  gboolean match_protocol;
} expected_interfaces[3] = {
  { 0x08, 0x06, 0x50, TRUE },  /* mass storage, SCSI transparent, Bulk-Only */
  { 0x03, 0x01, 0x01, TRUE },  /* HID, boot interface, keyboard */
  { 0x02, 0x02, 0x00, FALSE }, /* CDC, ACM */
};

static gboolean
record_has_interface (const PbUsbipDeviceRecord *record, guint index)
{
  for (guint i = 0; i < record->num_interfaces; i++)
    if (record->interfaces[i].interface_class == expected_interfaces[index].class &&
        record->interfaces[i].interface_subclass == expected_interfaces[index].subclass &&
        (!expected_interfaces[index].match_protocol ||
         record->interfaces[i].interface_protocol == expected_interfaces[index].protocol))
      return TRUE;
  return FALSE;
}

static void
check_descriptors (PbRemoteDevice *device, const PbUsbipDeviceRecord *listed)
{
  guint8 dd[18];
  guint8 langs[255];
  g_autoptr(GBytes) configuration = NULL;
  const guint8 *config;
  gsize config_len;
  guint n_interfaces = 0;
  guint n;

  /* A short read returns only what was asked for. */
  g_assert_cmpuint (get_descriptor (device, PB_USB_DT_DEVICE, 0, 0, dd, 8), ==, 8);
  g_assert_cmpuint (dd[0], ==, 18);
  g_assert_cmpuint (get_descriptor (device, PB_USB_DT_DEVICE, 0, 0, dd, sizeof dd), ==, 18);
  g_assert_cmpuint (dd[0], ==, 18);
  g_assert_cmpuint (dd[1], ==, PB_USB_DT_DEVICE);
  g_assert_cmphex (dd[8] | dd[9] << 8, ==, listed->id_vendor);
  g_assert_cmphex (dd[10] | dd[11] << 8, ==, listed->id_product);
  g_assert_cmphex (dd[12] | dd[13] << 8, ==, listed->bcd_device);
  g_assert_cmphex (dd[4], ==, listed->device_class);
  g_assert_cmphex (dd[5], ==, listed->device_subclass);
  g_assert_cmphex (dd[6], ==, listed->device_protocol);
  g_assert_cmpuint (dd[17], ==, listed->num_configurations);
  g_assert_cmpuint (dd[17], >=, 1);

  configuration = get_configuration (device);
  config = g_bytes_get_data (configuration, &config_len);
  g_assert_cmpuint (config[4], ==, listed->num_interfaces);
  /* Interfaces (alternate setting 0) in the order of the device list's interface records. */
  for (gsize pos = 0; pos + 2 <= config_len; pos += config[pos])
    {
      g_assert_cmpuint (config[pos], >=, 2);
      g_assert_cmpuint (pos + config[pos], <=, config_len);
      if (config[pos + 1] == PB_USB_DT_INTERFACE && config[pos + 3] == 0)
        {
          g_assert_cmpuint (n_interfaces, <, listed->num_interfaces);
          g_assert_cmphex (config[pos + 5], ==, listed->interfaces[n_interfaces].interface_class);
          g_assert_cmphex (config[pos + 6], ==, listed->interfaces[n_interfaces].interface_subclass);
          g_assert_cmphex (config[pos + 7], ==, listed->interfaces[n_interfaces].interface_protocol);
          n_interfaces++;
        }
    }
  g_assert_cmpuint (n_interfaces, ==, listed->num_interfaces);

  /* String 0: the languages, US English. */
  n = get_descriptor (device, PB_USB_DT_STRING, 0, 0, langs, sizeof langs);
  g_assert_cmpuint (n, >=, 4);
  g_assert_cmpuint (langs[0], ==, n);
  g_assert_cmpuint (langs[1], ==, PB_USB_DT_STRING);
  g_assert_cmphex (langs[2] | langs[3] << 8, ==, 0x0409);

  g_assert_true (dd[14] != 0 || dd[15] != 0);
  for (guint i = 14; i <= 16; i++)
    if (dd[i] != 0)
      {
        g_autofree char *text = get_string (device, dd[i]);
        g_test_message ("%s string %u: “%s”", listed->busid, dd[i], text);
        g_assert_cmpstr (text, !=, "");
      }
}

static void
test_enumerate (void)
{
  g_autoptr(PbTestServer) server = pb_test_server_startv (NULL);
  g_autoptr(GPtrArray) devices = NULL;
  g_autoptr(GError) error = NULL;

  g_assert_cmpuint (pb_test_server_get_n_devices (server), ==, 3);
  devices = pb_remote_list_devices ("127.0.0.1", pb_test_server_get_port (server), NULL, &error);
  g_assert_no_error (error);
  g_assert_nonnull (devices);
  g_assert_cmpuint (devices->len, ==, 3);

  /* Default devices, in this order: msc, keyboard, serial. */
  for (guint i = 0; i < devices->len; i++)
    {
      const PbUsbipDeviceRecord *listed = devices->pdata[i];
      g_autofree char *busid = g_strdup_printf ("100-%u", i + 1);
      PbRemoteDevice *device;
      const PbUsbipDeviceRecord *imported;

      g_test_message ("%s: %04x:%04x class %02x, %u interfaces, speed %s", listed->busid, listed->id_vendor,
                      listed->id_product, listed->device_class, listed->num_interfaces,
                      pb_usbip_speed_to_string (listed->speed));
      g_assert_cmpstr (listed->busid, ==, busid);
      g_assert_cmpstr (listed->busid, ==, pb_test_server_get_busid (server, i));
      g_assert_cmpuint (listed->busnum, ==, 100);
      g_assert_cmpuint (listed->devnum, ==, i + 1);
      g_assert_cmpuint (listed->id_vendor, !=, 0);
      g_assert_cmpuint (listed->speed, >=, PB_USBIP_SPEED_LOW);
      g_assert_cmpuint (listed->speed, <=, PB_USBIP_SPEED_SUPER_PLUS);
      g_assert_cmpuint (listed->num_interfaces, >=, 1);
      g_assert_true (record_has_interface (listed, i));

      device = import_device (server, listed->busid);
      imported = pb_remote_device_get_record (device);
      g_assert_cmphex (imported->id_vendor, ==, listed->id_vendor);
      g_assert_cmphex (imported->id_product, ==, listed->id_product);
      g_assert_cmpuint (imported->busnum, ==, listed->busnum);
      g_assert_cmpuint (imported->devnum, ==, listed->devnum);
      g_assert_cmpuint (imported->speed, ==, listed->speed);
      check_descriptors (device, listed);
      close_device (server, device, listed->busid);
    }

  g_assert_true (pb_test_server_stop (server));
}

/* ---- mass storage over Bulk-Only Transport ---- */

#define IMAGE_SIZE (4u * 1024u * 1024u)
#define CHUNK (64u * 1024u)
#define BLOCK 512u

typedef struct {
  PbRemoteDevice *device;
  guint8 ep_in, ep_out;
  guint32 tag;
} Bot;

typedef struct {
  guint8 status;
  guint32 residue;
  guint32 data_actual;
  gint32 data_status;
} BotResult;

static guint32
read_le32 (const guint8 *p)
{
  return (guint32) p[0] | (guint32) p[1] << 8 | (guint32) p[2] << 16 | (guint32) p[3] << 24;
}

static void
write_le32 (guint8 *p, guint32 v)
{
  p[0] = v; p[1] = v >> 8; p[2] = v >> 16; p[3] = v >> 24;
}

static void
bot_setup (Bot *bot, PbRemoteDevice *device)
{
  g_autoptr(GBytes) configuration = get_configuration (device);
  gsize len;
  const guint8 *config = g_bytes_get_data (configuration, &len);

  memset (bot, 0, sizeof *bot);
  bot->device = device;
  bot->tag = g_random_int ();
  bot->ep_in = pb_test_find_endpoint (config, len, 0x08, 2, TRUE);
  bot->ep_out = pb_test_find_endpoint (config, len, 0x08, 2, FALSE);
  g_assert_cmphex (bot->ep_in & 0x80, ==, 0x80);
  g_assert_cmphex (bot->ep_out & 0x80, ==, 0);
  g_assert_cmpuint (bot->ep_out, !=, 0);
  set_configuration (device, configuration);
}

/* CBW, data phase, CSW. A stalled data phase or CSW is recovered as the BOT spec says (clear
 * the halt, read the CSW). Checks the CSW's signature and tag. */
static void
bot_command (Bot *bot, const guint8 *cdb, guint8 cdb_len, gboolean in, guint8 *data, guint32 data_len,
             BotResult *result)
{
  guint8 cbw[31] = { 0 };
  guint8 csw[13];
  guint32 actual = 0;
  guint32 tag = ++bot->tag;
  gint32 status;

  memset (result, 0, sizeof *result);
  cbw[0] = 'U'; cbw[1] = 'S'; cbw[2] = 'B'; cbw[3] = 'C'; /* 0x43425355 little-endian */
  write_le32 (cbw + 4, tag);
  write_le32 (cbw + 8, data_len);
  cbw[12] = in ? 0x80 : 0x00;
  cbw[13] = 0;       /* LUN */
  cbw[14] = cdb_len;
  memcpy (cbw + 15, cdb, cdb_len);
  g_assert_cmpint (transfer (bot->device, bot->ep_out, cbw, sizeof cbw, &actual), ==, 0);
  g_assert_cmpuint (actual, ==, sizeof cbw);

  if (data_len > 0)
    {
      guint8 ep = in ? bot->ep_in : bot->ep_out;
      result->data_status = transfer (bot->device, ep, data, data_len, &result->data_actual);
      if (result->data_status == PB_URB_EPIPE)
        clear_halt (bot->device, ep);
      else
        g_assert_cmpint (result->data_status, ==, 0);
    }

  status = transfer (bot->device, bot->ep_in, csw, sizeof csw, &actual);
  if (status == PB_URB_EPIPE)
    {
      clear_halt (bot->device, bot->ep_in);
      status = transfer (bot->device, bot->ep_in, csw, sizeof csw, &actual);
    }
  g_assert_cmpint (status, ==, 0);
  g_assert_cmpuint (actual, ==, 13);
  g_assert_cmphex (read_le32 (csw), ==, 0x53425355); /* "USBS" */
  g_assert_cmphex (read_le32 (csw + 4), ==, tag);
  result->residue = read_le32 (csw + 8);
  result->status = csw[12];
  g_assert_cmpuint (result->status, <=, 2);
}

static void
bot_rw10 (Bot *bot, gboolean read, guint32 lba, guint16 blocks, guint8 *data, BotResult *result)
{
  guint8 cdb[10] = { read ? 0x28 : 0x2a, 0 };

  cdb[2] = lba >> 24; cdb[3] = lba >> 16; cdb[4] = lba >> 8; cdb[5] = lba;
  cdb[7] = blocks >> 8; cdb[8] = blocks;
  bot_command (bot, cdb, sizeof cdb, read, data, (guint32) blocks * BLOCK, result);
}

/* Reads the whole disk in 64 KiB READ(10)s; returns its SHA-256. */
static char *
bot_read_all (Bot *bot)
{
  g_autoptr(GChecksum) checksum = g_checksum_new (G_CHECKSUM_SHA256);
  g_autofree guint8 *chunk = g_malloc (CHUNK);

  for (guint32 offset = 0; offset < IMAGE_SIZE; offset += CHUNK)
    {
      BotResult r;
      bot_rw10 (bot, TRUE, offset / BLOCK, CHUNK / BLOCK, chunk, &r);
      g_assert_cmpuint (r.status, ==, 0);
      g_assert_cmpuint (r.residue, ==, 0);
      g_assert_cmpuint (r.data_actual, ==, CHUNK);
      g_checksum_update (checksum, chunk, CHUNK);
    }
  return g_strdup (g_checksum_get_string (checksum));
}

static void
bot_inquiry_and_capacity (Bot *bot)
{
  static const guint8 inquiry[6] = { 0x12, 0, 0, 0, 36, 0 };
  static const guint8 test_unit_ready[6] = { 0x00, 0, 0, 0, 0, 0 };
  static const guint8 read_capacity[10] = { 0x25, 0 };
  guint8 data[36] = { 0 };
  BotResult r;
  guint32 last_lba, block_len;

  bot_command (bot, inquiry, sizeof inquiry, TRUE, data, 36, &r);
  g_assert_cmpuint (r.status, ==, 0);
  g_assert_cmpuint (r.data_actual, >=, 36);
  g_assert_cmpuint (r.residue, ==, 36 - r.data_actual);
  g_assert_cmphex (data[0] & 0x1f, ==, 0x00); /* direct-access block device */
  g_assert_cmpuint (data[4] + 5, >=, 36);      /* additional length covers the standard data */
  for (guint i = 8; i < 36; i++)
    g_assert_true (g_ascii_isprint (data[i]));
  g_test_message ("INQUIRY: “%.8s” “%.16s” “%.4s”", data + 8, data + 16, data + 32);

  bot_command (bot, test_unit_ready, sizeof test_unit_ready, FALSE, NULL, 0, &r);
  g_assert_cmpuint (r.status, ==, 0);
  g_assert_cmpuint (r.residue, ==, 0);

  bot_command (bot, read_capacity, sizeof read_capacity, TRUE, data, 8, &r);
  g_assert_cmpuint (r.status, ==, 0);
  g_assert_cmpuint (r.data_actual, ==, 8);
  g_assert_cmpuint (r.residue, ==, 0);
  last_lba = pb_read_be32 (data);
  block_len = pb_read_be32 (data + 4);
  g_assert_cmpuint (block_len, ==, BLOCK);
  g_assert_cmpuint (((guint64) last_lba + 1) * block_len, ==, IMAGE_SIZE);
}

static char *
make_image (const char *dir, guint8 **contents_out)
{
  char *path = g_build_filename (dir, "disk.img", NULL);
  guint8 *contents = random_bytes (IMAGE_SIZE);
  g_autoptr(GError) error = NULL;

  g_file_set_contents (path, (const char *) contents, IMAGE_SIZE, &error);
  g_assert_no_error (error);
  *contents_out = contents;
  return path;
}

static void
test_mass_storage (void)
{
  g_autofree char *dir = pb_test_make_scratch_dir ();
  g_autofree guint8 *original = NULL;
  g_autofree char *path = make_image (dir, &original);
  g_autofree char *spec = g_strdup_printf ("msc:%s", path);
  g_autoptr(PbTestServer) server = pb_test_server_start ("--virtual", spec, NULL);
  g_autofree char *original_sha = sha256_of_file (path);
  g_autofree char *read_sha = NULL;
  g_autofree char *written_sha = NULL;
  g_autofree char *reread_sha = NULL;
  g_autofree char *disk_sha = NULL;
  g_autofree guint8 *fresh = random_bytes (IMAGE_SIZE);
  g_autofree guint8 *block = g_malloc (2 * BLOCK);
  const char *busid = pb_test_server_get_busid (server, 0);
  static const guint8 synchronize_cache[10] = { 0x35, 0 };
  PbRemoteDevice *device;
  Bot bot;
  BotResult r;

  device = import_device (server, busid);
  bot_setup (&bot, device);
  bot_inquiry_and_capacity (&bot);

  /* The whole disk reads back as the file. */
  read_sha = bot_read_all (&bot);
  g_assert_cmpstr (read_sha, ==, original_sha);

  /* The host asks for more than the command moves: the CSW reports the difference. */
  {
    guint8 cdb[10] = { 0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0 }; /* READ(10) LBA 1, 1 block */
    bot_command (&bot, cdb, sizeof cdb, TRUE, block, 2 * BLOCK, &r);
    g_assert_cmpuint (r.status, ==, 0);
    g_assert_cmpuint (r.data_actual, ==, BLOCK);
    g_assert_cmpuint (r.residue, ==, BLOCK);
    g_assert_cmpmem (block, BLOCK, original + BLOCK, BLOCK);
  }

  /* Overwrite everything, read it back. */
  written_sha = g_compute_checksum_for_data (G_CHECKSUM_SHA256, fresh, IMAGE_SIZE);
  for (guint32 offset = 0; offset < IMAGE_SIZE; offset += CHUNK)
    {
      bot_rw10 (&bot, FALSE, offset / BLOCK, CHUNK / BLOCK, fresh + offset, &r);
      g_assert_cmpuint (r.status, ==, 0);
      g_assert_cmpuint (r.residue, ==, 0);
      g_assert_cmpuint (r.data_actual, ==, CHUNK);
    }
  reread_sha = bot_read_all (&bot);
  g_assert_cmpstr (reread_sha, ==, written_sha);

  bot_command (&bot, synchronize_cache, sizeof synchronize_cache, FALSE, NULL, 0, &r);
  g_assert_cmpuint (r.status, ==, 0);

  close_device (server, device, busid);
  disk_sha = sha256_of_file (path);
  g_assert_cmpstr (disk_sha, ==, written_sha);

  g_assert_true (pb_test_server_stop (server));
  pb_test_remove_tree (dir);
}

static void
test_mass_storage_read_only (void)
{
  g_autofree char *dir = pb_test_make_scratch_dir ();
  g_autofree guint8 *original = NULL;
  g_autofree char *path = make_image (dir, &original);
  g_autofree char *spec = g_strdup_printf ("msc:%s,ro", path);
  g_autoptr(PbTestServer) server = pb_test_server_start ("--virtual", spec, NULL);
  g_autofree char *original_sha = sha256_of_file (path);
  g_autofree char *disk_sha = NULL;
  g_autofree guint8 *data = random_bytes (CHUNK);
  const char *busid = pb_test_server_get_busid (server, 0);
  static const guint8 request_sense[6] = { 0x03, 0, 0, 0, 18, 0 };
  guint8 sense[18] = { 0 };
  PbRemoteDevice *device;
  Bot bot;
  BotResult r;

  g_assert_nonnull (strstr (pb_test_server_get_description (server, 0), "read-only"));
  device = import_device (server, busid);
  bot_setup (&bot, device);
  bot_inquiry_and_capacity (&bot);

  /* Reads work. */
  bot_rw10 (&bot, TRUE, 0, CHUNK / BLOCK, data, &r);
  g_assert_cmpuint (r.status, ==, 0);
  g_assert_cmpuint (r.residue, ==, 0);
  g_assert_cmpmem (data, CHUNK, original, CHUNK);

  /* A write fails with Command Failed and DATA PROTECT. */
  memset (data, 0xa5, BLOCK * 8);
  bot_rw10 (&bot, FALSE, 8, 8, data, &r);
  g_test_message ("WRITE(10) on a read-only disk: data phase status %d, %u bytes taken; CSW status %u, residue %u",
                  r.data_status, r.data_actual, r.status, r.residue);
  g_assert_cmpuint (r.status, ==, 1);
  bot_command (&bot, request_sense, sizeof request_sense, TRUE, sense, sizeof sense, &r);
  g_assert_cmpuint (r.status, ==, 0);
  g_assert_cmpuint (r.data_actual, >=, 14);
  g_assert_cmphex (sense[0] & 0x7f, ==, 0x70); /* fixed format, current */
  g_test_message ("sense key %u ASC 0x%02x ASCQ 0x%02x", sense[2] & 0x0f, sense[12], sense[13]);
  g_assert_cmpuint (sense[2] & 0x0f, ==, 7);

  /* The device still works after the failure, and nothing changed. */
  bot_rw10 (&bot, TRUE, 8, 8, data, &r);
  g_assert_cmpuint (r.status, ==, 0);
  g_assert_cmpmem (data, 8 * BLOCK, original + 8 * BLOCK, 8 * BLOCK);

  close_device (server, device, busid);
  disk_sha = sha256_of_file (path);
  g_assert_cmpstr (disk_sha, ==, original_sha);
  g_assert_true (pb_test_server_stop (server));
  pb_test_remove_tree (dir);
}

/* ---- keyboard ---- */

static const guint8 hi_reports[8][8] = {
  { 0x02, 0, 0x0b, 0, 0, 0, 0, 0 }, /* shift + h */
  { 0 },
  { 0x00, 0, 0x0c, 0, 0, 0, 0, 0 }, /* i */
  { 0 },
  { 0x02, 0, 0x1e, 0, 0, 0, 0, 0 }, /* shift + 1 */
  { 0 },
  { 0x00, 0, 0x28, 0, 0, 0, 0, 0 }, /* Enter */
  { 0 },
};

/* Imports the keyboard, configures it and returns its interrupt IN endpoint. */
static guint8
start_keyboard (PbTestServer *server, PbRemoteDevice **device)
{
  g_autoptr(GBytes) configuration = NULL;
  const guint8 *config;
  gsize config_len;
  guint8 ep;

  *device = import_device (server, pb_test_server_get_busid (server, 0));
  configuration = get_configuration (*device);
  config = g_bytes_get_data (configuration, &config_len);
  ep = pb_test_find_endpoint (config, config_len, 0x03, 3, TRUE);
  g_assert_cmphex (ep & 0x80, ==, 0x80);
  set_configuration (*device, configuration);
  return ep;
}

static void
expect_reports (PbRemoteDevice *device, guint8 ep, const guint8 (*expected)[8], guint n)
{
  for (guint i = 0; i < n; i++)
    {
      guint8 report[8];
      guint32 actual = 0;

      memset (report, 0xee, sizeof report);
      g_assert_cmpint (transfer (device, ep, report, sizeof report, &actual), ==, 0);
      g_assert_cmpuint (actual, ==, 8);
      g_test_message ("report %u: %02x %02x %02x %02x %02x %02x %02x %02x", i, report[0], report[1], report[2],
                      report[3], report[4], report[5], report[6], report[7]);
      g_assert_cmpmem (report, 8, expected[i], 8);
    }
}

static void
test_keyboard (void)
{
  /* The server unescapes "\n" itself, as a shell would pass it. */
  g_autoptr(PbTestServer) server = pb_test_server_start ("--virtual", "keyboard", "--type", "Hi!\\n", NULL);
  PbRemoteDevice *device;
  guint8 ep = start_keyboard (server, &device);

  expect_reports (device, ep, hi_reports, G_N_ELEMENTS (hi_reports));
  close_device (server, device, pb_test_server_get_busid (server, 0));
  g_assert_true (pb_test_server_stop (server));
}

/* --type-stdin types what arrives, when it arrives; a byte it cannot type costs only itself. */
static void
test_keyboard_stdin (void)
{
  g_autoptr(PbTestServer) server = pb_test_server_start ("--virtual", "keyboard", "--type-stdin", NULL);
  static const guint8 a_reports[2][8] = { { 0x00, 0, 0x04, 0, 0, 0, 0, 0 }, { 0 } };
  PbRemoteDevice *device;
  guint8 ep = start_keyboard (server, &device);

  pb_test_server_write_stdin (server, "Hi!\n");
  expect_reports (device, ep, hi_reports, G_N_ELEMENTS (hi_reports));
  pb_test_server_write_stdin (server, "\001" "a");
  expect_reports (device, ep, a_reports, G_N_ELEMENTS (a_reports));
  g_assert_true (pb_test_server_is_running (server));
  close_device (server, device, pb_test_server_get_busid (server, 0));
  g_assert_true (pb_test_server_stop (server));
}

/* ---- serial port through a pty ---- */

#define SERIAL_DATA 4096u

static void
test_serial (void)
{
  g_autoptr(PbTestServer) server = pb_test_server_start ("--virtual", "serial:pty", NULL);
  const char *busid = pb_test_server_get_busid (server, 0);
  const char *pty_path = pb_test_server_get_pty_path (server);
  g_autoptr(GBytes) configuration = NULL;
  g_autofree guint8 *to_host = random_bytes (SERIAL_DATA);
  g_autofree guint8 *from_host = random_bytes (SERIAL_DATA);
  g_autofree guint8 *received = g_malloc0 (SERIAL_DATA);
  guint8 line_coding[7] = { 0x00, 0xc2, 0x01, 0x00, 0, 0, 8 }; /* 115200 8N1 */
  guint8 read_back[7] = { 0 };
  PbRemoteDevice *device;
  struct termios tio;
  const guint8 *config;
  gsize config_len;
  guint8 ep_in, ep_out;
  gint comm_interface;
  gsize written = 0, got = 0;
  gint64 deadline;
  int fd;

  g_assert_nonnull (pty_path);
  g_test_message ("pty %s", pty_path);
  fd = open (pty_path, O_RDWR | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
  g_assert_cmpint (fd, >=, 0);
  g_assert_cmpint (tcgetattr (fd, &tio), ==, 0);
  cfmakeraw (&tio);
  g_assert_cmpint (tcsetattr (fd, TCSANOW, &tio), ==, 0);

  device = import_device (server, busid);
  configuration = get_configuration (device);
  config = g_bytes_get_data (configuration, &config_len);
  comm_interface = pb_test_find_interface (config, config_len, 0x02);
  g_assert_cmpint (comm_interface, >=, 0);
  ep_in = pb_test_find_endpoint (config, config_len, 0x0a, 2, TRUE);
  ep_out = pb_test_find_endpoint (config, config_len, 0x0a, 2, FALSE);
  g_assert_cmphex (ep_in & 0x80, ==, 0x80);
  g_assert_cmpuint (ep_out, !=, 0);
  set_configuration (device, configuration);

  /* What cdc-acm does on open: line coding, then DTR and RTS. */
  control_out (device, PB_USB_TYPE_CLASS | PB_USB_RECIP_INTERFACE, 0x20, 0, comm_interface, line_coding,
               sizeof line_coding);
  g_assert_cmpuint (control_in (device, PB_USB_TYPE_CLASS | PB_USB_RECIP_INTERFACE, 0x21, 0, comm_interface,
                                read_back, sizeof read_back), ==, 7);
  g_assert_cmpmem (read_back, 7, line_coding, 7);
  control_out (device, PB_USB_TYPE_CLASS | PB_USB_RECIP_INTERFACE, 0x22, 0x0003, comm_interface, NULL, 0);

  /* pty → bulk IN. Write what the pty takes, collect it with bulk IN. */
  deadline = g_get_monotonic_time () + 30 * G_USEC_PER_SEC;
  while (got < SERIAL_DATA)
    {
      g_assert_cmpint (g_get_monotonic_time (), <, deadline);
      if (written < SERIAL_DATA)
        {
          gssize n = write (fd, to_host + written, MIN (SERIAL_DATA - written, 512));
          if (n > 0)
            written += (gsize) n;
          else
            g_assert_true (n < 0 && (errno == EAGAIN || errno == EINTR));
        }
      if (got < written)
        {
          guint8 buffer[SERIAL_DATA];
          guint32 actual = 0;
          g_assert_cmpint (transfer (device, ep_in, buffer, sizeof buffer, &actual), ==, 0);
          g_assert_cmpuint (got + actual, <=, written);
          memcpy (received + got, buffer, actual);
          got += actual;
        }
    }
  g_assert_cmpmem (received, SERIAL_DATA, to_host, SERIAL_DATA);

  /* bulk OUT → pty, in 512-byte transfers, each read back from the pty before the next. */
  memset (received, 0, SERIAL_DATA);
  got = 0;
  for (gsize sent = 0; sent < SERIAL_DATA; sent += 512)
    {
      guint32 actual = 0;
      g_assert_cmpint (transfer (device, ep_out, from_host + sent, 512, &actual), ==, 0);
      g_assert_cmpuint (actual, ==, 512);
      deadline = g_get_monotonic_time () + 10 * G_USEC_PER_SEC;
      while (got < sent + 512)
        {
          struct pollfd pfd = { .fd = fd, .events = POLLIN };
          gint64 left = (deadline - g_get_monotonic_time ()) / 1000;
          gssize n;

          g_assert_cmpint (left, >, 0);
          if (poll (&pfd, 1, (int) left) <= 0)
            continue;
          n = read (fd, received + got, SERIAL_DATA - got);
          if (n > 0)
            got += (gsize) n;
          else
            g_assert_true (n < 0 && (errno == EAGAIN || errno == EINTR));
        }
      g_assert_cmpuint (got, ==, sent + 512);
    }
  g_assert_cmpmem (received, SERIAL_DATA, from_host, SERIAL_DATA);

  close_device (server, device, busid);
  close (fd);
  g_assert_true (pb_test_server_stop (server));
}

/* ---- the server's log lines ---- */

static void
test_log_lines (void)
{
  g_autoptr(PbTestServer) server = pb_test_server_start ("--virtual", "keyboard", "--virtual", "serial", NULL);
  const char *busid = pb_test_server_get_busid (server, 1);
  g_autofree char *import_prefix = g_strdup_printf ("import %s ", busid);
  g_autofree char *close_prefix = g_strdup_printf ("close %s ", busid);
  g_autofree char *output = NULL;
  guint8 dd[18];
  PbRemoteDevice *device;

  g_assert_cmpstr (busid, ==, "100-2");
  g_assert_cmpuint (pb_test_server_count_lines (server, "import "), ==, 0);

  device = import_device (server, busid);
  g_assert_true (pb_test_server_wait_lines (server, import_prefix, 1, LOG_TIMEOUT_MS));
  g_assert_cmpuint (get_descriptor (device, PB_USB_DT_DEVICE, 0, 0, dd, sizeof dd), ==, 18);
  g_assert_cmpuint (pb_test_server_count_lines (server, close_prefix), ==, 0);
  close_device (server, device, busid);

  output = pb_test_server_dup_output (server);
  g_test_message ("server output:\n%s", output);
  g_assert_cmpuint (pb_test_server_count_lines (server, import_prefix), ==, 1);
  g_assert_cmpuint (pb_test_server_count_lines (server, close_prefix), ==, 1);
  g_assert_cmpuint (pb_test_server_count_lines (server, "import "), ==, 1);
  g_assert_cmpuint (pb_test_server_count_lines (server, "close "), ==, 1);
  g_assert_cmpuint (pb_test_server_count_lines (server, "reject "), ==, 0);
  /* Both name the peer; the import names the device. */
  g_assert_nonnull (strstr (output, "(virtual serial port, echo) by 127.0.0.1:"));
  g_assert_true (g_regex_match_simple ("^close 100-2 by 127\\.0\\.0\\.1:[0-9]+: .*\\([0-9]+ URBs", output,
                                       G_REGEX_MULTILINE, 0));

  g_assert_true (pb_test_server_stop (server));
  g_assert_cmpuint (pb_test_server_count_lines (server, "stopping"), ==, 1);
}

/* ---- reuse and exclusivity ---- */

static void
test_reuse_and_busy (void)
{
  g_autoptr(PbTestServer) server = pb_test_server_start ("--virtual", "keyboard", NULL);
  const char *busid = pb_test_server_get_busid (server, 0);
  g_autoptr(GError) error = NULL;
  PbRemoteDevice *device;
  PbRemoteDevice *second;
  guint8 dd[18];

  device = import_device (server, busid);
  g_assert_cmpuint (get_descriptor (device, PB_USB_DT_DEVICE, 0, 0, dd, sizeof dd), ==, 18);
  close_device (server, device, busid);

  device = import_device (server, busid);
  g_assert_cmpuint (get_descriptor (device, PB_USB_DT_DEVICE, 0, 0, dd, sizeof dd), ==, 18);

  /* A second import while the first holds it. */
  second = pb_remote_import ("127.0.0.1", pb_test_server_get_port (server), busid, NULL, &error);
  g_assert_error (error, PB_ERROR, PB_ERROR_BUSY);
  g_assert_null (second);
  g_assert_true (pb_test_server_wait_lines (server, "reject 127.0.0.1:", 1, LOG_TIMEOUT_MS));

  /* The first connection is unaffected. */
  g_assert_false (pb_remote_device_is_closed (device));
  g_assert_cmpuint (get_descriptor (device, PB_USB_DT_DEVICE, 0, 0, dd, sizeof dd), ==, 18);
  close_device (server, device, busid);

  g_assert_cmpuint (pb_test_server_count_lines (server, "import "), ==, 2);
  g_assert_cmpuint (pb_test_server_count_lines (server, "close "), ==, 2);
  g_assert_true (pb_test_server_stop (server));
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  signal (SIGPIPE, SIG_IGN);

  g_test_add_func ("/loopback/enumerate", test_enumerate);
  g_test_add_func ("/loopback/mass-storage", test_mass_storage);
  g_test_add_func ("/loopback/mass-storage-read-only", test_mass_storage_read_only);
  g_test_add_func ("/loopback/keyboard", test_keyboard);
  g_test_add_func ("/loopback/keyboard-stdin", test_keyboard_stdin);
  g_test_add_func ("/loopback/serial", test_serial);
  g_test_add_func ("/loopback/log-lines", test_log_lines);
  g_test_add_func ("/loopback/reuse-and-busy", test_reuse_and_busy);
  return g_test_run ();
}
