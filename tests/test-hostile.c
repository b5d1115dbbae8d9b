/* Hostile clients against a real `plugboard serve`: raw TCP sockets sending garbage, other
 * versions, truncated and oversized requests, bogus URBs and unlink floods, closing at every
 * byte. After each round the server must still be up and serve a well-behaved client, the
 * device the hostile client held must be importable again, and memory must stay bounded. */
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "pb-remote.h"
#include "pb-test-util.h"
#include "pb-virtual-device.h"

#define CLOSE_TIMEOUT_MS 5000
#define REPLY_TIMEOUT_MS 5000
#define LOG_TIMEOUT_MS 10000

enum { DEV_KEYBOARD, DEV_SERIAL, DEV_MSC, N_DEVICES };

static PbTestServer *server;

/* Learned once from the devices' descriptors. */
static struct {
  const char *busid;
  guint32 devid;
  guint8 configuration_value;
  guint8 ep_in;   /* keyboard: interrupt IN; serial, msc: bulk IN */
  guint8 ep_out;  /* serial, msc: bulk OUT */
} devices[N_DEVICES];

static guint16
port (void)
{
  return pb_test_server_get_port (server);
}

static void
assert_server_running (void)
{
  if (!pb_test_server_is_running (server))
    {
      g_autofree char *output = pb_test_server_dup_output (server);
      g_test_message ("server output:\n%s", output);
      g_error ("plugboard serve is gone");
    }
}

/* ---- raw URB messages ---- */

static void
encode_submit (guint8 out[PB_USBIP_URB_HEADER_SIZE], guint32 seqnum, guint32 devid, PbUsbipDirection direction,
               guint ep, guint32 length, gint32 number_of_packets, const guint8 *setup)
{
  PbUsbipUrbHeader header = { 0 };

  header.command = PB_USBIP_CMD_SUBMIT;
  header.seqnum = seqnum;
  header.devid = devid;
  header.direction = direction;
  header.ep = ep;
  header.u.cmd_submit.transfer_flags = direction == PB_USBIP_DIR_IN ? PB_USBIP_URB_DIR_IN : 0;
  header.u.cmd_submit.transfer_buffer_length = length;
  header.u.cmd_submit.number_of_packets = number_of_packets;
  if (setup != NULL)
    memcpy (header.u.cmd_submit.setup, setup, 8);
  pb_usbip_urb_header_encode (&header, out);
}

static void
encode_unlink (guint8 out[PB_USBIP_URB_HEADER_SIZE], guint32 seqnum, guint32 devid, guint32 target)
{
  PbUsbipUrbHeader header = { 0 };

  header.command = PB_USBIP_CMD_UNLINK;
  header.seqnum = seqnum;
  header.devid = devid;
  header.u.cmd_unlink.unlink_seqnum = target;
  pb_usbip_urb_header_encode (&header, out);
}

/* Reads one RET_SUBMIT or RET_UNLINK and, when it answers in_seqnum (an IN request; 0: none),
 * the data behind it. Servers may zero the reply's direction, so the request's direction
 * decides, as in vhci. */
static void
read_reply (int fd, guint32 in_seqnum, PbUsbipUrbHeader *header, guint8 *payload, gsize payload_size)
{
  guint8 raw[PB_USBIP_URB_HEADER_SIZE];
  g_autoptr(GError) error = NULL;
  guint32 payload_len = 0;

  g_assert_cmpint (pb_test_raw_recv (fd, raw, sizeof raw, REPLY_TIMEOUT_MS), ==, sizeof raw);
  g_assert_true (pb_usbip_urb_header_decode (raw, sizeof raw, header, &error));
  g_assert_no_error (error);
  g_assert_true (header->command == PB_USBIP_RET_SUBMIT || header->command == PB_USBIP_RET_UNLINK);
  if (header->command == PB_USBIP_RET_SUBMIT && in_seqnum != 0 && header->seqnum == in_seqnum)
    payload_len = header->u.ret_submit.actual_length;
  g_assert_cmpuint (payload_len, <=, payload_size);
  if (payload_len > 0)
    g_assert_cmpint (pb_test_raw_recv (fd, payload, payload_len, REPLY_TIMEOUT_MS), ==, payload_len);
}

static guint32
raw_control (int fd, guint32 seqnum, guint32 devid, guint8 request_type, guint8 request, guint16 value,
             guint16 index, guint8 *data, guint16 length)
{
  guint8 setup[8] = { request_type, request, value & 0xff, value >> 8, index & 0xff, index >> 8,
                      length & 0xff, length >> 8 };
  gboolean in = (request_type & PB_USB_DIR_IN) != 0;
  guint8 message[PB_USBIP_URB_HEADER_SIZE];
  PbUsbipUrbHeader reply;

  encode_submit (message, seqnum, devid, in ? PB_USBIP_DIR_IN : PB_USBIP_DIR_OUT, 0, length, 0, setup);
  g_assert_true (pb_test_raw_send (fd, message, sizeof message, REPLY_TIMEOUT_MS));
  if (!in && length > 0)
    g_assert_true (pb_test_raw_send (fd, data, length, REPLY_TIMEOUT_MS));
  read_reply (fd, in ? seqnum : 0, &reply, data, length);
  g_assert_cmpuint (reply.command, ==, PB_USBIP_RET_SUBMIT);
  g_assert_cmpuint (reply.seqnum, ==, seqnum);
  g_assert_cmpint (reply.u.ret_submit.status, ==, 0);
  g_assert_cmpuint (reply.u.ret_submit.actual_length, <=, length);
  return reply.u.ret_submit.actual_length;
}

/* ---- sessions ---- */

static guint
count_closes (guint device)
{
  g_autofree char *prefix = g_strdup_printf ("close %s ", devices[device].busid);
  return pb_test_server_count_lines (server, prefix);
}

static void
wait_closes (guint device, guint count)
{
  g_autofree char *prefix = g_strdup_printf ("close %s ", devices[device].busid);

  if (!pb_test_server_wait_lines (server, prefix, count, LOG_TIMEOUT_MS))
    {
      g_autofree char *output = pb_test_server_dup_output (server);
      g_test_message ("server output:\n%s", output);
      g_error ("%s: no “close” line: the session was not torn down", devices[device].busid);
    }
}

typedef struct {
  int fd;
  guint device;
  guint closes;
} Session;

/* Imports device over a raw socket; the device must be free. */
static Session
session_open (guint device)
{
  Session s = { .device = device, .closes = count_closes (device) };
  gint status = -1;

  s.fd = pb_test_raw_import (port (), devices[device].busid, &status);
  if (s.fd < 0)
    g_error ("import of %s failed with status %d", devices[device].busid, status);
  return s;
}

/* The server must close the connection by itself, and free the device. */
static void
session_expect_server_close (Session *s)
{
  if (!pb_test_raw_wait_closed (s->fd, CLOSE_TIMEOUT_MS, NULL))
    g_error ("%s: the server kept a hostile connection open", devices[s->device].busid);
  close (s->fd);
  s->fd = -1;
  wait_closes (s->device, s->closes + 1);
}

/* The client hangs up; the server must free the device. */
static void
session_hang_up (Session *s)
{
  close (s->fd);
  s->fd = -1;
  wait_closes (s->device, s->closes + 1);
}

static void
session_set_configuration (Session *s, guint32 seqnum)
{
  raw_control (s->fd, seqnum, devices[s->device].devid, PB_USB_RECIP_DEVICE, PB_USB_REQ_SET_CONFIGURATION,
               devices[s->device].configuration_value, 0, NULL, 0);
}

/* A well-behaved client: list, import, GET_DESCRIPTOR, hang up. */
static void
well_behaved (guint device)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GPtrArray) list = pb_remote_list_devices ("127.0.0.1", port (), NULL, &error);
  PbRemoteDevice *remote;
  guint8 dd[18] = { 0 };
  guint32 actual = 0;
  gint32 status = 1;
  guint closes = count_closes (device);
  const PbUsbipDeviceRecord *record;

  g_assert_no_error (error);
  g_assert_cmpuint (list->len, ==, N_DEVICES);
  record = list->pdata[device];
  g_assert_cmpstr (record->busid, ==, devices[device].busid);

  remote = pb_remote_import ("127.0.0.1", port (), devices[device].busid, NULL, &error);
  g_assert_no_error (error);
  g_assert_true (pb_remote_device_control (remote, PB_USB_DIR_IN, PB_USB_REQ_GET_DESCRIPTOR, PB_USB_DT_DEVICE << 8,
                                           0, dd, sizeof dd, &actual, REPLY_TIMEOUT_MS, &status, &error));
  g_assert_no_error (error);
  g_assert_cmpint (status, ==, 0);
  g_assert_cmpuint (actual, ==, 18);
  g_assert_cmpuint (dd[1], ==, PB_USB_DT_DEVICE);
  g_assert_cmphex (dd[8] | dd[9] << 8, ==, record->id_vendor);
  pb_remote_device_close (remote);
  g_object_unref (remote);
  wait_closes (device, closes + 1);
  assert_server_running ();
}

static void
well_behaved_all (void)
{
  for (guint i = 0; i < N_DEVICES; i++)
    well_behaved (i);
}

/* ---- discovery ---- */

/* Learns bus IDs, configuration values and endpoints over raw sessions. Runs before the tests
 * (each may be run alone with -p). */
static void
discover (void)
{
  static const guint8 classes[N_DEVICES] = { 0x03, 0x0a, 0x08 };
  static const guint8 in_types[N_DEVICES] = { 3, 2, 2 };

  g_assert_cmpuint (pb_test_server_get_n_devices (server), ==, N_DEVICES);
  for (guint i = 0; i < N_DEVICES; i++)
    {
      Session s;
      guint8 header[9];
      guint8 config[512];
      guint16 total;

      devices[i].busid = pb_test_server_get_busid (server, i);
      devices[i].devid = 100u << 16 | (i + 1);
      s = session_open (i);
      g_assert_cmpuint (raw_control (s.fd, 1, devices[i].devid, PB_USB_DIR_IN, PB_USB_REQ_GET_DESCRIPTOR,
                                     PB_USB_DT_CONFIG << 8, 0, header, sizeof header), ==, 9);
      total = (guint16) (header[2] | header[3] << 8);
      g_assert_cmpuint (total, <=, sizeof config);
      g_assert_cmpuint (raw_control (s.fd, 2, devices[i].devid, PB_USB_DIR_IN, PB_USB_REQ_GET_DESCRIPTOR,
                                     PB_USB_DT_CONFIG << 8, 0, config, total), ==, total);
      devices[i].configuration_value = config[5];
      devices[i].ep_in = pb_test_find_endpoint (config, total, classes[i], in_types[i], TRUE);
      devices[i].ep_out = pb_test_find_endpoint (config, total, classes[i], 2, FALSE);
      g_assert_cmphex (devices[i].ep_in & 0x80, ==, 0x80);
      if (i != DEV_KEYBOARD)
        g_assert_cmpuint (devices[i].ep_out, !=, 0);
      g_test_message ("%s: configuration %u, IN 0x%02x, OUT 0x%02x", devices[i].busid,
                      devices[i].configuration_value, devices[i].ep_in, devices[i].ep_out);
      session_hang_up (&s);
    }
}

static void
test_well_behaved (void)
{
  well_behaved_all ();
  /* Twice: each device is free again after a well-behaved client. */
  well_behaved_all ();
}

/* ---- management phase ---- */

static void
send_and_expect_close (const guint8 *data, gsize len)
{
  int fd = pb_test_raw_connect (port ());

  /* The server may close before taking everything: a failed send is fine. */
  pb_test_raw_send (fd, data, len, REPLY_TIMEOUT_MS);
  if (!pb_test_raw_wait_closed (fd, CLOSE_TIMEOUT_MS, NULL))
    g_error ("the server kept a connection open after %" G_GSIZE_FORMAT " hostile bytes", len);
  close (fd);
}

static void
test_garbage (void)
{
  g_autofree guint8 *big = g_malloc (1024 * 1024);
  guint8 small[64];

  for (guint round = 0; round < 20; round++)
    {
      for (guint i = 0; i < sizeof small; i++)
        small[i] = (guint8) g_random_int ();
      send_and_expect_close (small, sizeof small);
    }
  for (gsize i = 0; i < 1024 * 1024; i++)
    big[i] = (guint8) g_random_int ();
  send_and_expect_close (big, 1024 * 1024);
  /* Right version, nonsense after it. */
  small[0] = 0x01; small[1] = 0x11;
  send_and_expect_close (small, sizeof small);
  assert_server_running ();
  well_behaved_all ();
}

/* A request in another version: an error reply (status != 0) or a close, never a hang. */
static gboolean quiet;

static void
check_old_version (guint16 code)
{
  guint8 request[PB_USBIP_REQ_IMPORT_SIZE] = { 0 };
  guint8 reply[PB_USBIP_OP_HEADER_SIZE];
  int fd = pb_test_raw_connect (port ());
  gssize n;

  pb_write_be16 (request, 0x0106);
  pb_write_be16 (request + 2, code);
  strcpy ((char *) request + PB_USBIP_OP_HEADER_SIZE, devices[DEV_KEYBOARD].busid);
  pb_test_raw_send (fd, request, code == PB_USBIP_OP_REQ_IMPORT ? sizeof request : PB_USBIP_OP_HEADER_SIZE,
                    REPLY_TIMEOUT_MS);
  n = pb_test_raw_recv (fd, reply, sizeof reply, REPLY_TIMEOUT_MS);
  g_assert_cmpint (n, >=, 0); /* -1: the server neither answered nor closed */
  if (n == sizeof reply)
    {
      if (!quiet)
        g_test_message ("version 0x0106 request 0x%04x: reply version 0x%04x code 0x%04x status %u", code,
                        pb_read_be16 (reply), pb_read_be16 (reply + 2), pb_read_be32 (reply + 4));
      g_assert_cmpuint (pb_read_be32 (reply + 4), !=, 0);
    }
  else
    g_assert_cmpint (n, ==, 0);
  g_assert_true (pb_test_raw_wait_closed (fd, CLOSE_TIMEOUT_MS, NULL));
  close (fd);
}

static void
test_old_version (void)
{
  check_old_version (PB_USBIP_OP_REQ_DEVLIST);
  check_old_version (PB_USBIP_OP_REQ_IMPORT);
  /* The keyboard was not taken by the refused import. */
  well_behaved_all ();
}

static void
test_unknown_op (void)
{
  static const guint16 codes[] = { 0x8001, 0x0000, 0xffff, PB_USBIP_OP_REP_DEVLIST, PB_USBIP_OP_REP_IMPORT };

  for (guint i = 0; i < G_N_ELEMENTS (codes); i++)
    {
      guint8 request[PB_USBIP_REQ_IMPORT_SIZE] = { 0 };
      int fd = pb_test_raw_connect (port ());
      guint8 reply[PB_USBIP_OP_HEADER_SIZE];
      gssize n;

      pb_usbip_op_header_encode (request, codes[i], 0);
      pb_test_raw_send (fd, request, sizeof request, REPLY_TIMEOUT_MS);
      n = pb_test_raw_recv (fd, reply, sizeof reply, REPLY_TIMEOUT_MS);
      g_assert_cmpint (n, >=, 0);
      if (n == sizeof reply)
        g_assert_cmpuint (pb_read_be32 (reply + 4), !=, 0);
      else
        g_assert_cmpint (n, ==, 0);
      g_assert_true (pb_test_raw_wait_closed (fd, CLOSE_TIMEOUT_MS, NULL));
      close (fd);
    }
  well_behaved_all ();
}

static void
test_truncated (void)
{
  guint8 request[PB_USBIP_REQ_IMPORT_SIZE];
  g_autoptr(GError) error = NULL;
  guint rejects = pb_test_server_count_lines (server, "reject ");
  int slow;

  g_assert_true (pb_usbip_req_import_encode (request, devices[DEV_MSC].busid, &error));
  /* Hang up after every prefix of an import request. */
  for (gsize len = 0; len < sizeof request; len++)
    {
      int fd = pb_test_raw_connect (port ());
      if (len > 0)
        g_assert_true (pb_test_raw_send (fd, request, len, REPLY_TIMEOUT_MS));
      close (fd);
    }
  /* Each one with bytes in it is logged as rejected (the empty one is a port scan). */
  g_assert_true (pb_test_server_wait_lines (server, "reject ", rejects + sizeof request - 1, LOG_TIMEOUT_MS));

  /* A client that stalls half-way through its header does not hold anybody else up. */
  slow = pb_test_raw_connect (port ());
  g_assert_true (pb_test_raw_send (slow, request, 4, REPLY_TIMEOUT_MS));
  well_behaved_all ();
  close (slow);
  assert_server_running ();
}

static void
test_import_errors (void)
{
  guint8 request[PB_USBIP_REQ_IMPORT_SIZE];
  guint8 reply[PB_USBIP_OP_HEADER_SIZE + PB_USBIP_DEVICE_RECORD_SIZE];
  g_autoptr(GError) error = NULL;
  gint status = -1;
  int fd;

  /* No such device: NODEV, the header alone, then a close. */
  fd = pb_test_raw_connect (port ());
  g_assert_true (pb_usbip_req_import_encode (request, "9-9", &error));
  g_assert_true (pb_test_raw_send (fd, request, sizeof request, REPLY_TIMEOUT_MS));
  g_assert_cmpint (pb_test_raw_recv (fd, reply, sizeof reply, REPLY_TIMEOUT_MS), ==, PB_USBIP_OP_HEADER_SIZE);
  g_assert_cmphex (pb_read_be16 (reply), ==, PB_USBIP_VERSION);
  g_assert_cmphex (pb_read_be16 (reply + 2), ==, PB_USBIP_OP_REP_IMPORT);
  g_assert_cmpuint (pb_read_be32 (reply + 4), ==, PB_USBIP_ST_NODEV);
  close (fd);

  g_assert_cmpint (pb_test_raw_import (port (), "100-99", &status), ==, -1);
  g_assert_cmpint (status, ==, PB_USBIP_ST_NODEV);
  /* A prefix of a real bus ID is another bus ID. */
  g_assert_cmpint (pb_test_raw_import (port (), "100-", &status), ==, -1);
  g_assert_cmpint (status, ==, PB_USBIP_ST_NODEV);

  /* 32 bytes with no NUL, and 32 NULs. */
  for (guint round = 0; round < 2; round++)
    {
      pb_usbip_op_header_encode (request, PB_USBIP_OP_REQ_IMPORT, 0);
      memset (request + PB_USBIP_OP_HEADER_SIZE, round == 0 ? 'A' : 0, PB_USBIP_BUSID_SIZE);
      fd = pb_test_raw_connect (port ());
      g_assert_true (pb_test_raw_send (fd, request, sizeof request, REPLY_TIMEOUT_MS));
      g_assert_cmpint (pb_test_raw_recv (fd, reply, sizeof reply, REPLY_TIMEOUT_MS), ==, PB_USBIP_OP_HEADER_SIZE);
      g_assert_cmpuint (pb_read_be32 (reply + 4), !=, PB_USBIP_ST_OK);
      close (fd);
    }

  /* Garbage after the NUL does not matter: the import succeeds. */
  {
    guint closes = count_closes (DEV_KEYBOARD);
    PbUsbipDeviceRecord record;

    g_assert_true (pb_usbip_req_import_encode (request, devices[DEV_KEYBOARD].busid, &error));
    memset (request + PB_USBIP_OP_HEADER_SIZE + strlen (devices[DEV_KEYBOARD].busid) + 1, 0x5a,
            PB_USBIP_BUSID_SIZE - strlen (devices[DEV_KEYBOARD].busid) - 1);
    fd = pb_test_raw_connect (port ());
    g_assert_true (pb_test_raw_send (fd, request, sizeof request, REPLY_TIMEOUT_MS));
    g_assert_cmpint (pb_test_raw_recv (fd, reply, sizeof reply, REPLY_TIMEOUT_MS), ==, sizeof reply);
    g_assert_cmpuint (pb_read_be32 (reply + 4), ==, PB_USBIP_ST_OK);
    g_assert_true (pb_usbip_device_record_decode (reply + PB_USBIP_OP_HEADER_SIZE, PB_USBIP_DEVICE_RECORD_SIZE,
                                                  &record, &error));
    g_assert_cmpstr (record.busid, ==, devices[DEV_KEYBOARD].busid);
    close (fd);
    wait_closes (DEV_KEYBOARD, closes + 1);
  }
  well_behaved_all ();
}

/* ---- URB phase ---- */

static void
check_huge_length (guint device, PbUsbipDirection direction, guint ep, guint32 length)
{
  Session s = session_open (device);
  guint8 message[PB_USBIP_URB_HEADER_SIZE];
  guint8 setup[8] = { 0x80, PB_USB_REQ_GET_DESCRIPTOR, 0, PB_USB_DT_DEVICE, 0, 0, 0xff, 0xff };

  if (ep != 0)
    session_set_configuration (&s, 1);
  encode_submit (message, 2, devices[device].devid, direction, ep, length, 0, ep == 0 ? setup : NULL);
  pb_test_raw_send (s.fd, message, sizeof message, REPLY_TIMEOUT_MS);
  /* For OUT, start the announced payload as a real client would. */
  if (direction == PB_USBIP_DIR_OUT)
    {
      guint8 payload[4096] = { 0 };
      pb_test_raw_send (s.fd, payload, sizeof payload, REPLY_TIMEOUT_MS);
    }
  session_expect_server_close (&s);
}

static void
test_huge_length (void)
{
  static const guint32 lengths[] = { 0xffffffffu, PB_USBIP_MAX_TRANSFER_LENGTH + 1 };

  for (guint i = 0; i < G_N_ELEMENTS (lengths); i++)
    {
      check_huge_length (DEV_SERIAL, PB_USBIP_DIR_OUT, devices[DEV_SERIAL].ep_out & 0x0f, lengths[i]);
      well_behaved (DEV_SERIAL);
      check_huge_length (DEV_SERIAL, PB_USBIP_DIR_IN, devices[DEV_SERIAL].ep_in & 0x0f, lengths[i]);
      well_behaved (DEV_SERIAL);
      check_huge_length (DEV_MSC, PB_USBIP_DIR_OUT, devices[DEV_MSC].ep_out & 0x0f, lengths[i]);
      well_behaved (DEV_MSC);
      check_huge_length (DEV_KEYBOARD, PB_USBIP_DIR_IN, 0, lengths[i]);
      well_behaved (DEV_KEYBOARD);
    }
}

/* A bulk OUT announcing 1 MiB, then the client vanishes after 1000 bytes. */
static void
partial_out (guint device)
{
  Session s = session_open (device);
  guint8 message[PB_USBIP_URB_HEADER_SIZE];
  guint8 payload[1000];

  memset (payload, 0x42, sizeof payload);
  session_set_configuration (&s, 1);
  encode_submit (message, 2, devices[device].devid, PB_USBIP_DIR_OUT, devices[device].ep_out & 0x0f,
                 1024 * 1024, 0, NULL);
  g_assert_true (pb_test_raw_send (s.fd, message, sizeof message, REPLY_TIMEOUT_MS));
  g_assert_true (pb_test_raw_send (s.fd, payload, sizeof payload, REPLY_TIMEOUT_MS));
  session_hang_up (&s);
}

static void
test_partial_out (void)
{
  partial_out (DEV_MSC);
  well_behaved (DEV_MSC);
  partial_out (DEV_SERIAL);
  well_behaved (DEV_SERIAL);
}

static void
check_bad_command (guint32 command)
{
  Session s = session_open (DEV_KEYBOARD);
  guint8 message[PB_USBIP_URB_HEADER_SIZE] = { 0 };

  pb_write_be32 (message, command);
  pb_write_be32 (message + 4, 7);
  pb_write_be32 (message + 8, devices[DEV_KEYBOARD].devid);
  pb_test_raw_send (s.fd, message, sizeof message, REPLY_TIMEOUT_MS);
  session_expect_server_close (&s);
}

static void
test_unknown_command (void)
{
  check_bad_command (9);
  well_behaved (DEV_KEYBOARD);
  /* Replies are the server's to send. */
  check_bad_command (PB_USBIP_RET_SUBMIT);
  check_bad_command (PB_USBIP_RET_UNLINK);
  check_bad_command (0);
  check_bad_command (0xffffffffu);
  well_behaved (DEV_KEYBOARD);
}

static void
test_unlink_unknown (void)
{
  static const guint32 targets[] = { 0, 1, 2, 777, 0x7fffffffu, 0xffffffffu };
  Session s = session_open (DEV_KEYBOARD);
  guint8 dd[18];

  for (guint i = 0; i < G_N_ELEMENTS (targets); i++)
    {
      guint8 message[PB_USBIP_URB_HEADER_SIZE];
      PbUsbipUrbHeader reply;
      guint32 seqnum = 100 + i;

      encode_unlink (message, seqnum, devices[DEV_KEYBOARD].devid, targets[i]);
      g_assert_true (pb_test_raw_send (s.fd, message, sizeof message, REPLY_TIMEOUT_MS));
      read_reply (s.fd, 0, &reply, NULL, 0);
      g_assert_cmpuint (reply.command, ==, PB_USBIP_RET_UNLINK);
      g_assert_cmpuint (reply.seqnum, ==, seqnum);
      g_assert_cmpint (reply.u.ret_unlink.status, ==, 0);
    }
  /* The connection still works. */
  g_assert_cmpuint (raw_control (s.fd, 200, devices[DEV_KEYBOARD].devid, PB_USB_DIR_IN, PB_USB_REQ_GET_DESCRIPTOR,
                                 PB_USB_DT_DEVICE << 8, 0, dd, sizeof dd), ==, 18);
  session_hang_up (&s);
  well_behaved (DEV_KEYBOARD);
}

#define BURST 1000

static void
unlink_burst (guint device, guint n)
{
  Session s = session_open (device);
  g_autofree guint8 *messages = g_malloc ((gsize) n * PB_USBIP_URB_HEADER_SIZE);
  g_autofree gboolean *answered = g_new0 (gboolean, n);
  guint8 dd[18];

  for (guint i = 0; i < n; i++)
    encode_unlink (messages + (gsize) i * PB_USBIP_URB_HEADER_SIZE, 10000 + i, devices[device].devid,
                   50000 + i);
  g_assert_true (pb_test_raw_send (s.fd, messages, (gsize) n * PB_USBIP_URB_HEADER_SIZE, REPLY_TIMEOUT_MS));
  for (guint i = 0; i < n; i++)
    {
      PbUsbipUrbHeader reply;
      read_reply (s.fd, 0, &reply, NULL, 0);
      g_assert_cmpuint (reply.command, ==, PB_USBIP_RET_UNLINK);
      g_assert_cmpuint (reply.seqnum, >=, 10000);
      g_assert_cmpuint (reply.seqnum, <, 10000 + n);
      g_assert_false (answered[reply.seqnum - 10000]);
      answered[reply.seqnum - 10000] = TRUE;
      g_assert_cmpint (reply.u.ret_unlink.status, ==, 0);
    }
  g_assert_cmpuint (raw_control (s.fd, 1, devices[device].devid, PB_USB_DIR_IN, PB_USB_REQ_GET_DESCRIPTOR,
                                 PB_USB_DT_DEVICE << 8, 0, dd, sizeof dd), ==, 18);
  session_hang_up (&s);
}

static void
test_unlink_burst (void)
{
  unlink_burst (DEV_SERIAL, BURST);
  well_behaved (DEV_SERIAL);
}

/* An interrupt IN the keyboard holds (nothing typed), unlinked: either RET_UNLINK -ECONNRESET
 * and never a RET_SUBMIT for it, or (it completed first) RET_SUBMIT then RET_UNLINK 0. */
static void
test_unlink_pending (void)
{
  Session s = session_open (DEV_KEYBOARD);
  guint8 message[PB_USBIP_URB_HEADER_SIZE];
  guint8 report[8];
  PbUsbipUrbHeader reply;
  gboolean submit_seen = FALSE;

  session_set_configuration (&s, 1);
  encode_submit (message, 5, devices[DEV_KEYBOARD].devid, PB_USBIP_DIR_IN, devices[DEV_KEYBOARD].ep_in & 0x0f,
                 8, 0, NULL);
  g_assert_true (pb_test_raw_send (s.fd, message, sizeof message, REPLY_TIMEOUT_MS));
  encode_unlink (message, 6, devices[DEV_KEYBOARD].devid, 5);
  g_assert_true (pb_test_raw_send (s.fd, message, sizeof message, REPLY_TIMEOUT_MS));
  /* A sentinel: the unlink of an unknown seqnum is answered after everything before it. */
  encode_unlink (message, 7, devices[DEV_KEYBOARD].devid, 12345);
  g_assert_true (pb_test_raw_send (s.fd, message, sizeof message, REPLY_TIMEOUT_MS));

  for (;;)
    {
      read_reply (s.fd, 5, &reply, report, sizeof report);
      if (reply.command == PB_USBIP_RET_SUBMIT)
        {
          g_assert_cmpuint (reply.seqnum, ==, 5);
          submit_seen = TRUE;
        }
      else if (reply.seqnum == 6)
        {
          g_assert_cmpint (reply.u.ret_unlink.status, ==, submit_seen ? 0 : PB_URB_ECONNRESET);
        }
      else
        {
          g_assert_cmpuint (reply.seqnum, ==, 7);
          g_assert_cmpint (reply.u.ret_unlink.status, ==, 0);
          break;
        }
    }
  g_test_message ("pending interrupt IN unlinked %s", submit_seen ? "after it completed" : "while pending");
  /* Pending URBs at hang-up are cancelled and the device freed. */
  encode_submit (message, 8, devices[DEV_KEYBOARD].devid, PB_USBIP_DIR_IN, devices[DEV_KEYBOARD].ep_in & 0x0f,
                 8, 0, NULL);
  g_assert_true (pb_test_raw_send (s.fd, message, sizeof message, REPLY_TIMEOUT_MS));
  session_hang_up (&s);
  well_behaved (DEV_KEYBOARD);
}

static void
test_iso_counts (void)
{
  Session s = session_open (DEV_SERIAL);
  guint8 message[PB_USBIP_URB_HEADER_SIZE];
  guint8 data[4] = { 'p', 'i', 'n', 'g' };
  guint8 echo[64] = { 0 };
  PbUsbipUrbHeader reply;
  guint8 iso[3 * PB_USBIP_ISO_PACKET_SIZE];
  PbUsbipIsoPacket packets[3];

  session_set_configuration (&s, 1);
  /* Packet counts mean nothing on a bulk endpoint: ignored, a normal transfer. */
  encode_submit (message, 2, devices[DEV_SERIAL].devid, PB_USBIP_DIR_OUT, devices[DEV_SERIAL].ep_out & 0x0f,
                 sizeof data, 0x7fffffff, NULL);
  g_assert_true (pb_test_raw_send (s.fd, message, sizeof message, REPLY_TIMEOUT_MS));
  g_assert_true (pb_test_raw_send (s.fd, data, sizeof data, REPLY_TIMEOUT_MS));
  read_reply (s.fd, 0, &reply, NULL, 0);
  g_assert_cmpuint (reply.command, ==, PB_USBIP_RET_SUBMIT);
  g_assert_cmpuint (reply.seqnum, ==, 2);
  g_assert_cmpint (reply.u.ret_submit.status, ==, 0);
  g_assert_cmpuint (reply.u.ret_submit.actual_length, ==, sizeof data);

  encode_submit (message, 3, devices[DEV_SERIAL].devid, PB_USBIP_DIR_IN, devices[DEV_SERIAL].ep_in & 0x0f,
                 sizeof echo, -5, NULL);
  g_assert_true (pb_test_raw_send (s.fd, message, sizeof message, REPLY_TIMEOUT_MS));
  read_reply (s.fd, 3, &reply, echo, sizeof echo);
  g_assert_cmpuint (reply.command, ==, PB_USBIP_RET_SUBMIT);
  g_assert_cmpuint (reply.seqnum, ==, 3);
  g_assert_cmpint (reply.u.ret_submit.status, ==, 0);
  g_assert_cmpmem (echo, reply.u.ret_submit.actual_length, data, sizeof data);

  /* An endpoint the device lacks, framed as iso, with descriptors pointing past the buffer. */
  for (guint i = 0; i < 3; i++)
    packets[i] = (PbUsbipIsoPacket) { .offset = 1000 + i * 10, .length = 10 };
  pb_usbip_iso_packets_encode (packets, 3, iso);
  encode_submit (message, 4, devices[DEV_SERIAL].devid, PB_USBIP_DIR_IN, 9, 100, 3, NULL);
  g_assert_true (pb_test_raw_send (s.fd, message, sizeof message, REPLY_TIMEOUT_MS));
  pb_test_raw_send (s.fd, iso, sizeof iso, REPLY_TIMEOUT_MS);
  session_expect_server_close (&s);
  well_behaved (DEV_SERIAL);

  /* The same on OUT, where the descriptors follow the payload. */
  s = session_open (DEV_SERIAL);
  encode_submit (message, 4, devices[DEV_SERIAL].devid, PB_USBIP_DIR_OUT, 9, 100, 3, NULL);
  g_assert_true (pb_test_raw_send (s.fd, message, sizeof message, REPLY_TIMEOUT_MS));
  {
    guint8 payload[100] = { 0 };
    pb_test_raw_send (s.fd, payload, sizeof payload, REPLY_TIMEOUT_MS);
  }
  pb_test_raw_send (s.fd, iso, sizeof iso, REPLY_TIMEOUT_MS);
  session_expect_server_close (&s);
  well_behaved (DEV_SERIAL);
}

/* Hang up after offset bytes of a CMD_SUBMIT header (and of its OUT payload). */
static void
abrupt_close (guint device, gsize offset)
{
  Session s = session_open (device);
  guint8 message[PB_USBIP_URB_HEADER_SIZE + 8];
  guint8 setup[8] = { 0x00, PB_USB_REQ_SET_CONFIGURATION, 1, 0, 0, 0, 0, 0 };

  if (offset < PB_USBIP_URB_HEADER_SIZE)
    encode_submit (message, 1, devices[device].devid, PB_USBIP_DIR_IN, 0, 18, 0,
                   (const guint8[8]) { 0x80, PB_USB_REQ_GET_DESCRIPTOR, 0, PB_USB_DT_DEVICE, 0, 0, 18, 0 });
  else
    {
      /* A control OUT with 8 bytes of payload, cut inside the payload. */
      setup[0] = 0x40; /* vendor */
      setup[6] = 8;
      encode_submit (message, 1, devices[device].devid, PB_USBIP_DIR_OUT, 0, 8, 0, setup);
      memset (message + PB_USBIP_URB_HEADER_SIZE, 0x11, 8);
    }
  if (offset > 0)
    g_assert_true (pb_test_raw_send (s.fd, message, offset, REPLY_TIMEOUT_MS));
  session_hang_up (&s);
}

static void
test_abrupt_close (void)
{
  for (gsize offset = 0; offset < PB_USBIP_URB_HEADER_SIZE; offset++)
    abrupt_close (DEV_KEYBOARD, offset);
  well_behaved (DEV_KEYBOARD);
  for (gsize offset = PB_USBIP_URB_HEADER_SIZE + 1; offset < PB_USBIP_URB_HEADER_SIZE + 8; offset++)
    abrupt_close (DEV_SERIAL, offset);
  well_behaved (DEV_SERIAL);
}

/* ---- connection floods and clients that never read ---- */

#define BURST_CONNECTIONS 64

/* 64 clients connect while the server is busy (stopped for a moment), then each asks for the
 * device list. All must be answered at once when it resumes: a SYN dropped because the listen
 * queue overflowed costs that client a 1 s retransmission (then 3 s, 7 s...). */
static void
test_connection_burst (void)
{
  struct sockaddr_in address = { .sin_family = AF_INET, .sin_port = htons (port ()) };
  guint8 request[PB_USBIP_OP_HEADER_SIZE];
  int fds[BURST_CONNECTIONS];
  gint64 start, elapsed;

  address.sin_addr.s_addr = htonl (INADDR_LOOPBACK);
  pb_usbip_op_header_encode (request, PB_USBIP_OP_REQ_DEVLIST, 0);
  g_assert_cmpint (kill (pb_test_server_get_pid (server), SIGSTOP), ==, 0);
  start = g_get_monotonic_time ();
  for (guint i = 0; i < BURST_CONNECTIONS; i++)
    {
      fds[i] = socket (AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      if (fds[i] >= 0 && connect (fds[i], (struct sockaddr *) &address, sizeof address) != 0 && errno != EINPROGRESS)
        {
          close (fds[i]);
          fds[i] = -1;
        }
    }
  g_assert_cmpint (kill (pb_test_server_get_pid (server), SIGCONT), ==, 0);

  for (guint i = 0; i < BURST_CONNECTIONS; i++)
    {
      guint8 reply[PB_USBIP_OP_HEADER_SIZE + 4];

      g_assert_cmpint (fds[i], >=, 0);
      g_assert_true (pb_test_raw_send (fds[i], request, sizeof request, 10000));
      g_assert_cmpint (pb_test_raw_recv (fds[i], reply, sizeof reply, 10000), ==, sizeof reply);
      g_assert_cmphex (pb_read_be16 (reply + 2), ==, PB_USBIP_OP_REP_DEVLIST);
      g_assert_cmpuint (pb_read_be32 (reply + 4), ==, 0);
      g_assert_cmpuint (pb_read_be32 (reply + 8), ==, N_DEVICES);
    }
  elapsed = g_get_monotonic_time () - start;
  for (guint i = 0; i < BURST_CONNECTIONS; i++)
    close (fds[i]);
  g_test_message ("%d clients that connected during a pause all answered after %" G_GINT64_FORMAT " ms",
                  BURST_CONNECTIONS, elapsed / 1000);
  well_behaved_all ();
  /* A SYN dropped because the listen queue overflowed shows as a 1 s retransmission (the
   * server once kept GSocketListener's default backlog of 10). */
  g_assert_cmpint (elapsed, <, 900 * 1000);
}

/* A client that submits requests and never reads a reply: the server stops reading it at its
 * limits, keeps serving everybody else, and its memory stays bounded. */
static void
test_never_reads (void)
{
  Session s = session_open (DEV_KEYBOARD);
  g_autofree guint8 *chunk = g_malloc (1000 * PB_USBIP_URB_HEADER_SIZE);
  guint8 setup[8] = { 0x80, PB_USB_REQ_GET_DESCRIPTOR, 0, PB_USB_DT_DEVICE, 0, 0, 18, 0 };
  guint64 before = pb_test_server_get_rss_kib (server);
  guint64 stuck;
  guint32 seqnum = 1;
  gsize sent = 0;
  PbUsbipUrbHeader reply;
  guint8 dd[18];

  /* Up to 400,000 requests (26 MB of replies); the server stops taking them long before. */
  while (sent < 400000)
    {
      for (guint i = 0; i < 1000; i++)
        encode_submit (chunk + (gsize) i * PB_USBIP_URB_HEADER_SIZE, seqnum++, devices[DEV_KEYBOARD].devid,
                       PB_USBIP_DIR_IN, 0, 18, 0, setup);
      if (!pb_test_raw_send (s.fd, chunk, 1000 * PB_USBIP_URB_HEADER_SIZE, 2000))
        break;
      sent += 1000;
    }
  stuck = pb_test_server_get_rss_kib (server);
  g_test_message ("server stopped reading after about %" G_GSIZE_FORMAT " requests; VmRSS %" G_GUINT64_FORMAT
                  " KiB -> %" G_GUINT64_FORMAT " KiB", sent, before, stuck);
  g_assert_cmpuint (sent, <, 400000);

  well_behaved (DEV_SERIAL);
  well_behaved (DEV_MSC);

  /* The stuck client is still served in order once it reads. */
  read_reply (s.fd, 1, &reply, dd, sizeof dd);
  g_assert_cmpuint (reply.command, ==, PB_USBIP_RET_SUBMIT);
  g_assert_cmpuint (reply.seqnum, ==, 1);
  g_assert_cmpint (reply.u.ret_submit.status, ==, 0);
  g_assert_cmpuint (reply.u.ret_submit.actual_length, ==, 18);
  session_hang_up (&s);
  well_behaved (DEV_KEYBOARD);
  g_test_message ("VmRSS after the client left: %" G_GUINT64_FORMAT " KiB", pb_test_server_get_rss_kib (server));
#ifndef PB_TEST_ASAN
  /* At most 16 MiB of queued replies (PB_EXPORT_SESSION_MAX_QUEUED_OUTPUT), bookkeeping included
   * (counting wire bytes alone once let 66-byte replies grow the server by 110 MiB). */
  g_assert_cmpuint (stuck, <, before + 24 * 1024);
#endif
}

/* ---- memory ---- */

static void
hostile_round (guint i)
{
  guint device = (i / 13) % N_DEVICES;

  switch (i % 13)
    {
    case 0:
      {
        guint8 garbage[64];
        for (guint k = 0; k < sizeof garbage; k++)
          garbage[k] = (guint8) g_random_int ();
        send_and_expect_close (garbage, sizeof garbage);
        break;
      }
    case 1:
      check_old_version (i % 2 ? PB_USBIP_OP_REQ_IMPORT : PB_USBIP_OP_REQ_DEVLIST);
      break;
    case 2:
      {
        guint8 request[PB_USBIP_OP_HEADER_SIZE];
        pb_usbip_op_header_encode (request, 0x9000 + i, 0); /* never a known request */
        send_and_expect_close (request, sizeof request);
        break;
      }
    case 3:
      {
        guint8 request[PB_USBIP_REQ_IMPORT_SIZE] = { 0 };
        int fd = pb_test_raw_connect (port ());
        pb_usbip_op_header_encode (request, PB_USBIP_OP_REQ_IMPORT, 0);
        pb_test_raw_send (fd, request, 1 + i % (sizeof request - 1), REPLY_TIMEOUT_MS);
        close (fd);
        break;
      }
    case 4:
      {
        gint status = -1;
        g_assert_cmpint (pb_test_raw_import (port (), "7-7", &status), ==, -1);
        g_assert_cmpint (status, ==, PB_USBIP_ST_NODEV);
        break;
      }
    case 5:
      check_huge_length (device, PB_USBIP_DIR_IN, 0, i % 2 ? 0xffffffffu : PB_USBIP_MAX_TRANSFER_LENGTH + 1);
      break;
    case 6:
      partial_out (device == DEV_KEYBOARD ? DEV_MSC : device);
      break;
    case 7:
      check_bad_command (9);
      break;
    case 8:
      unlink_burst (device, 100);
      break;
    case 9:
      {
        Session s = session_open (device);
        guint8 message[PB_USBIP_URB_HEADER_SIZE + 3 * PB_USBIP_ISO_PACKET_SIZE];
        PbUsbipIsoPacket packets[3] = { { 1000, 10, 0, 0 }, { 0, 10, 0, 0 }, { 0xfffffff0u, 0x20, 0, 0 } };
        encode_submit (message, 1, devices[device].devid, PB_USBIP_DIR_IN, 9, 100, 3, NULL);
        pb_usbip_iso_packets_encode (packets, 3, message + PB_USBIP_URB_HEADER_SIZE);
        pb_test_raw_send (s.fd, message, sizeof message, REPLY_TIMEOUT_MS);
        session_expect_server_close (&s);
        break;
      }
    case 10:
      abrupt_close (device, i % PB_USBIP_URB_HEADER_SIZE);
      break;
    case 11:
      {
        /* Hang up with URBs pending at the device. */
        Session s = session_open (DEV_KEYBOARD);
        guint8 message[PB_USBIP_URB_HEADER_SIZE];
        session_set_configuration (&s, 1);
        for (guint k = 0; k < 4; k++)
          {
            encode_submit (message, 10 + k, devices[DEV_KEYBOARD].devid, PB_USBIP_DIR_IN,
                           devices[DEV_KEYBOARD].ep_in & 0x0f, 8, 0, NULL);
            g_assert_true (pb_test_raw_send (s.fd, message, sizeof message, REPLY_TIMEOUT_MS));
          }
        session_hang_up (&s);
        break;
      }
    case 12:
      {
        /* Busy: a second import while a raw session holds the device. */
        Session s = session_open (device);
        gint status = -1;
        g_assert_cmpint (pb_test_raw_import (port (), devices[device].busid, &status), ==, -1);
        g_assert_cmpint (status, ==, PB_USBIP_ST_DEV_BUSY);
        session_hang_up (&s);
        break;
      }
    default:
      g_assert_not_reached ();
    }
}

static void
test_memory (void)
{
  guint64 before, after;

  quiet = TRUE;
  /* Warm-up: every kind of round once on every device, so pools and caches are in place. */
  for (guint i = 0; i < 13 * N_DEVICES; i++)
    hostile_round (i);
  well_behaved_all ();
  before = pb_test_server_get_rss_kib (server);

  for (guint i = 0; i < 300; i++)
    {
      hostile_round (i);
      if (i % 50 == 49)
        well_behaved_all ();
    }
  well_behaved_all ();
  after = pb_test_server_get_rss_kib (server);
  quiet = FALSE;

  g_test_message ("server VmRSS: %" G_GUINT64_FORMAT " KiB after warm-up, %" G_GUINT64_FORMAT
                  " KiB after 300 hostile connections (%+" G_GINT64_FORMAT " KiB)",
                  before, after, (gint64) after - (gint64) before);
#ifdef PB_TEST_ASAN
  /* ASan's quarantine keeps freed memory resident by design: the figure says nothing here.
   * LeakSanitizer checks the server at exit instead (see /hostile/stop). */
  g_test_message ("built with AddressSanitizer: the 8 MiB bound is not checked");
#else
  g_assert_cmpuint (after, <, before + 8 * 1024);
#endif
  assert_server_running ();
}

static void
test_stop (void)
{
  assert_server_running ();
  g_test_message ("%u imports, %u closes, %u rejects",
                  pb_test_server_count_lines (server, "import "), pb_test_server_count_lines (server, "close "),
                  pb_test_server_count_lines (server, "reject "));
  /* Every session the test opened was closed. */
  g_assert_cmpuint (pb_test_server_count_lines (server, "import "), ==, pb_test_server_count_lines (server, "close "));
  g_assert_true (pb_test_server_stop (server));
}

int
main (int argc, char **argv)
{
  int status;

  g_test_init (&argc, &argv, NULL);
  signal (SIGPIPE, SIG_IGN);

  g_test_add_func ("/hostile/well-behaved", test_well_behaved);
  g_test_add_func ("/hostile/garbage", test_garbage);
  g_test_add_func ("/hostile/old-version", test_old_version);
  g_test_add_func ("/hostile/unknown-op", test_unknown_op);
  g_test_add_func ("/hostile/truncated", test_truncated);
  g_test_add_func ("/hostile/import-errors", test_import_errors);
  g_test_add_func ("/hostile/huge-length", test_huge_length);
  g_test_add_func ("/hostile/partial-out", test_partial_out);
  g_test_add_func ("/hostile/unknown-command", test_unknown_command);
  g_test_add_func ("/hostile/unlink-unknown", test_unlink_unknown);
  g_test_add_func ("/hostile/unlink-burst", test_unlink_burst);
  g_test_add_func ("/hostile/unlink-pending", test_unlink_pending);
  g_test_add_func ("/hostile/iso-counts", test_iso_counts);
  g_test_add_func ("/hostile/abrupt-close", test_abrupt_close);
  g_test_add_func ("/hostile/memory", test_memory);
  g_test_add_func ("/hostile/connection-burst", test_connection_burst);
  g_test_add_func ("/hostile/never-reads", test_never_reads);
  g_test_add_func ("/hostile/stop", test_stop);

  server = pb_test_server_start ("--virtual", "keyboard", "--virtual", "serial", "--virtual", "msc", NULL);
  discover ();
  status = g_test_run ();
  pb_test_server_free (server);
  return status;
}
