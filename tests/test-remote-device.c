/* PbRemoteDevice against a server written by hand in the test: the test reads the client's
 * requests from the other end of a socketpair and writes replies byte by byte, including
 * broken and hostile ones. Every URB must be called back exactly once. */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "pb-remote-device.h"

typedef struct {
  guint calls;
  PbRemoteUrbResult result;
} Callback;

typedef struct {
  PbRemoteDevice *device;
  int server_fd;
} Fixture;

static void
on_result (PbRemoteDevice *device, const PbRemoteUrbResult *result, gpointer user_data)
{
  Callback *cb = user_data;
  cb->calls++;
  cb->result = *result;
}

static void
fixture_setup (Fixture *f, gconstpointer data)
{
  PbUsbipDeviceRecord record = { .busnum = 100, .devnum = 1 };
  g_autoptr(GSocket) socket = NULL;
  g_autoptr(GError) error = NULL;
  int fds[2];

  g_strlcpy (record.busid, "100-1", sizeof record.busid);
  g_assert_cmpint (socketpair (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), ==, 0);
  socket = g_socket_new_from_fd (fds[0], &error);
  g_assert_no_error (error);
  f->device = pb_remote_device_new_for_socket (socket, &record);
  f->server_fd = fds[1];
}

static void
fixture_teardown (Fixture *f, gconstpointer data)
{
  g_object_unref (f->device);
  if (f->server_fd >= 0)
    close (f->server_fd);
}

static void
iterate (void)
{
  for (int i = 0; i < 20; i++)
    g_main_context_iteration (NULL, FALSE);
}

/* Reads one CMD_* header (and OUT payload) the client sent. */
static void
server_read_request (Fixture *f, PbUsbipUrbHeader *header)
{
  guint8 wire[PB_USBIP_URB_HEADER_SIZE];
  gsize got = 0;
  g_autoptr(GError) error = NULL;
  guint32 payload;

  iterate ();
  while (got < sizeof wire)
    {
      gssize n = recv (f->server_fd, wire + got, sizeof wire - got, 0);
      g_assert_cmpint (n, >, 0);
      got += (gsize) n;
    }
  g_assert_true (pb_usbip_urb_header_decode (wire, sizeof wire, header, &error));
  payload = pb_usbip_urb_payload_length (header);
  while (payload > 0)
    {
      guint8 sink[4096];
      gssize n = recv (f->server_fd, sink, MIN (payload, sizeof sink), 0);
      g_assert_cmpint (n, >, 0);
      payload -= (guint32) n;
    }
}

static void
server_send (Fixture *f, const void *data, gsize len)
{
  g_assert_cmpint (send (f->server_fd, data, len, MSG_NOSIGNAL), ==, (gssize) len);
  iterate ();
}

static void
server_ret_submit (Fixture *f, guint32 seqnum, gint32 status, guint32 actual, const guint8 *payload, gsize payload_len)
{
  PbUsbipUrbHeader header = { .command = PB_USBIP_RET_SUBMIT, .seqnum = seqnum };
  guint8 wire[PB_USBIP_URB_HEADER_SIZE + 256];

  header.u.ret_submit.status = status;
  header.u.ret_submit.actual_length = actual;
  pb_usbip_urb_header_encode (&header, wire);
  if (payload_len > 0)
    memcpy (wire + PB_USBIP_URB_HEADER_SIZE, payload, payload_len);
  server_send (f, wire, PB_USBIP_URB_HEADER_SIZE + payload_len);
}

static guint32
submit_in (Fixture *f, guint ep, guint8 *buffer, guint32 length, Callback *cb)
{
  PbRemoteUrbRequest request = { .ep = ep, .direction = PB_USBIP_DIR_IN, .buffer = buffer, .length = length };
  g_autoptr(GError) error = NULL;
  guint32 seqnum = pb_remote_device_submit (f->device, &request, on_result, cb, &error);

  g_assert_no_error (error);
  g_assert_cmpuint (seqnum, !=, 0);
  return seqnum;
}

static void
test_out_of_order_replies (Fixture *f, gconstpointer data)
{
  static const guint8 first[4] = { 1, 2, 3, 4 }, second[2] = { 9, 8 };
  guint8 a[16] = { 0 }, b[16] = { 0 };
  Callback ca = { 0 }, cb = { 0 };
  PbUsbipUrbHeader request;
  guint32 sa, sb;

  sa = submit_in (f, 1, a, sizeof a, &ca);
  sb = submit_in (f, 2, b, sizeof b, &cb);
  server_read_request (f, &request);
  g_assert_cmpuint (request.seqnum, ==, sa);
  g_assert_cmpuint (request.devid, ==, (100u << 16) | 1);
  g_assert_cmpuint (request.direction, ==, PB_USBIP_DIR_IN);
  g_assert_cmpuint (request.u.cmd_submit.transfer_flags & PB_USBIP_URB_DIR_IN, !=, 0);
  server_read_request (f, &request);
  g_assert_cmpuint (request.ep, ==, 2);

  server_ret_submit (f, sb, 0, sizeof second, second, sizeof second);
  g_assert_cmpuint (cb.calls, ==, 1);
  g_assert_cmpuint (ca.calls, ==, 0);
  g_assert_cmpmem (b, 2, second, 2);
  server_ret_submit (f, sa, 0, sizeof first, first, sizeof first);
  g_assert_cmpuint (ca.calls, ==, 1);
  g_assert_cmpuint (ca.result.actual_length, ==, 4);
  g_assert_cmpmem (a, 4, first, 4);
  g_assert_cmpuint (pb_remote_device_get_pending (f->device), ==, 0);
}

static void
test_unlink_pending (Fixture *f, gconstpointer data)
{
  guint8 buffer[8];
  Callback cb = { 0 };
  PbUsbipUrbHeader request, reply = { .command = PB_USBIP_RET_UNLINK };
  guint8 wire[PB_USBIP_URB_HEADER_SIZE];
  guint32 seqnum = submit_in (f, 1, buffer, sizeof buffer, &cb);

  server_read_request (f, &request);
  g_assert_true (pb_remote_device_unlink (f->device, seqnum, NULL));
  server_read_request (f, &request);
  g_assert_cmpuint (request.command, ==, PB_USBIP_CMD_UNLINK);
  g_assert_cmpuint (request.u.cmd_unlink.unlink_seqnum, ==, seqnum);
  reply.seqnum = request.seqnum;
  reply.u.ret_unlink.status = PB_URB_ECONNRESET;
  pb_usbip_urb_header_encode (&reply, wire);
  server_send (f, wire, sizeof wire);
  g_assert_cmpuint (cb.calls, ==, 1);
  g_assert_cmpint (cb.result.status, ==, PB_URB_ECONNRESET);
  g_assert_false (pb_remote_device_is_closed (f->device));
}

static void
test_unlink_after_completion (Fixture *f, gconstpointer data)
{
  static const guint8 payload[3] = { 7, 7, 7 };
  guint8 buffer[8];
  Callback cb = { 0 };
  PbUsbipUrbHeader request, reply = { .command = PB_USBIP_RET_UNLINK };
  guint8 wire[PB_USBIP_URB_HEADER_SIZE];
  guint32 seqnum = submit_in (f, 1, buffer, sizeof buffer, &cb);

  server_read_request (f, &request);
  g_assert_true (pb_remote_device_unlink (f->device, seqnum, NULL));
  server_read_request (f, &request);
  /* The server had completed it already: RET_SUBMIT first, then RET_UNLINK with status 0. */
  server_ret_submit (f, seqnum, 0, sizeof payload, payload, sizeof payload);
  reply.seqnum = request.seqnum;
  pb_usbip_urb_header_encode (&reply, wire);
  server_send (f, wire, sizeof wire);
  g_assert_cmpuint (cb.calls, ==, 1);
  g_assert_cmpint (cb.result.status, ==, 0);
  g_assert_cmpuint (cb.result.actual_length, ==, 3);
  g_assert_false (pb_remote_device_is_closed (f->device));
}

static void
test_iso_unpacking (Fixture *f, gconstpointer data)
{
  guint8 buffer[300];
  PbUsbipIsoPacket packets[3] = { { 0, 100, 0, 0 }, { 100, 100, 0, 0 }, { 200, 100, 0, 0 } };
  PbRemoteUrbRequest request = { .ep = 3, .direction = PB_USBIP_DIR_IN, .buffer = buffer, .length = sizeof buffer,
                                 .n_iso_packets = 3, .iso_packets = packets };
  PbUsbipIsoPacket answered[3] = { { 0, 100, 10, 0 }, { 100, 100, 0, 0 }, { 200, 100, 20, -18 } };
  PbUsbipUrbHeader header = { .command = PB_USBIP_RET_SUBMIT };
  guint8 wire[PB_USBIP_URB_HEADER_SIZE + 30 + 3 * PB_USBIP_ISO_PACKET_SIZE];
  Callback cb = { 0 };
  PbUsbipUrbHeader seen;

  memset (buffer, 0, sizeof buffer);
  header.seqnum = pb_remote_device_submit (f->device, &request, on_result, &cb, NULL);
  server_read_request (f, &seen);
  g_assert_cmpint (seen.u.cmd_submit.number_of_packets, ==, 3);
  {
    guint8 descriptors[3 * PB_USBIP_ISO_PACKET_SIZE];
    g_assert_cmpint (recv (f->server_fd, descriptors, sizeof descriptors, 0), ==, sizeof descriptors);
  }
  header.u.ret_submit.actual_length = 30;
  header.u.ret_submit.number_of_packets = 3;
  pb_usbip_urb_header_encode (&header, wire);
  memset (wire + PB_USBIP_URB_HEADER_SIZE, 0xa1, 10);     /* packet 0, packed */
  memset (wire + PB_USBIP_URB_HEADER_SIZE + 10, 0xc3, 20); /* packet 2, packed */
  pb_usbip_iso_packets_encode (answered, 3, wire + PB_USBIP_URB_HEADER_SIZE + 30);
  server_send (f, wire, sizeof wire);

  g_assert_cmpuint (cb.calls, ==, 1);
  g_assert_cmpuint (cb.result.actual_length, ==, 30);
  g_assert_cmpuint (buffer[0], ==, 0xa1);
  g_assert_cmpuint (buffer[9], ==, 0xa1);
  g_assert_cmpuint (buffer[200], ==, 0xc3);
  g_assert_cmpuint (buffer[219], ==, 0xc3);
  g_assert_cmpuint (packets[0].actual_length, ==, 10);
  g_assert_cmpuint (packets[2].actual_length, ==, 20);
  g_assert_cmpint (packets[2].status, ==, -18);
}

/* A reply claiming more data than asked for is hostile: the connection ends and every pending
 * URB, not only that one, is called back once with -ESHUTDOWN. */
static void
test_hostile_reply_fails_everything (Fixture *f, gconstpointer data)
{
  guint8 a[8], b[8], junk[64] = { 0 };
  Callback ca = { 0 }, cb = { 0 };
  PbUsbipUrbHeader request;
  guint32 sa;

  sa = submit_in (f, 1, a, sizeof a, &ca);
  submit_in (f, 2, b, sizeof b, &cb);
  server_read_request (f, &request);
  server_read_request (f, &request);
  g_test_expect_message ("plugboard", G_LOG_LEVEL_WARNING, "*claims 64 bytes for a 8-byte request*");
  server_ret_submit (f, sa, 0, sizeof junk, junk, 0);
  g_test_assert_expected_messages ();
  g_assert_true (pb_remote_device_is_closed (f->device));
  g_assert_cmpuint (ca.calls, ==, 1);
  g_assert_cmpuint (cb.calls, ==, 1);
  g_assert_cmpint (ca.result.status, ==, PB_URB_ESHUTDOWN);
  g_assert_cmpint (cb.result.status, ==, PB_URB_ESHUTDOWN);
  g_assert_cmpuint (pb_remote_device_submit (f->device, &(PbRemoteUrbRequest) { .ep = 1 }, on_result, &ca, NULL), ==, 0);
}

static void
test_unknown_seqnum_and_close (Fixture *f, gconstpointer data)
{
  guint8 a[8];
  Callback ca = { 0 };
  PbUsbipUrbHeader request;

  submit_in (f, 1, a, sizeof a, &ca);
  server_read_request (f, &request);
  g_test_expect_message ("plugboard", G_LOG_LEVEL_WARNING, "*unknown seqnum 999*");
  server_ret_submit (f, 999, 0, 0, NULL, 0);
  g_test_assert_expected_messages ();
  g_assert_cmpuint (ca.calls, ==, 1);
  g_assert_cmpint (ca.result.status, ==, PB_URB_ESHUTDOWN);
}

static void
test_peer_close (Fixture *f, gconstpointer data)
{
  guint8 a[8];
  Callback ca = { 0 };
  PbUsbipUrbHeader request;

  submit_in (f, 1, a, sizeof a, &ca);
  server_read_request (f, &request);
  close (f->server_fd);
  f->server_fd = -1;
  g_test_expect_message ("plugboard", G_LOG_LEVEL_WARNING, "*closed the connection*");
  iterate ();
  g_test_assert_expected_messages ();
  g_assert_cmpuint (ca.calls, ==, 1);
  g_assert_cmpint (ca.result.status, ==, PB_URB_ESHUTDOWN);
  /* Closing again calls nobody twice. */
  pb_remote_device_close (f->device);
  g_assert_cmpuint (ca.calls, ==, 1);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add ("/remote-device/out-of-order-replies", Fixture, NULL, fixture_setup, test_out_of_order_replies, fixture_teardown);
  g_test_add ("/remote-device/unlink-pending", Fixture, NULL, fixture_setup, test_unlink_pending, fixture_teardown);
  g_test_add ("/remote-device/unlink-after-completion", Fixture, NULL, fixture_setup, test_unlink_after_completion, fixture_teardown);
  g_test_add ("/remote-device/iso-unpacking", Fixture, NULL, fixture_setup, test_iso_unpacking, fixture_teardown);
  g_test_add ("/remote-device/hostile-reply", Fixture, NULL, fixture_setup, test_hostile_reply_fails_everything, fixture_teardown);
  g_test_add ("/remote-device/unknown-seqnum", Fixture, NULL, fixture_setup, test_unknown_seqnum_and_close, fixture_teardown);
  g_test_add ("/remote-device/peer-close", Fixture, NULL, fixture_setup, test_peer_close, fixture_teardown);
  return g_test_run ();
}
