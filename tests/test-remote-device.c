/* The client side (PbRemote, PbRemoteDevice) against servers written by hand in this test: the
 * server reads the client's requests with plain recv, parses them by hand and answers with bytes
 * built here, byte by byte, including broken and hostile answers. The codec is not used on the
 * server side, so a codec bug cannot cancel itself out.
 *
 * URB tests run the server on the other end of a socketpair, either inline on the main thread
 * (when the client never has to wait) or on a thread (when a blocking helper waits). Management
 * tests run a one-connection TCP server on 127.0.0.1 in a thread. Every URB must be called back
 * exactly once. */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <string.h>
#include <sys/socket.h>
#include <poll.h>
#include <unistd.h>

#include "pb-remote.h"
#include "pb-remote-device.h"
#include "pb-test-util.h"
#include "pb-urb.h"

#define WAIT_MS 5000
#define BUSNUM 100
#define DEVNUM 1
#define DEVID ((BUSNUM << 16) | DEVNUM)

/* ---- bytes by hand ---- */

static void
put_be32 (GByteArray *a, guint32 v)
{
  guint8 b[4] = { v >> 24, (v >> 16) & 0xff, (v >> 8) & 0xff, v & 0xff };
  g_byte_array_append (a, b, 4);
}

static void
put_be16 (GByteArray *a, guint16 v)
{
  guint8 b[2] = { v >> 8, v & 0xff };
  g_byte_array_append (a, b, 2);
}

static void
put_u8 (GByteArray *a, guint8 v)
{
  g_byte_array_append (a, &v, 1);
}

static void
put_fill (GByteArray *a, guint8 value, gsize n)
{
  gsize at = a->len;
  g_byte_array_set_size (a, a->len + n);
  memset (a->data + at, value, n);
}

/* A NUL-padded string field; extra (may be NULL) lands after the NUL, as some servers leave garbage. */
static void
put_field (GByteArray *a, const char *s, const char *extra, gsize size)
{
  gsize at = a->len;
  put_fill (a, 0, size);
  memcpy (a->data + at, s, strlen (s));
  if (extra != NULL)
    memcpy (a->data + at + strlen (s) + 1, extra, strlen (extra));
}

static guint32
get_be32 (const guint8 *p)
{
  return ((guint32) p[0] << 24) | ((guint32) p[1] << 16) | ((guint32) p[2] << 8) | p[3];
}

static void
put_ret_submit (GByteArray *a, guint32 seqnum, gint32 status, guint32 actual, gint32 n_packets)
{
  put_be32 (a, 3);          /* RET_SUBMIT */
  put_be32 (a, seqnum);
  put_be32 (a, 0);          /* devid, direction, ep: zero, as servers send them */
  put_be32 (a, 0);
  put_be32 (a, 0);
  put_be32 (a, (guint32) status);
  put_be32 (a, actual);
  put_be32 (a, 0);          /* start_frame */
  put_be32 (a, (guint32) n_packets);
  put_be32 (a, 0);          /* error_count */
  put_fill (a, 0, 8);
}

static void
put_ret_unlink (GByteArray *a, guint32 seqnum, gint32 status)
{
  put_be32 (a, 4);          /* RET_UNLINK */
  put_be32 (a, seqnum);
  put_fill (a, 0, 12);
  put_be32 (a, (guint32) status);
  put_fill (a, 0, 24);
}

static void
put_iso (GByteArray *a, guint32 offset, guint32 length, guint32 actual, gint32 status)
{
  put_be32 (a, offset);
  put_be32 (a, length);
  put_be32 (a, actual);
  put_be32 (a, (guint32) status);
}

/* ---- the server's side of the socket ---- */

typedef struct {
  guint32 command, seqnum, devid, direction, ep;
  guint32 transfer_flags, length, unlink_seqnum;
  gint32 n_packets;
  guint8 setup[8];
  GByteArray *payload; /* OUT data */
  GByteArray *iso;     /* iso descriptors as sent */
} Request;

static void
request_clear (Request *r)
{
  g_clear_pointer (&r->payload, g_byte_array_unref);
  g_clear_pointer (&r->iso, g_byte_array_unref);
}
G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC (Request, request_clear)

static void
recv_exact (int fd, void *buf, gsize len)
{
  g_assert_cmpint (pb_test_raw_recv (fd, buf, len, WAIT_MS), ==, (gssize) len);
}

static void
send_bytes (int fd, const GByteArray *a)
{
  g_assert_true (pb_test_raw_send (fd, a->data, a->len, WAIT_MS));
}

/* One CMD_SUBMIT (with its OUT data and iso descriptors) or CMD_UNLINK, parsed by hand. */
static void
server_recv_request (int fd, Request *r)
{
  guint8 w[48];

  recv_exact (fd, w, sizeof w);
  r->command = get_be32 (w);
  r->seqnum = get_be32 (w + 4);
  r->devid = get_be32 (w + 8);
  r->direction = get_be32 (w + 12);
  r->ep = get_be32 (w + 16);
  r->transfer_flags = get_be32 (w + 20);
  r->unlink_seqnum = get_be32 (w + 20);
  r->length = get_be32 (w + 24);
  r->n_packets = (gint32) get_be32 (w + 32);
  memcpy (r->setup, w + 40, 8);
  r->payload = g_byte_array_new ();
  r->iso = g_byte_array_new ();
  g_assert_true (r->command == 1 || r->command == 2);
  if (r->command == 1 && r->direction == 0 && r->length > 0)
    {
      g_byte_array_set_size (r->payload, r->length);
      recv_exact (fd, r->payload->data, r->length);
    }
  if (r->command == 1 && r->n_packets > 0)
    {
      g_byte_array_set_size (r->iso, (guint) r->n_packets * 16);
      recv_exact (fd, r->iso->data, r->iso->len);
    }
}

typedef void (*Script) (int fd, gpointer data);

typedef struct {
  Script script;
  int fd;
  gpointer data;
} ScriptRun;

static gpointer
run_script (gpointer user_data)
{
  ScriptRun *run = user_data;
  run->script (run->fd, run->data);
  g_free (run);
  return NULL;
}

static GThread *
start_script (int fd, Script script, gpointer data)
{
  ScriptRun *run = g_new0 (ScriptRun, 1);
  run->script = script;
  run->fd = fd;
  run->data = data;
  return g_thread_new ("fake-server", run_script, run);
}

/* ---- the client's side ---- */

typedef struct {
  guint calls;
  PbRemoteUrbResult result;
} Callback;

static void
on_result (PbRemoteDevice *device, const PbRemoteUrbResult *result, gpointer user_data)
{
  Callback *cb = user_data;
  cb->calls++;
  cb->result = *result;
}

typedef struct {
  PbRemoteDevice *device;
  int server_fd;
  GThread *thread;
} Fixture;

static void
fixture_setup (Fixture *f, gconstpointer data)
{
  PbUsbipDeviceRecord record = { .busnum = BUSNUM, .devnum = DEVNUM, .speed = PB_USBIP_SPEED_HIGH };
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
  g_clear_object (&f->device);
  if (f->thread != NULL)
    g_thread_join (f->thread);
  if (f->server_fd >= 0)
    close (f->server_fd);
}

/* Dispatches until nothing is ready: replies written to a socketpair are readable at once. */
static void
iterate (void)
{
  for (int i = 0; i < 1000 && g_main_context_iteration (NULL, FALSE); i++)
    ;
}

static void
server_send (Fixture *f, const GByteArray *a)
{
  send_bytes (f->server_fd, a);
  iterate ();
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
assert_shut_down (Fixture *f, Callback *callbacks, guint n, const char *reason)
{
  const GError *close_error = pb_remote_device_get_close_error (f->device);

  g_assert_true (pb_remote_device_is_closed (f->device));
  g_assert_cmpuint (pb_remote_device_get_pending (f->device), ==, 0);
  for (guint i = 0; i < n; i++)
    {
      g_assert_cmpuint (callbacks[i].calls, ==, 1);
      g_assert_cmpint (callbacks[i].result.status, ==, PB_URB_ESHUTDOWN);
    }
  g_assert_nonnull (close_error);
  g_assert_true (close_error->domain == PB_ERROR);
  if (reason != NULL && strstr (close_error->message, reason) == NULL)
    g_error ("close reason \"%s\" does not mention \"%s\"", close_error->message, reason);
}

static const guint8 device_descriptor[18] = {
  0x12, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00, 0x40, 0x6b, 0x1d, 0x04, 0x01, 0x00, 0x01, 0x01, 0x02, 0x00, 0x01,
};

/* ---- URB phase: results ---- */

static void
script_control_in (int fd, gpointer data)
{
  static const guint8 setup[8] = { 0x80, 0x06, 0x00, 0x01, 0x00, 0x00, 0x12, 0x00 };
  g_auto(Request) r = { 0 };
  g_autoptr(GByteArray) reply = g_byte_array_new ();

  server_recv_request (fd, &r);
  g_assert_cmpuint (r.command, ==, 1);
  g_assert_cmpuint (r.seqnum, ==, 1); /* seqnums start at 1 */
  g_assert_cmpuint (r.devid, ==, DEVID);
  g_assert_cmpuint (r.direction, ==, 1);
  g_assert_cmpuint (r.ep, ==, 0);
  g_assert_cmpuint (r.transfer_flags & PB_USBIP_URB_DIR_IN, ==, PB_USBIP_URB_DIR_IN);
  g_assert_cmpuint (r.length, ==, 18);
  g_assert_cmpint (r.n_packets, ==, 0);
  g_assert_cmpmem (r.setup, 8, setup, 8);
  put_ret_submit (reply, r.seqnum, 0, sizeof device_descriptor, 0);
  g_byte_array_append (reply, device_descriptor, sizeof device_descriptor);
  send_bytes (fd, reply);
}

static void
test_control_in (Fixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  guint8 buffer[18] = { 0 };
  guint32 actual = 0;
  gint32 status = 1;

  f->thread = start_script (f->server_fd, script_control_in, NULL);
  g_assert_true (pb_remote_device_control (f->device, 0x80, 0x06, 0x0100, 0, buffer, sizeof buffer, &actual, WAIT_MS,
                                           &status, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (actual, ==, 18);
  g_assert_cmpint (status, ==, 0);
  g_assert_cmpmem (buffer, sizeof buffer, device_descriptor, sizeof device_descriptor);
  g_assert_cmpuint (pb_remote_device_get_pending (f->device), ==, 0);
}

static void
script_stall_then_ok (int fd, gpointer data)
{
  g_auto(Request) first = { 0 };
  g_auto(Request) second = { 0 };
  g_autoptr(GByteArray) reply = g_byte_array_new ();

  server_recv_request (fd, &first);
  put_ret_submit (reply, first.seqnum, PB_URB_EPIPE, 0, 0);
  send_bytes (fd, reply);

  server_recv_request (fd, &second);
  g_assert_cmpuint (second.seqnum, >, first.seqnum);
  g_assert_cmpuint (second.direction, ==, 0);
  g_assert_cmpuint (second.transfer_flags & PB_USBIP_URB_DIR_IN, ==, 0);
  g_assert_cmpuint (second.setup[1], ==, 0x09); /* SET_CONFIGURATION */
  g_assert_cmpuint (second.setup[2], ==, 1);
  g_byte_array_set_size (reply, 0);
  put_ret_submit (reply, second.seqnum, 0, 0, 0);
  send_bytes (fd, reply);
}

static void
test_control_stall (Fixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  guint8 buffer[2];
  gint32 status = 0;

  f->thread = start_script (f->server_fd, script_stall_then_ok, NULL);
  g_assert_false (pb_remote_device_control (f->device, 0x80, 0x00, 0, 0, buffer, sizeof buffer, NULL, WAIT_MS,
                                            &status, &error));
  g_assert_error (error, PB_ERROR, PB_ERROR_DEVICE);
  g_assert_nonnull (strstr (error->message, "stall (-EPIPE)"));
  g_assert_cmpint (status, ==, PB_URB_EPIPE);
  g_clear_error (&error);
  /* A stall is the device's answer, not the connection's end. */
  g_assert_false (pb_remote_device_is_closed (f->device));
  g_assert_true (pb_remote_device_control (f->device, 0x00, 0x09, 1, 0, NULL, 0, NULL, WAIT_MS, &status, &error));
  g_assert_no_error (error);
  g_assert_cmpint (status, ==, 0);
}

#define BIG_OUT (300 * 1024)

static void
script_bulk_out (int fd, gpointer data)
{
  g_auto(Request) small = { 0 };
  g_auto(Request) big = { 0 };
  g_autoptr(GByteArray) reply = g_byte_array_new ();

  server_recv_request (fd, &small);
  g_assert_cmpuint (small.command, ==, 1);
  g_assert_cmpuint (small.direction, ==, 0);
  g_assert_cmpuint (small.ep, ==, 2);
  g_assert_cmpuint (small.length, ==, 1000);
  for (guint i = 0; i < 1000; i++)
    g_assert_cmpuint (small.payload->data[i], ==, (guint8) (i * 7));
  /* OUT: actual_length is what was written, and no payload follows. */
  put_ret_submit (reply, small.seqnum, 0, 1000, 0);
  send_bytes (fd, reply);

  /* Bigger than the socket buffer: the client has to wait for G_IO_OUT. */
  server_recv_request (fd, &big);
  g_assert_cmpuint (big.length, ==, BIG_OUT);
  for (guint i = 0; i < BIG_OUT; i++)
    if (big.payload->data[i] != (guint8) (i % 251))
      g_error ("OUT byte %u is %u", i, big.payload->data[i]);
  g_byte_array_set_size (reply, 0);
  put_ret_submit (reply, big.seqnum, 0, BIG_OUT - 1, 0);
  send_bytes (fd, reply);
}

static void
test_bulk_out (Fixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  g_autofree guint8 *big = g_malloc (BIG_OUT);
  guint8 small[1000];
  guint32 actual = 0;

  for (guint i = 0; i < sizeof small; i++)
    small[i] = (guint8) (i * 7);
  for (guint i = 0; i < BIG_OUT; i++)
    big[i] = (guint8) (i % 251);
  f->thread = start_script (f->server_fd, script_bulk_out, NULL);
  g_assert_true (pb_remote_device_transfer (f->device, 2, PB_USBIP_DIR_OUT, small, sizeof small, &actual, WAIT_MS,
                                            NULL, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (actual, ==, 1000);
  g_assert_true (pb_remote_device_transfer (f->device, 2, PB_USBIP_DIR_OUT, big, BIG_OUT, &actual, WAIT_MS, NULL,
                                            &error));
  g_assert_no_error (error);
  g_assert_cmpuint (actual, ==, BIG_OUT - 1);
}

#define BIG_IN (256 * 1024 + 100)

static void
script_bulk_in_large (int fd, gpointer data)
{
  g_auto(Request) r = { 0 };
  g_autoptr(GByteArray) reply = g_byte_array_new ();
  gsize sent = 0;

  server_recv_request (fd, &r);
  g_assert_cmpuint (r.length, ==, BIG_IN + 50);
  put_ret_submit (reply, r.seqnum, 0, BIG_IN, 0);
  for (guint i = 0; i < BIG_IN; i++)
    put_u8 (reply, (guint8) (i % 253));
  /* In pieces, so that the client sees partial payloads. */
  while (sent < reply->len)
    {
      gsize piece = MIN (reply->len - sent, 70000);
      g_assert_true (pb_test_raw_send (fd, reply->data + sent, piece, WAIT_MS));
      sent += piece;
      g_usleep (2000);
    }
}

static void
test_bulk_in_large (Fixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  g_autofree guint8 *buffer = g_malloc0 (BIG_IN + 50);
  guint32 actual = 0;

  f->thread = start_script (f->server_fd, script_bulk_in_large, NULL);
  g_assert_true (pb_remote_device_transfer (f->device, 1, PB_USBIP_DIR_IN, buffer, BIG_IN + 50, &actual, WAIT_MS,
                                            NULL, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (actual, ==, BIG_IN);
  for (guint i = 0; i < BIG_IN; i++)
    if (buffer[i] != (guint8) (i % 253))
      g_error ("IN byte %u is %u", i, buffer[i]);
}

/* The reply arrives one byte per read: header, payload and the next header all split. */
static void
test_split_reply (Fixture *f, gconstpointer data)
{
  static const guint8 payload[5] = { 1, 2, 3, 4, 5 };
  g_autoptr(GByteArray) reply = g_byte_array_new ();
  g_auto(Request) r = { 0 };
  guint8 buffer[8] = { 0 };
  Callback cb = { 0 };
  guint32 seqnum = submit_in (f, 1, buffer, sizeof buffer, &cb);

  server_recv_request (f->server_fd, &r);
  put_ret_submit (reply, seqnum, 0, sizeof payload, 0);
  g_byte_array_append (reply, payload, sizeof payload);
  for (guint i = 0; i < reply->len; i++)
    {
      g_assert_cmpuint (cb.calls, ==, 0);
      g_assert_cmpuint (pb_remote_device_get_pending (f->device), ==, 1);
      g_assert_cmpint (send (f->server_fd, reply->data + i, 1, MSG_NOSIGNAL), ==, 1);
      iterate ();
    }
  g_assert_cmpuint (cb.calls, ==, 1);
  g_assert_cmpuint (cb.result.seqnum, ==, seqnum);
  g_assert_cmpuint (cb.result.actual_length, ==, 5);
  g_assert_cmpmem (buffer, 5, payload, 5);
  g_assert_false (pb_remote_device_is_closed (f->device));
}

#define N_FLIGHT 8

/* Several URBs in flight on several endpoints, answered in reverse order in one write. */
static void
test_out_of_order (Fixture *f, gconstpointer data)
{
  guint8 buffers[N_FLIGHT][16];
  Callback cbs[N_FLIGHT] = { 0 };
  guint32 seqnums[N_FLIGHT];
  g_autoptr(GByteArray) replies = g_byte_array_new ();

  memset (buffers, 0, sizeof buffers);
  for (guint i = 0; i < N_FLIGHT; i++)
    seqnums[i] = submit_in (f, i % 15 + 1, buffers[i], sizeof buffers[i], &cbs[i]);
  g_assert_cmpuint (pb_remote_device_get_pending (f->device), ==, N_FLIGHT);
  for (guint i = 0; i < N_FLIGHT; i++)
    {
      g_auto(Request) r = { 0 };

      server_recv_request (f->server_fd, &r);
      g_assert_cmpuint (r.seqnum, ==, seqnums[i]);
      g_assert_cmpuint (r.seqnum, ==, i + 1);
      g_assert_cmpuint (r.ep, ==, i % 15 + 1);
      g_assert_cmpuint (r.devid, ==, DEVID);
      g_assert_cmpuint (r.direction, ==, 1);
      g_assert_cmpint (r.n_packets, ==, 0);
    }
  for (guint i = N_FLIGHT; i-- > 0;)
    {
      put_ret_submit (replies, seqnums[i], 0, i + 1, 0);
      put_fill (replies, (guint8) (0xa0 + i), i + 1);
    }
  server_send (f, replies);
  for (guint i = 0; i < N_FLIGHT; i++)
    {
      g_assert_cmpuint (cbs[i].calls, ==, 1);
      g_assert_cmpint (cbs[i].result.status, ==, 0);
      g_assert_cmpuint (cbs[i].result.seqnum, ==, seqnums[i]);
      g_assert_cmpuint (cbs[i].result.actual_length, ==, i + 1);
      for (guint j = 0; j <= i; j++)
        g_assert_cmpuint (buffers[i][j], ==, 0xa0 + i);
      g_assert_cmpuint (buffers[i][i + 1], ==, 0);
    }
  g_assert_cmpuint (pb_remote_device_get_pending (f->device), ==, 0);
}

/* Iso IN data travels packed; the client puts each packet back at its offset. */
static void
test_iso_in (Fixture *f, gconstpointer data)
{
  guint8 buffer[300];
  PbUsbipIsoPacket packets[3] = { { 0, 100, 0, 0 }, { 100, 100, 0, 0 }, { 200, 100, 0, 0 } };
  PbRemoteUrbRequest request = { .ep = 3, .direction = PB_USBIP_DIR_IN, .buffer = buffer, .length = sizeof buffer,
                                 .n_iso_packets = 3, .iso_packets = packets, .interval = 1 };
  g_autoptr(GByteArray) reply = g_byte_array_new ();
  g_auto(Request) r = { 0 };
  Callback cb = { 0 };
  guint32 seqnum;

  memset (buffer, 0x55, sizeof buffer);
  seqnum = pb_remote_device_submit (f->device, &request, on_result, &cb, NULL);
  g_assert_cmpuint (seqnum, !=, 0);
  server_recv_request (f->server_fd, &r);
  g_assert_cmpint (r.n_packets, ==, 3);
  g_assert_cmpuint (r.length, ==, 300);
  for (guint i = 0; i < 3; i++)
    {
      g_assert_cmpuint (get_be32 (r.iso->data + i * 16), ==, i * 100);
      g_assert_cmpuint (get_be32 (r.iso->data + i * 16 + 4), ==, 100);
    }

  put_ret_submit (reply, seqnum, 0, 30, 3);
  put_fill (reply, 0xa1, 10); /* packet 0 */
  put_fill (reply, 0xc3, 20); /* packet 2, right behind it */
  put_iso (reply, 0, 100, 10, 0);
  put_iso (reply, 100, 100, 0, 0);
  put_iso (reply, 200, 100, 20, PB_URB_EXDEV);
  server_send (f, reply);

  g_assert_cmpuint (cb.calls, ==, 1);
  g_assert_cmpint (cb.result.status, ==, 0);
  g_assert_cmpuint (cb.result.actual_length, ==, 30);
  for (guint i = 0; i < 10; i++)
    g_assert_cmpuint (buffer[i], ==, 0xa1);
  for (guint i = 100; i < 200; i++)
    g_assert_cmpuint (buffer[i], ==, 0x55);
  for (guint i = 200; i < 220; i++)
    g_assert_cmpuint (buffer[i], ==, 0xc3);
  for (guint i = 220; i < 300; i++)
    g_assert_cmpuint (buffer[i], ==, 0x55);
  g_assert_cmpuint (packets[0].actual_length, ==, 10);
  g_assert_cmpuint (packets[1].actual_length, ==, 0);
  g_assert_cmpuint (packets[2].actual_length, ==, 20);
  g_assert_cmpint (packets[2].status, ==, PB_URB_EXDEV);
  g_assert_false (pb_remote_device_is_closed (f->device));
}

/* Packets in any order in the buffer still get their own data. */
static void
test_iso_in_any_layout (Fixture *f, gconstpointer data)
{
  guint8 buffer[300];
  PbUsbipIsoPacket packets[3] = { { 200, 100, 0, 0 }, { 0, 100, 0, 0 }, { 100, 100, 0, 0 } };
  PbRemoteUrbRequest request = { .ep = 3, .direction = PB_USBIP_DIR_IN, .buffer = buffer, .length = sizeof buffer,
                                 .n_iso_packets = 3, .iso_packets = packets };
  g_autoptr(GByteArray) reply = g_byte_array_new ();
  g_auto(Request) r = { 0 };
  Callback cb = { 0 };
  guint32 seqnum;

  memset (buffer, 0, sizeof buffer);
  seqnum = pb_remote_device_submit (f->device, &request, on_result, &cb, NULL);
  server_recv_request (f->server_fd, &r);
  put_ret_submit (reply, seqnum, 0, 60, 3);
  put_fill (reply, 0x0a, 10);
  put_fill (reply, 0x0b, 20);
  put_fill (reply, 0x0c, 30);
  put_iso (reply, 200, 100, 10, 0);
  put_iso (reply, 0, 100, 20, 0);
  put_iso (reply, 100, 100, 30, 0);
  server_send (f, reply);

  g_assert_cmpuint (cb.calls, ==, 1);
  for (guint i = 200; i < 210; i++)
    g_assert_cmpuint (buffer[i], ==, 0x0a);
  for (guint i = 0; i < 20; i++)
    g_assert_cmpuint (buffer[i], ==, 0x0b);
  for (guint i = 100; i < 130; i++)
    g_assert_cmpuint (buffer[i], ==, 0x0c);
}

static void
test_iso_out (Fixture *f, gconstpointer data)
{
  guint8 buffer[100];
  PbUsbipIsoPacket packets[2] = { { 0, 50, 0, 0 }, { 50, 50, 0, 0 } };
  PbRemoteUrbRequest request = { .ep = 4, .direction = PB_USBIP_DIR_OUT, .buffer = buffer, .length = sizeof buffer,
                                 .n_iso_packets = 2, .iso_packets = packets,
                                 .transfer_flags = PB_USBIP_URB_ISO_ASAP | PB_USBIP_URB_DIR_IN };
  g_autoptr(GByteArray) reply = g_byte_array_new ();
  g_auto(Request) r = { 0 };
  Callback cb = { 0 };
  guint32 seqnum;

  for (guint i = 0; i < sizeof buffer; i++)
    buffer[i] = (guint8) i;
  seqnum = pb_remote_device_submit (f->device, &request, on_result, &cb, NULL);
  server_recv_request (f->server_fd, &r);
  g_assert_cmpuint (r.direction, ==, 0);
  /* DIR_IN follows the direction, whatever the caller put in the flags. */
  g_assert_cmpuint (r.transfer_flags, ==, PB_USBIP_URB_ISO_ASAP);
  g_assert_cmpint (r.n_packets, ==, 2);
  g_assert_cmpmem (r.payload->data, r.payload->len, buffer, sizeof buffer);
  g_assert_cmpuint (get_be32 (r.iso->data + 16), ==, 50);

  /* OUT: descriptors come back, data does not. */
  put_ret_submit (reply, seqnum, 0, 90, 2);
  put_iso (reply, 0, 50, 50, 0);
  put_iso (reply, 50, 50, 40, PB_URB_EXDEV);
  server_send (f, reply);
  g_assert_cmpuint (cb.calls, ==, 1);
  g_assert_cmpuint (cb.result.actual_length, ==, 90);
  g_assert_cmpuint (packets[0].actual_length, ==, 50);
  g_assert_cmpuint (packets[1].actual_length, ==, 40);
  g_assert_cmpint (packets[1].status, ==, PB_URB_EXDEV);
  g_assert_false (pb_remote_device_is_closed (f->device));
}

/* ---- URB phase: unlink ---- */

static void
test_unlink_pending (Fixture *f, gconstpointer data)
{
  guint8 buffer[8];
  Callback cb = { 0 };
  g_auto(Request) submit = { 0 };
  g_auto(Request) unlink = { 0 };
  g_autoptr(GByteArray) reply = g_byte_array_new ();
  guint32 seqnum = submit_in (f, 1, buffer, sizeof buffer, &cb);

  server_recv_request (f->server_fd, &submit);
  g_assert_true (pb_remote_device_unlink (f->device, seqnum, NULL));
  server_recv_request (f->server_fd, &unlink);
  g_assert_cmpuint (unlink.command, ==, 2);
  g_assert_cmpuint (unlink.unlink_seqnum, ==, seqnum);
  g_assert_cmpuint (unlink.seqnum, >, seqnum);
  g_assert_cmpuint (unlink.devid, ==, DEVID);
  put_ret_unlink (reply, unlink.seqnum, PB_URB_ECONNRESET);
  server_send (f, reply);
  g_assert_cmpuint (cb.calls, ==, 1);
  g_assert_cmpuint (cb.result.seqnum, ==, seqnum);
  g_assert_cmpint (cb.result.status, ==, PB_URB_ECONNRESET);
  g_assert_cmpuint (pb_remote_device_get_pending (f->device), ==, 0);
  g_assert_false (pb_remote_device_is_closed (f->device));
}

/* The server had completed the URB already: RET_SUBMIT, then RET_UNLINK with status 0. */
static void
test_unlink_after_completion (Fixture *f, gconstpointer data)
{
  guint8 buffer[8];
  Callback cb = { 0 };
  g_auto(Request) submit = { 0 };
  g_auto(Request) unlink = { 0 };
  g_autoptr(GByteArray) reply = g_byte_array_new ();
  guint32 seqnum = submit_in (f, 1, buffer, sizeof buffer, &cb);

  server_recv_request (f->server_fd, &submit);
  g_assert_true (pb_remote_device_unlink (f->device, seqnum, NULL));
  server_recv_request (f->server_fd, &unlink);
  put_ret_submit (reply, seqnum, 0, 3, 0);
  put_fill (reply, 7, 3);
  put_ret_unlink (reply, unlink.seqnum, 0);
  server_send (f, reply);
  g_assert_cmpuint (cb.calls, ==, 1);
  g_assert_cmpint (cb.result.status, ==, 0);
  g_assert_cmpuint (cb.result.actual_length, ==, 3);
  g_assert_cmpuint (buffer[2], ==, 7);
  g_assert_false (pb_remote_device_is_closed (f->device));
}

/* Two unlinks of one URB: the server answers the second with 0 (nothing left to cancel) before
 * the first's -ECONNRESET. One callback, with -ECONNRESET. */
static void
test_double_unlink (Fixture *f, gconstpointer data)
{
  guint8 buffer[8];
  Callback cb = { 0 };
  g_auto(Request) submit = { 0 };
  g_auto(Request) first = { 0 };
  g_auto(Request) second = { 0 };
  g_autoptr(GByteArray) reply = g_byte_array_new ();
  guint32 seqnum = submit_in (f, 1, buffer, sizeof buffer, &cb);

  server_recv_request (f->server_fd, &submit);
  g_assert_true (pb_remote_device_unlink (f->device, seqnum, NULL));
  g_assert_true (pb_remote_device_unlink (f->device, seqnum, NULL));
  server_recv_request (f->server_fd, &first);
  server_recv_request (f->server_fd, &second);
  put_ret_unlink (reply, second.seqnum, 0);
  server_send (f, reply);
  g_assert_cmpuint (cb.calls, ==, 0);
  g_byte_array_set_size (reply, 0);
  put_ret_unlink (reply, first.seqnum, PB_URB_ECONNRESET);
  server_send (f, reply);
  g_assert_cmpuint (cb.calls, ==, 1);
  g_assert_cmpint (cb.result.status, ==, PB_URB_ECONNRESET);
  g_assert_false (pb_remote_device_is_closed (f->device));
}

/* ---- URB phase: hostile and broken servers ---- */

/* More data than asked for: the connection ends and every pending URB, not only that one, is
 * called back once with -ESHUTDOWN. */
static void
test_actual_length_too_large (Fixture *f, gconstpointer data)
{
  guint8 a[8], b[8];
  Callback cbs[2] = { 0 };
  g_autoptr(GByteArray) reply = g_byte_array_new ();
  guint32 sa;

  sa = submit_in (f, 1, a, sizeof a, &cbs[0]);
  submit_in (f, 2, b, sizeof b, &cbs[1]);
  put_ret_submit (reply, sa, 0, 64, 0);
  put_fill (reply, 0xee, 64);
  server_send (f, reply);
  assert_shut_down (f, cbs, 2, "claims 64 bytes for a 8-byte request");
  g_assert_error (pb_remote_device_get_close_error (f->device), PB_ERROR, PB_ERROR_PROTOCOL);
  g_assert_cmpuint (pb_remote_device_submit (f->device, &(PbRemoteUrbRequest) { .ep = 1 }, on_result, &cbs[0], NULL),
                    ==, 0);
  g_assert_cmpuint (cbs[0].calls, ==, 1);
}

static void
test_unknown_seqnum (Fixture *f, gconstpointer data)
{
  guint8 a[8], b[8];
  Callback cbs[2] = { 0 };
  g_autoptr(GByteArray) reply = g_byte_array_new ();

  submit_in (f, 1, a, sizeof a, &cbs[0]);
  submit_in (f, 1, b, sizeof b, &cbs[1]);
  put_ret_submit (reply, 999, 0, 0, 0);
  server_send (f, reply);
  assert_shut_down (f, cbs, 2, "unknown seqnum 999");
  g_assert_error (pb_remote_device_get_close_error (f->device), PB_ERROR, PB_ERROR_PROTOCOL);
}

static void
test_completed_twice (Fixture *f, gconstpointer data)
{
  guint8 a[8], b[8];
  Callback cbs[2] = { 0 };
  g_autoptr(GByteArray) reply = g_byte_array_new ();
  guint32 sa;

  sa = submit_in (f, 1, a, sizeof a, &cbs[0]);
  submit_in (f, 1, b, sizeof b, &cbs[1]);
  put_ret_submit (reply, sa, 0, 0, 0);
  put_ret_submit (reply, sa, 0, 0, 0);
  server_send (f, reply);
  /* The first answer counts, the second is an unknown seqnum. */
  g_assert_cmpuint (cbs[0].calls, ==, 1);
  g_assert_cmpint (cbs[0].result.status, ==, 0);
  g_assert_cmpuint (cbs[1].calls, ==, 1);
  g_assert_cmpint (cbs[1].result.status, ==, PB_URB_ESHUTDOWN);
  g_assert_true (pb_remote_device_is_closed (f->device));
}

static void
test_ret_unlink_unknown (Fixture *f, gconstpointer data)
{
  guint8 a[8];
  Callback cb = { 0 };
  g_autoptr(GByteArray) reply = g_byte_array_new ();

  submit_in (f, 1, a, sizeof a, &cb);
  put_ret_unlink (reply, 77, PB_URB_ECONNRESET);
  server_send (f, reply);
  assert_shut_down (f, &cb, 1, "RET_UNLINK for unknown seqnum 77");
}

/* A command the server must not send (CMD_SUBMIT) and one nobody knows. */
static void
test_unknown_command (Fixture *f, gconstpointer data)
{
  guint32 command = GPOINTER_TO_UINT (data);
  guint8 a[8];
  Callback cb = { 0 };
  g_autoptr(GByteArray) reply = g_byte_array_new ();

  submit_in (f, 1, a, sizeof a, &cb);
  put_be32 (reply, command);
  put_be32 (reply, 1);
  put_fill (reply, 0, 40);
  server_send (f, reply);
  assert_shut_down (f, &cb, 1, NULL);
  g_assert_error (pb_remote_device_get_close_error (f->device), PB_ERROR, PB_ERROR_PROTOCOL);
}

static void
test_iso_count_mismatch (Fixture *f, gconstpointer data)
{
  guint8 buffer[300], other[8];
  PbUsbipIsoPacket packets[3] = { { 0, 100, 0, 0 }, { 100, 100, 0, 0 }, { 200, 100, 0, 0 } };
  PbRemoteUrbRequest request = { .ep = 3, .direction = PB_USBIP_DIR_IN, .buffer = buffer, .length = sizeof buffer,
                                 .n_iso_packets = 3, .iso_packets = packets };
  g_autoptr(GByteArray) reply = g_byte_array_new ();
  Callback cbs[2] = { 0 };
  guint32 seqnum;

  seqnum = pb_remote_device_submit (f->device, &request, on_result, &cbs[0], NULL);
  submit_in (f, 1, other, sizeof other, &cbs[1]);
  put_ret_submit (reply, seqnum, 0, 0, 2);
  put_iso (reply, 0, 100, 0, 0);
  put_iso (reply, 100, 100, 0, 0);
  server_send (f, reply);
  assert_shut_down (f, cbs, 2, "carries 2 iso packets for 3");
}

static void
test_iso_sum_mismatch (Fixture *f, gconstpointer data)
{
  guint8 buffer[300];
  PbUsbipIsoPacket packets[3] = { { 0, 100, 0, 0 }, { 100, 100, 0, 0 }, { 200, 100, 0, 0 } };
  PbRemoteUrbRequest request = { .ep = 3, .direction = PB_USBIP_DIR_IN, .buffer = buffer, .length = sizeof buffer,
                                 .n_iso_packets = 3, .iso_packets = packets };
  g_autoptr(GByteArray) reply = g_byte_array_new ();
  Callback cb = { 0 };
  guint32 seqnum;

  seqnum = pb_remote_device_submit (f->device, &request, on_result, &cb, NULL);
  put_ret_submit (reply, seqnum, 0, 30, 3);
  put_fill (reply, 0x11, 30);
  put_iso (reply, 0, 100, 10, 0);
  put_iso (reply, 100, 100, 0, 0);
  put_iso (reply, 200, 100, 15, 0);
  server_send (f, reply);
  assert_shut_down (f, &cb, 1, "iso packets hold 25 bytes but the reply says 30");
}

/* A server may not answer a request before it has all of it: the client is still writing from
 * that memory. A 4 MiB OUT cannot fit in the socket buffer of a reader that never reads. */
static void
test_answer_before_sent (Fixture *f, gconstpointer data)
{
  gboolean by_unlink = GPOINTER_TO_INT (data);
  gsize size = 4 * 1024 * 1024;
  g_autofree guint8 *big = g_malloc0 (size);
  PbRemoteUrbRequest request = { .ep = 2, .direction = PB_USBIP_DIR_OUT, .buffer = big, .length = size };
  g_autoptr(GByteArray) reply = g_byte_array_new ();
  Callback cb = { 0 };
  guint32 seqnum = pb_remote_device_submit (f->device, &request, on_result, &cb, NULL);

  g_assert_cmpuint (seqnum, !=, 0);
  iterate ();
  if (by_unlink)
    {
      g_assert_true (pb_remote_device_unlink (f->device, seqnum, NULL));
      put_ret_unlink (reply, seqnum + 1, PB_URB_ECONNRESET);
    }
  else
    put_ret_submit (reply, seqnum, 0, size, 0);
  server_send (f, reply);
  assert_shut_down (f, &cb, 1, "before");
}

static void
test_peer_close (Fixture *f, gconstpointer data)
{
  guint8 a[8];
  Callback cb = { 0 };
  g_auto(Request) r = { 0 };

  submit_in (f, 1, a, sizeof a, &cb);
  server_recv_request (f->server_fd, &r);
  close (f->server_fd);
  f->server_fd = -1;
  iterate ();
  assert_shut_down (f, &cb, 1, "closed the connection");
  g_assert_error (pb_remote_device_get_close_error (f->device), PB_ERROR, PB_ERROR_CLOSED);
  /* Closing again calls nobody twice. */
  pb_remote_device_close (f->device);
  g_assert_cmpuint (cb.calls, ==, 1);
}

/* ---- closing with URBs pending ---- */

typedef struct {
  Fixture *f;
  guint order[3];
  guint n_calls;
  gboolean drop_device;
} CloseState;

static void
on_close_result (PbRemoteDevice *device, const PbRemoteUrbResult *result, gpointer user_data)
{
  CloseState *state = user_data;
  g_autoptr(GError) error = NULL;
  guint8 byte;

  g_assert_cmpint (result->status, ==, PB_URB_ESHUTDOWN);
  g_assert_true (pb_remote_device_is_closed (device));
  state->order[state->n_calls++] = result->seqnum;
  /* Re-entry from a callback: closing again, submitting, unlinking, all refused calmly. */
  pb_remote_device_close (device);
  g_assert_cmpuint (pb_remote_device_submit (device, &(PbRemoteUrbRequest) { .ep = 1, .direction = PB_USBIP_DIR_IN,
                                                                           .buffer = &byte, .length = 1 },
                                             on_close_result, state, &error), ==, 0);
  g_assert_error (error, PB_ERROR, PB_ERROR_CLOSED);
  g_assert_false (pb_remote_device_unlink (device, result->seqnum, NULL));
  if (state->drop_device && state->n_calls == 1)
    g_object_unref (device); /* the last reference: the rest still get their callback */
}

static void
test_close_pending (Fixture *f, gconstpointer data)
{
  gboolean drop = GPOINTER_TO_INT (data);
  CloseState state = { f, { 0 }, 0, drop };
  guint8 buffers[3][4];

  for (guint i = 0; i < 3; i++)
    {
      PbRemoteUrbRequest request = { .ep = 1, .direction = PB_USBIP_DIR_IN, .buffer = buffers[i], .length = 4 };
      g_assert_cmpuint (pb_remote_device_submit (f->device, &request, on_close_result, &state, NULL), ==, i + 1);
    }
  if (drop)
    {
      PbRemoteDevice *device = g_steal_pointer (&f->device);
      g_object_add_weak_pointer (G_OBJECT (device), (gpointer *) &device);
      pb_remote_device_close (device);
      g_assert_null (device);
    }
  else
    {
      pb_remote_device_close (f->device);
      g_assert_cmpuint (pb_remote_device_get_pending (f->device), ==, 0);
      g_assert_null (pb_remote_device_get_close_error (f->device));
    }
  g_assert_cmpuint (state.n_calls, ==, 3);
  for (guint i = 0; i < 3; i++)
    g_assert_cmpuint (state.order[i], ==, i + 1);
}

static void
test_dispose_pending (Fixture *f, gconstpointer data)
{
  guint8 a[4], b[4];
  Callback cbs[2] = { 0 };

  submit_in (f, 1, a, sizeof a, &cbs[0]);
  submit_in (f, 2, b, sizeof b, &cbs[1]);
  g_clear_object (&f->device);
  for (guint i = 0; i < 2; i++)
    {
      g_assert_cmpuint (cbs[i].calls, ==, 1);
      g_assert_cmpint (cbs[i].result.status, ==, PB_URB_ESHUTDOWN);
    }
}

static void
test_invalid_request (Fixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  guint8 buffer[100];
  PbUsbipIsoPacket outside[2] = { { 0, 50, 0, 0 }, { 60, 50, 0, 0 } };
  PbRemoteUrbRequest bad_ep = { .ep = 16, .direction = PB_USBIP_DIR_IN, .buffer = buffer, .length = 8 };
  PbRemoteUrbRequest no_buffer = { .ep = 1, .direction = PB_USBIP_DIR_IN, .length = 8 };
  PbRemoteUrbRequest bad_iso = { .ep = 3, .direction = PB_USBIP_DIR_IN, .buffer = buffer, .length = sizeof buffer,
                                 .n_iso_packets = 2, .iso_packets = outside };
  Callback cb = { 0 };

  g_assert_cmpuint (pb_remote_device_submit (f->device, &bad_ep, on_result, &cb, &error), ==, 0);
  g_assert_error (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT);
  g_clear_error (&error);
  g_assert_cmpuint (pb_remote_device_submit (f->device, &no_buffer, on_result, &cb, &error), ==, 0);
  g_assert_error (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT);
  g_clear_error (&error);
  g_assert_cmpuint (pb_remote_device_submit (f->device, &bad_iso, on_result, &cb, &error), ==, 0);
  g_assert_error (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT);
  g_assert_cmpuint (cb.calls, ==, 0);
  g_assert_cmpuint (pb_remote_device_get_pending (f->device), ==, 0);
  g_assert_false (pb_remote_device_is_closed (f->device));
}

/* ---- blocking helpers: timeouts and re-entry ---- */

typedef enum {
  AFTER_UNLINK_RESET,     /* RET_UNLINK -ECONNRESET */
  AFTER_UNLINK_COMPLETED, /* RET_SUBMIT with data, then RET_UNLINK 0 */
  AFTER_UNLINK_NOTHING,   /* silence until the client gives up */
} AfterUnlink;

static void
script_timeout (int fd, gpointer data)
{
  AfterUnlink after = GPOINTER_TO_INT (data);
  g_auto(Request) submit = { 0 };
  g_auto(Request) unlink = { 0 };
  g_autoptr(GByteArray) reply = g_byte_array_new ();

  server_recv_request (fd, &submit);
  /* No answer: the client's time runs out and it unlinks. */
  server_recv_request (fd, &unlink);
  g_assert_cmpuint (unlink.command, ==, 2);
  g_assert_cmpuint (unlink.unlink_seqnum, ==, submit.seqnum);
  switch (after)
    {
    case AFTER_UNLINK_RESET:
      put_ret_unlink (reply, unlink.seqnum, PB_URB_ECONNRESET);
      send_bytes (fd, reply);
      break;
    case AFTER_UNLINK_COMPLETED:
      put_ret_submit (reply, submit.seqnum, 0, 4, 0);
      put_fill (reply, 0x42, 4);
      put_ret_unlink (reply, unlink.seqnum, 0);
      send_bytes (fd, reply);
      break;
    case AFTER_UNLINK_NOTHING:
      g_assert_true (pb_test_raw_wait_closed (fd, 15000, NULL));
      break;
    }
}

static void
test_timeout (Fixture *f, gconstpointer data)
{
  AfterUnlink after = GPOINTER_TO_INT (data);
  g_autoptr(GError) error = NULL;
  guint8 buffer[4] = { 0 };
  guint32 actual = 99;
  gint32 status = 1;
  gboolean ok;

  f->thread = start_script (f->server_fd, script_timeout, GINT_TO_POINTER (after));
  ok = pb_remote_device_transfer (f->device, 1, PB_USBIP_DIR_IN, buffer, sizeof buffer, &actual, 100, &status,
                                  &error);
  switch (after)
    {
    case AFTER_UNLINK_RESET:
      g_assert_false (ok);
      g_assert_error (error, PB_ERROR, PB_ERROR_TIMED_OUT);
      g_assert_cmpint (status, ==, PB_URB_ECONNRESET);
      g_assert_false (pb_remote_device_is_closed (f->device));
      break;
    case AFTER_UNLINK_COMPLETED:
      /* It completed while the unlink was on its way: a success. */
      g_assert_no_error (error);
      g_assert_true (ok);
      g_assert_cmpuint (actual, ==, 4);
      g_assert_cmpuint (buffer[3], ==, 0x42);
      g_assert_false (pb_remote_device_is_closed (f->device));
      break;
    case AFTER_UNLINK_NOTHING:
      g_assert_false (ok);
      g_assert_error (error, PB_ERROR, PB_ERROR_TIMED_OUT);
      g_assert_cmpint (status, ==, PB_URB_ESHUTDOWN);
      g_assert_true (pb_remote_device_is_closed (f->device));
      g_assert_error (pb_remote_device_get_close_error (f->device), PB_ERROR, PB_ERROR_TIMED_OUT);
      break;
    }
  g_assert_cmpuint (pb_remote_device_get_pending (f->device), ==, 0);
}

typedef struct {
  gboolean ok;
  guint8 status_reply[2];
  guint calls;
  Callback *other;
  guint other_calls_inside;
} Nested;

/* A callback that waits for another URB with a blocking helper. */
static void
on_nested_result (PbRemoteDevice *device, const PbRemoteUrbResult *result, gpointer user_data)
{
  Nested *nested = user_data;
  g_autoptr(GError) error = NULL;

  nested->calls++;
  g_assert_cmpint (result->status, ==, 0);
  nested->ok = pb_remote_device_control (device, 0x80, 0x00, 0, 0, nested->status_reply, 2, NULL, WAIT_MS, NULL,
                                         &error);
  g_assert_no_error (error);
  nested->other_calls_inside = nested->other->calls;
}

static void
script_nested (int fd, gpointer data)
{
  g_auto(Request) a = { 0 };
  g_auto(Request) c = { 0 };
  g_auto(Request) b = { 0 };
  g_autoptr(GByteArray) reply = g_byte_array_new ();

  server_recv_request (fd, &a);
  server_recv_request (fd, &c);
  /* Both answers in one write: C is still unread when A's callback starts waiting. */
  put_ret_submit (reply, a.seqnum, 0, 4, 0);
  put_fill (reply, 0xaa, 4);
  put_ret_submit (reply, c.seqnum, 0, 4, 0);
  put_fill (reply, 0xcc, 4);
  send_bytes (fd, reply);

  server_recv_request (fd, &b);
  g_assert_cmpuint (b.ep, ==, 0);
  g_byte_array_set_size (reply, 0);
  put_ret_submit (reply, b.seqnum, 0, 2, 0);
  put_u8 (reply, 0x01);
  put_u8 (reply, 0x00);
  send_bytes (fd, reply);
}

static void
test_nested_wait (Fixture *f, gconstpointer data)
{
  guint8 a[4] = { 0 }, c[4] = { 0 };
  Callback cb_c = { 0 };
  Nested nested = { .other = &cb_c };
  PbRemoteUrbRequest request = { .ep = 1, .direction = PB_USBIP_DIR_IN, .buffer = a, .length = sizeof a };
  gint64 deadline = g_get_monotonic_time () + WAIT_MS * G_TIME_SPAN_MILLISECOND;

  g_assert_cmpuint (pb_remote_device_submit (f->device, &request, on_nested_result, &nested, NULL), ==, 1);
  submit_in (f, 2, c, sizeof c, &cb_c);
  f->thread = start_script (f->server_fd, script_nested, NULL);
  while ((nested.calls == 0 || cb_c.calls == 0) && g_get_monotonic_time () < deadline)
    g_main_context_iteration (NULL, FALSE);
  g_assert_cmpuint (nested.calls, ==, 1);
  g_assert_true (nested.ok);
  g_assert_cmpuint (nested.status_reply[0], ==, 0x01);
  g_assert_cmpuint (a[0], ==, 0xaa);
  g_assert_cmpuint (cb_c.calls, ==, 1);
  g_assert_cmpuint (c[3], ==, 0xcc);
  /* C was read during A's callback, from the bytes already received. */
  g_assert_cmpuint (nested.other_calls_inside, ==, 1);
  g_assert_false (pb_remote_device_is_closed (f->device));
}

/* ---- management phase, over TCP ---- */

typedef struct {
  int listen_fd;
  guint16 port;
  GThread *thread;
  Script script;
  gpointer data;
} MgmtServer;

static gpointer
mgmt_thread (gpointer user_data)
{
  MgmtServer *server = user_data;
  struct pollfd pfd = { .fd = server->listen_fd, .events = POLLIN };
  int fd;

  g_assert_cmpint (poll (&pfd, 1, WAIT_MS), ==, 1);
  fd = accept (server->listen_fd, NULL, NULL);
  g_assert_cmpint (fd, >=, 0);
  server->script (fd, server->data);
  close (fd);
  return NULL;
}

static int
bound_socket (guint16 *port)
{
  struct sockaddr_in addr = { .sin_family = AF_INET, .sin_addr.s_addr = htonl (INADDR_LOOPBACK) };
  socklen_t len = sizeof addr;
  int fd = socket (AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

  g_assert_cmpint (fd, >=, 0);
  g_assert_cmpint (bind (fd, (struct sockaddr *) &addr, sizeof addr), ==, 0);
  g_assert_cmpint (getsockname (fd, (struct sockaddr *) &addr, &len), ==, 0);
  *port = ntohs (addr.sin_port);
  return fd;
}

static MgmtServer *
mgmt_server_start (Script script, gpointer data)
{
  MgmtServer *server = g_new0 (MgmtServer, 1);

  server->listen_fd = bound_socket (&server->port);
  g_assert_cmpint (listen (server->listen_fd, 4), ==, 0);
  server->script = script;
  server->data = data;
  server->thread = g_thread_new ("fake-usbipd", mgmt_thread, server);
  return server;
}

static void
mgmt_server_finish (MgmtServer *server)
{
  g_thread_join (server->thread);
  close (server->listen_fd);
  g_free (server);
}
G_DEFINE_AUTOPTR_CLEANUP_FUNC (MgmtServer, mgmt_server_finish)

/* Reads the request, answers with canned bytes. */
typedef struct {
  gsize request_len;
  guint8 request[64];
  GByteArray *reply;
  gboolean keep_open; /* until the client closes */
} Canned;

static void
canned_clear (Canned *canned)
{
  g_clear_pointer (&canned->reply, g_byte_array_unref);
}
G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC (Canned, canned_clear)

static void
script_canned (int fd, gpointer data)
{
  Canned *canned = data;

  recv_exact (fd, canned->request, canned->request_len);
  if (canned->reply != NULL)
    send_bytes (fd, canned->reply);
  if (canned->keep_open)
    g_assert_true (pb_test_raw_wait_closed (fd, 15000, NULL));
}

static void
put_op_header (GByteArray *a, guint16 version, guint16 code, guint32 status)
{
  put_be16 (a, version);
  put_be16 (a, code);
  put_be32 (a, status);
}

typedef struct {
  const char *busid;
  const char *garbage; /* after the busid's NUL */
  guint32 busnum, devnum, speed;
  guint16 vendor, product;
  guint8 device_class;
  guint8 n_interfaces;
} Rec;

static void
put_record (GByteArray *a, const Rec *rec)
{
  g_autofree char *path = g_strdup_printf ("/sys/devices/pci0000:00/0000:00:14.0/usb%u/%s", rec->busnum, rec->busid);

  put_field (a, path, NULL, 256);
  put_field (a, rec->busid, rec->garbage, 32);
  put_be32 (a, rec->busnum);
  put_be32 (a, rec->devnum);
  put_be32 (a, rec->speed);
  put_be16 (a, rec->vendor);
  put_be16 (a, rec->product);
  put_be16 (a, 0x0210);          /* bcdDevice */
  put_u8 (a, rec->device_class);
  put_u8 (a, 0);                 /* subclass */
  put_u8 (a, 0);                 /* protocol */
  put_u8 (a, 1);                 /* bConfigurationValue */
  put_u8 (a, 1);                 /* bNumConfigurations */
  put_u8 (a, rec->n_interfaces);
}

static void
test_devlist_empty (void)
{
  static const guint8 expected[8] = { 0x01, 0x11, 0x80, 0x05, 0, 0, 0, 0 };
  g_auto(Canned) canned = { .request_len = 8, .reply = g_byte_array_new () };
  g_autoptr(GError) error = NULL;
  g_autoptr(GPtrArray) devices = NULL;

  put_op_header (canned.reply, 0x0111, 0x0005, 0);
  put_be32 (canned.reply, 0);
  {
    g_autoptr(MgmtServer) server = mgmt_server_start (script_canned, &canned);
    devices = pb_remote_list_devices ("127.0.0.1", server->port, NULL, &error);
  }
  g_assert_no_error (error);
  g_assert_nonnull (devices);
  g_assert_cmpuint (devices->len, ==, 0);
  g_assert_cmpmem (canned.request, 8, expected, 8);
}

static void
test_devlist_two (void)
{
  static const Rec first = { "1-1", "junk", 1, 2, PB_USBIP_SPEED_HIGH, 0x046d, 0xc52b, 0, 2 };
  static const Rec second = { "2-3.4", NULL, 2, 5, PB_USBIP_SPEED_SUPER, 0x0781, 0x5583, 0, 0 };
  g_auto(Canned) canned = { .request_len = 8, .reply = g_byte_array_new () };
  g_autoptr(GError) error = NULL;
  g_autoptr(GPtrArray) devices = NULL;
  const PbUsbipDeviceRecord *a, *b;

  put_op_header (canned.reply, 0x0111, 0x0005, 0);
  put_be32 (canned.reply, 2);
  put_record (canned.reply, &first);
  put_u8 (canned.reply, 0x03); /* HID boot keyboard */
  put_u8 (canned.reply, 0x01);
  put_u8 (canned.reply, 0x01);
  put_u8 (canned.reply, 0x00);
  put_u8 (canned.reply, 0x08); /* mass storage, SCSI, BOT */
  put_u8 (canned.reply, 0x06);
  put_u8 (canned.reply, 0x50);
  put_u8 (canned.reply, 0x00);
  put_record (canned.reply, &second); /* bound at interface level: no interfaces */
  {
    g_autoptr(MgmtServer) server = mgmt_server_start (script_canned, &canned);
    /* A name, not an address: resolved, whichever family answers first. */
    devices = pb_remote_list_devices ("localhost", server->port, NULL, &error);
  }
  g_assert_no_error (error);
  g_assert_cmpuint (devices->len, ==, 2);
  a = devices->pdata[0];
  b = devices->pdata[1];
  g_assert_cmpstr (a->busid, ==, "1-1");
  g_assert_cmpstr (a->path, ==, "/sys/devices/pci0000:00/0000:00:14.0/usb1/1-1");
  g_assert_cmpuint (a->busnum, ==, 1);
  g_assert_cmpuint (a->devnum, ==, 2);
  g_assert_cmpuint (a->speed, ==, PB_USBIP_SPEED_HIGH);
  g_assert_cmpuint (a->id_vendor, ==, 0x046d);
  g_assert_cmpuint (a->id_product, ==, 0xc52b);
  g_assert_cmpuint (a->bcd_device, ==, 0x0210);
  g_assert_cmpuint (a->configuration_value, ==, 1);
  g_assert_cmpuint (a->num_interfaces, ==, 2);
  g_assert_cmpuint (a->interfaces[0].interface_class, ==, 0x03);
  g_assert_cmpuint (a->interfaces[0].interface_protocol, ==, 0x01);
  g_assert_cmpuint (a->interfaces[1].interface_class, ==, 0x08);
  g_assert_cmpuint (a->interfaces[1].interface_subclass, ==, 0x06);
  g_assert_cmpuint (a->interfaces[1].interface_protocol, ==, 0x50);
  g_assert_cmpstr (b->busid, ==, "2-3.4");
  g_assert_cmpuint (b->devnum, ==, 5);
  g_assert_cmpuint (b->speed, ==, PB_USBIP_SPEED_SUPER);
  g_assert_cmpuint (b->num_interfaces, ==, 0);
}

/* More devices than the cap: refused at once, without reading (or allocating for) them. */
static void
test_devlist_too_many (void)
{
  g_auto(Canned) canned = { .request_len = 8, .reply = g_byte_array_new (), .keep_open = TRUE };
  g_autoptr(GError) error = NULL;
  g_autoptr(GPtrArray) devices = NULL;
  gint64 start = g_get_monotonic_time ();

  put_op_header (canned.reply, 0x0111, 0x0005, 0);
  put_be32 (canned.reply, PB_USBIP_MAX_DEVLIST_DEVICES + 1);
  {
    g_autoptr(MgmtServer) server = mgmt_server_start (script_canned, &canned);
    devices = pb_remote_list_devices ("127.0.0.1", server->port, NULL, &error);
  }
  g_assert_null (devices);
  g_assert_error (error, PB_ERROR, PB_ERROR_TOO_LARGE);
  g_assert_cmpint (g_get_monotonic_time () - start, <, 3 * G_TIME_SPAN_SECOND);
}

static void
test_devlist_truncated (void)
{
  static const Rec rec = { "1-1", NULL, 1, 2, PB_USBIP_SPEED_HIGH, 1, 2, 0, 0 };
  g_auto(Canned) canned = { .request_len = 8, .reply = g_byte_array_new () };
  g_autoptr(GError) error = NULL;
  g_autoptr(GPtrArray) devices = NULL;

  put_op_header (canned.reply, 0x0111, 0x0005, 0);
  put_be32 (canned.reply, 2);
  put_record (canned.reply, &rec);
  g_byte_array_set_size (canned.reply, canned.reply->len + 100); /* the second one breaks off */
  {
    g_autoptr(MgmtServer) server = mgmt_server_start (script_canned, &canned);
    devices = pb_remote_list_devices ("127.0.0.1", server->port, NULL, &error);
  }
  g_assert_null (devices);
  g_assert_error (error, PB_ERROR, PB_ERROR_CLOSED);
}

/* An old peer answering 0x0106: a clear error that names both versions. */
static void
test_version_mismatch (gconstpointer data)
{
  gboolean import = GPOINTER_TO_INT (data);
  g_auto(Canned) canned = { .request_len = import ? 40 : 8, .reply = g_byte_array_new () };
  g_autoptr(GError) error = NULL;

  put_op_header (canned.reply, 0x0106, import ? 0x0003 : 0x0005, 0);
  put_be32 (canned.reply, 0);
  {
    g_autoptr(MgmtServer) server = mgmt_server_start (script_canned, &canned);
    if (import)
      {
        g_autoptr(PbRemoteDevice) device = pb_remote_import ("127.0.0.1", server->port, "1-1", NULL, &error);
        g_assert_null (device);
      }
    else
      {
        g_autoptr(GPtrArray) devices = pb_remote_list_devices ("127.0.0.1", server->port, NULL, &error);
        g_assert_null (devices);
      }
  }
  g_assert_error (error, PB_ERROR, PB_ERROR_VERSION_MISMATCH);
  g_assert_nonnull (strstr (error->message, "0x0106"));
  g_assert_nonnull (strstr (error->message, "0x0111"));
}

/* Import, then the same connection carries URBs for the device. */
static void
script_import_and_serve (int fd, gpointer data)
{
  static const Rec rec = { "3-7", "garbage!", 3, 7, PB_USBIP_SPEED_HIGH, 0x1d6b, 0x0104, 0xef, 0 };
  guint8 request[40];
  g_auto(Request) r = { 0 };
  g_autoptr(GByteArray) reply = g_byte_array_new ();

  recv_exact (fd, request, sizeof request);
  g_assert_cmpuint (get_be32 (request), ==, 0x01118003);
  g_assert_cmpuint (get_be32 (request + 4), ==, 0);
  g_assert_cmpstr ((const char *) request + 8, ==, "3-7");
  put_op_header (reply, 0x0111, 0x0003, 0);
  put_record (reply, &rec);
  send_bytes (fd, reply);

  server_recv_request (fd, &r);
  g_assert_cmpuint (r.devid, ==, (3u << 16) | 7);
  g_assert_cmpuint (r.seqnum, ==, 1);
  g_byte_array_set_size (reply, 0);
  put_ret_submit (reply, r.seqnum, 0, 2, 0);
  put_u8 (reply, 0x03);
  put_u8 (reply, 0x00);
  send_bytes (fd, reply);
  g_assert_true (pb_test_raw_wait_closed (fd, WAIT_MS, NULL));
}

static void
test_import (void)
{
  g_autoptr(MgmtServer) server = mgmt_server_start (script_import_and_serve, NULL);
  g_autoptr(GError) error = NULL;
  g_autoptr(PbRemoteDevice) device = pb_remote_import ("127.0.0.1", server->port, "3-7", NULL, &error);
  const PbUsbipDeviceRecord *record;
  guint8 status[2] = { 0 };

  g_assert_no_error (error);
  g_assert_nonnull (device);
  record = pb_remote_device_get_record (device);
  g_assert_cmpstr (record->busid, ==, "3-7");
  g_assert_cmpuint (record->busnum, ==, 3);
  g_assert_cmpuint (record->devnum, ==, 7);
  g_assert_cmpuint (record->speed, ==, PB_USBIP_SPEED_HIGH);
  g_assert_cmpuint (record->id_vendor, ==, 0x1d6b);
  g_assert_cmpuint (record->device_class, ==, 0xef);
  g_assert_cmpuint (record->num_interfaces, ==, 0);
  g_assert_true (pb_remote_device_control (device, 0x80, 0x00, 0, 0, status, 2, NULL, WAIT_MS, NULL, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (status[0], ==, 0x03);
  pb_remote_device_close (device);
}

static void
test_import_status (void)
{
  static const struct {
    guint32 status;
    const char *busid;
    gint code; /* PbError */
    const char *message;
  } cases[] = {
    { PB_USBIP_ST_DEV_BUSY, "1-1", PB_ERROR_BUSY, "device 1-1 is busy: already imported by another client" },
    { PB_USBIP_ST_NODEV, "9-9", PB_ERROR_NOT_FOUND, "no device with bus ID 9-9 on 127.0.0.1:" },
    { PB_USBIP_ST_DEV_ERR, "1-2", PB_ERROR_DEVICE, "1-2" },
    { PB_USBIP_ST_ERROR, "1-3", PB_ERROR_FAILED, "1-3" },
    { PB_USBIP_ST_NA, "1-4", PB_ERROR_FAILED, "1-4" },
  };

  for (guint i = 0; i < G_N_ELEMENTS (cases); i++)
    {
      g_auto(Canned) canned = { .request_len = 40, .reply = g_byte_array_new () };
      g_autoptr(MgmtServer) server = NULL;
      g_autoptr(GSocketConnection) connection = NULL;
      g_autoptr(GError) error = NULL;
      PbUsbipDeviceRecord record;

      /* The header alone when the status is not 0. */
      put_op_header (canned.reply, 0x0111, 0x0003, cases[i].status);
      server = mgmt_server_start (script_canned, &canned);
      connection = pb_remote_connect ("127.0.0.1", server->port, NULL, &error);
      g_assert_no_error (error);
      g_assert_false (pb_remote_import_on (connection, cases[i].busid, &record, NULL, &error));
      g_assert_error (error, PB_ERROR, cases[i].code);
      if (strstr (error->message, cases[i].message) == NULL)
        g_error ("\"%s\" does not say \"%s\"", error->message, cases[i].message);
      g_assert_cmpstr ((const char *) canned.request + 8, ==, cases[i].busid);
    }
}

/* As the Linux client: a reply for another bus ID is no import. */
static void
test_import_busid_mismatch (void)
{
  static const Rec other = { "1-2", NULL, 1, 3, PB_USBIP_SPEED_FULL, 1, 2, 0, 0 };
  g_auto(Canned) canned = { .request_len = 40, .reply = g_byte_array_new () };
  g_autoptr(GError) error = NULL;
  g_autoptr(PbRemoteDevice) device = NULL;

  put_op_header (canned.reply, 0x0111, 0x0003, 0);
  put_record (canned.reply, &other);
  {
    g_autoptr(MgmtServer) server = mgmt_server_start (script_canned, &canned);
    device = pb_remote_import ("127.0.0.1", server->port, "1-1", NULL, &error);
  }
  g_assert_null (device);
  g_assert_error (error, PB_ERROR, PB_ERROR_PROTOCOL);
  g_assert_nonnull (strstr (error->message, "1-2"));
}

static void
test_refused (void)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GPtrArray) devices = NULL;
  g_autofree char *where = NULL;
  guint16 port;

  /* Bound, never listening, then closed: nobody answers on that port. */
  close (bound_socket (&port));
  devices = pb_remote_list_devices ("127.0.0.1", port, NULL, &error);
  g_assert_null (devices);
  g_assert_error (error, PB_ERROR, PB_ERROR_REFUSED);
  where = g_strdup_printf ("connection to 127.0.0.1:%u refused", port);
  if (strstr (error->message, where) == NULL)
    g_error ("\"%s\" does not say \"%s\"", error->message, where);
}

static void
test_connect_options (void)
{
  g_auto(Canned) canned = { .request_len = 0, .keep_open = TRUE };
  g_autoptr(MgmtServer) server = mgmt_server_start (script_canned, &canned);
  g_autoptr(GError) error = NULL;
  g_autoptr(GSocketConnection) connection = pb_remote_connect ("127.0.0.1", server->port, NULL, &error);
  GSocket *socket;
  int value = 0;
  socklen_t len = sizeof value;

  g_assert_no_error (error);
  socket = g_socket_connection_get_socket (connection);
  g_assert_cmpint (getsockopt (g_socket_get_fd (socket), IPPROTO_TCP, TCP_NODELAY, &value, &len), ==, 0);
  g_assert_cmpint (value, !=, 0);
  g_assert_true (g_socket_get_keepalive (socket));
  g_assert_cmpuint (g_socket_get_timeout (socket), ==, PB_REMOTE_TIMEOUT_SECONDS);
  g_io_stream_close (G_IO_STREAM (connection), NULL, NULL);
}

/* A server that accepts and never answers: each step gives up after the socket's timeout. */
static void
test_step_timeout (void)
{
  g_auto(Canned) canned = { .request_len = 8, .keep_open = TRUE };
  g_autoptr(MgmtServer) server = mgmt_server_start (script_canned, &canned);
  g_autoptr(GError) error = NULL;
  g_autoptr(GSocketConnection) connection = pb_remote_connect ("127.0.0.1", server->port, NULL, &error);
  g_autoptr(GPtrArray) devices = NULL;
  gint64 start;

  g_assert_no_error (error);
  g_socket_set_timeout (g_socket_connection_get_socket (connection), 1);
  start = g_get_monotonic_time ();
  devices = pb_remote_list_devices_on (connection, NULL, &error);
  g_assert_null (devices);
  g_assert_error (error, PB_ERROR, PB_ERROR_TIMED_OUT);
  g_assert_cmpint (g_get_monotonic_time () - start, <, 5 * G_TIME_SPAN_SECOND);
  g_io_stream_close (G_IO_STREAM (connection), NULL, NULL);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);

#define ADD(path, func, data) g_test_add ("/remote-device/" path, Fixture, data, fixture_setup, func, fixture_teardown)
  ADD ("control-in", test_control_in, NULL);
  ADD ("control-stall", test_control_stall, NULL);
  ADD ("bulk-out", test_bulk_out, NULL);
  ADD ("bulk-in-large", test_bulk_in_large, NULL);
  ADD ("split-reply", test_split_reply, NULL);
  ADD ("out-of-order", test_out_of_order, NULL);
  ADD ("iso-in", test_iso_in, NULL);
  ADD ("iso-in-any-layout", test_iso_in_any_layout, NULL);
  ADD ("iso-out", test_iso_out, NULL);
  ADD ("unlink-pending", test_unlink_pending, NULL);
  ADD ("unlink-after-completion", test_unlink_after_completion, NULL);
  ADD ("double-unlink", test_double_unlink, NULL);
  ADD ("hostile/actual-length-too-large", test_actual_length_too_large, NULL);
  ADD ("hostile/unknown-seqnum", test_unknown_seqnum, NULL);
  ADD ("hostile/completed-twice", test_completed_twice, NULL);
  ADD ("hostile/ret-unlink-unknown", test_ret_unlink_unknown, NULL);
  ADD ("hostile/cmd-submit-from-server", test_unknown_command, GUINT_TO_POINTER (1));
  ADD ("hostile/unknown-command", test_unknown_command, GUINT_TO_POINTER (9));
  ADD ("hostile/iso-count-mismatch", test_iso_count_mismatch, NULL);
  ADD ("hostile/iso-sum-mismatch", test_iso_sum_mismatch, NULL);
  ADD ("hostile/ret-submit-before-sent", test_answer_before_sent, GINT_TO_POINTER (FALSE));
  ADD ("hostile/ret-unlink-before-sent", test_answer_before_sent, GINT_TO_POINTER (TRUE));
  ADD ("peer-close", test_peer_close, NULL);
  ADD ("close-pending", test_close_pending, GINT_TO_POINTER (FALSE));
  ADD ("close-pending-last-reference", test_close_pending, GINT_TO_POINTER (TRUE));
  ADD ("dispose-pending", test_dispose_pending, NULL);
  ADD ("invalid-request", test_invalid_request, NULL);
  ADD ("timeout/unlinked", test_timeout, GINT_TO_POINTER (AFTER_UNLINK_RESET));
  ADD ("timeout/completed-anyway", test_timeout, GINT_TO_POINTER (AFTER_UNLINK_COMPLETED));
  ADD ("timeout/unlink-ignored", test_timeout, GINT_TO_POINTER (AFTER_UNLINK_NOTHING));
  ADD ("nested-wait", test_nested_wait, NULL);
#undef ADD

  g_test_add_func ("/remote/devlist-empty", test_devlist_empty);
  g_test_add_func ("/remote/devlist-two", test_devlist_two);
  g_test_add_func ("/remote/devlist-too-many", test_devlist_too_many);
  g_test_add_func ("/remote/devlist-truncated", test_devlist_truncated);
  g_test_add_data_func ("/remote/version-mismatch/devlist", GINT_TO_POINTER (FALSE), test_version_mismatch);
  g_test_add_data_func ("/remote/version-mismatch/import", GINT_TO_POINTER (TRUE), test_version_mismatch);
  g_test_add_func ("/remote/import", test_import);
  g_test_add_func ("/remote/import-status", test_import_status);
  g_test_add_func ("/remote/import-busid-mismatch", test_import_busid_mismatch);
  g_test_add_func ("/remote/refused", test_refused);
  g_test_add_func ("/remote/connect-options", test_connect_options);
  g_test_add_func ("/remote/step-timeout", test_step_timeout);
  return g_test_run ();
}
