/* PbExportSession against a raw client on a socketpair, with a virtual device whose endpoints
 * complete only when the test says so: unlink races forced deterministically, per-endpoint
 * order, concurrency across endpoints, teardown with pending URBs. */
#include <errno.h>
#include <gio/gio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "pb-export-session.h"
#include "pb-virtual-device.h"

typedef struct {
  GQueue held;          /* URBs the device holds, by arrival */
  guint cancels_seen;
  gboolean complete_on_cancel;
  guint transfers_seen;
} Controlled;

static void
controlled_transfer (PbVirtualDevice *device, PbUrb *urb, gpointer user_data)
{
  Controlled *c = user_data;
  c->transfers_seen++;
  g_queue_push_tail (&c->held, urb);
}

static void
controlled_cancel (PbVirtualDevice *device, PbUrb *urb, gpointer user_data)
{
  Controlled *c = user_data;
  c->cancels_seen++;
  if (c->complete_on_cancel)
    {
      g_queue_remove (&c->held, urb);
      pb_urb_complete (urb, PB_URB_ECONNRESET, 0);
    }
}

static const PbVirtualDeviceOps controlled_ops = {
  .transfer = controlled_transfer,
  .cancel = controlled_cancel,
};

static const guint8 device_descriptor[18] = {
  18, 1, 0x00, 0x02, 0xff, 0, 0, 64, 0x6b, 0x1d, 0x99, 0x01, 0x00, 0x01, 0, 0, 0, 1,
};
static const guint8 configuration[] = {
  9, 2, 9 + 9 + 7 + 7, 0, 1, 1, 0, 0x80, 50,
  9, 4, 0, 0, 2, 0xff, 0, 0, 0,
  7, 5, 0x81, 2, 0x00, 0x02, 0,
  7, 5, 0x02, 2, 0x00, 0x02, 0,
};

typedef struct {
  Controlled controlled;
  PbVirtualDevice *device;
  PbExportSession *session;
  int client_fd;
  gboolean closed;
  guint32 next_seqnum;
} Fixture;

static void
on_closed (PbExportSession *session, const GError *reason, gpointer user_data)
{
  Fixture *f = user_data;
  f->closed = TRUE;
}

static void
fixture_setup (Fixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GSocket) server_socket = NULL;
  int fds[2];

  memset (f, 0, sizeof *f);
  f->next_seqnum = 1;
  f->device = pb_virtual_device_new (&controlled_ops, &f->controlled, NULL);
  g_assert_true (pb_virtual_device_set_descriptors (f->device, PB_USBIP_SPEED_HIGH, device_descriptor,
                                                    sizeof device_descriptor, configuration, sizeof configuration,
                                                    &error));
  g_assert_no_error (error);
  pb_device_set_address (PB_DEVICE (f->device), 100, 1, "100-1");

  g_assert_cmpint (socketpair (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), ==, 0);
  server_socket = g_socket_new_from_fd (fds[0], &error);
  g_assert_no_error (error);
  f->client_fd = fds[1];
  f->session = pb_export_session_new (server_socket, PB_DEVICE (f->device), "test client");
  g_signal_connect (f->session, "closed", G_CALLBACK (on_closed), f);
  g_assert_true (pb_export_session_start (f->session, &error));
  g_assert_no_error (error);
}

static void
fixture_teardown (Fixture *f, gconstpointer data)
{
  PbUrb *urb;

  if (f->client_fd >= 0)
    close (f->client_fd);
  /* The session cancels what is pending; the device completes what it holds. */
  while (!f->closed)
    {
      while ((urb = g_queue_pop_head (&f->controlled.held)) != NULL)
        pb_urb_complete (urb, PB_URB_ESHUTDOWN, 0);
      g_main_context_iteration (NULL, TRUE);
    }
  g_assert_false (pb_device_is_busy (PB_DEVICE (f->device)));
  g_object_unref (f->session);
  g_object_unref (f->device);
}

static void
send_all (int fd, const void *data, gsize len)
{
  const guint8 *p = data;
  while (len > 0)
    {
      gssize n = send (fd, p, len, MSG_NOSIGNAL);
      g_assert_cmpint (n, >, 0);
      p += n;
      len -= (gsize) n;
    }
}

static guint32
send_submit (Fixture *f, guint ep, PbUsbipDirection direction, guint32 length, const guint8 setup[8])
{
  PbUsbipUrbHeader header = { 0 };
  guint8 wire[PB_USBIP_URB_HEADER_SIZE];
  guint32 seqnum = f->next_seqnum++;

  header.command = PB_USBIP_CMD_SUBMIT;
  header.seqnum = seqnum;
  header.devid = (100 << 16) | 1;
  header.direction = direction;
  header.ep = ep;
  header.u.cmd_submit.transfer_flags = direction == PB_USBIP_DIR_IN ? PB_USBIP_URB_DIR_IN : 0;
  header.u.cmd_submit.transfer_buffer_length = length;
  if (setup != NULL)
    memcpy (header.u.cmd_submit.setup, setup, 8);
  pb_usbip_urb_header_encode (&header, wire);
  send_all (f->client_fd, wire, sizeof wire);
  if (direction == PB_USBIP_DIR_OUT && length > 0)
    {
      g_autofree guint8 *payload = g_malloc (length);
      memset (payload, 0xa5, length);
      send_all (f->client_fd, payload, length);
    }
  return seqnum;
}

static guint32
encode_unlink (Fixture *f, guint32 target, guint8 wire[PB_USBIP_URB_HEADER_SIZE])
{
  PbUsbipUrbHeader header = { 0 };
  guint32 seqnum = f->next_seqnum++;

  header.command = PB_USBIP_CMD_UNLINK;
  header.seqnum = seqnum;
  header.devid = (100 << 16) | 1;
  header.u.cmd_unlink.unlink_seqnum = target;
  pb_usbip_urb_header_encode (&header, wire);
  return seqnum;
}

static guint32
send_unlink (Fixture *f, guint32 target)
{
  guint8 wire[PB_USBIP_URB_HEADER_SIZE];
  guint32 seqnum = encode_unlink (f, target, wire);

  send_all (f->client_fd, wire, sizeof wire);
  return seqnum;
}

/* Reads exactly len bytes, running the session's main loop meanwhile. */
static void
recv_exact (Fixture *f, guint8 *out, gsize len)
{
  gsize got = 0;
  gint64 deadline = g_get_monotonic_time () + 10 * G_USEC_PER_SEC;

  while (got < len)
    {
      gssize n = recv (f->client_fd, out + got, len - got, MSG_DONTWAIT);
      if (n > 0)
        got += (gsize) n;
      else
        {
          g_assert_true (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK));
          g_assert_cmpint (g_get_monotonic_time (), <, deadline);
          g_main_context_iteration (NULL, FALSE);
          g_usleep (100);
        }
    }
}

/* direction: of the request this reply answers (servers send RET_SUBMIT with direction 0). */
static void
recv_reply (Fixture *f, PbUsbipDirection direction, PbUsbipUrbHeader *header, guint8 *payload, gsize payload_capacity)
{
  guint8 wire[PB_USBIP_URB_HEADER_SIZE];
  g_autoptr(GError) error = NULL;
  guint32 length;

  recv_exact (f, wire, sizeof wire);
  g_assert_true (pb_usbip_urb_header_decode (wire, sizeof wire, header, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (header->direction, ==, 0);
  if (header->command == PB_USBIP_RET_SUBMIT)
    header->direction = direction;
  length = pb_usbip_urb_payload_length (header);
  g_assert_cmpuint (length, <=, payload_capacity);
  if (length > 0)
    recv_exact (f, payload, length);
}

/* Nothing more is readable after the main loop has run dry. */
static void
assert_no_reply_pending (Fixture *f)
{
  guint8 byte;
  for (int i = 0; i < 50; i++)
    g_main_context_iteration (NULL, FALSE);
  g_assert_cmpint (recv (f->client_fd, &byte, 1, MSG_DONTWAIT), <, 0);
}

static void
run_until (gboolean *flag)
{
  gint64 deadline = g_get_monotonic_time () + 10 * G_USEC_PER_SEC;
  while (!*flag)
    {
      g_assert_cmpint (g_get_monotonic_time (), <, deadline);
      g_main_context_iteration (NULL, FALSE);
      g_usleep (100);
    }
}

static void
wait_for_held (Fixture *f, guint count)
{
  gint64 deadline = g_get_monotonic_time () + 10 * G_USEC_PER_SEC;
  while (f->controlled.held.length < count)
    {
      g_assert_cmpint (g_get_monotonic_time (), <, deadline);
      g_main_context_iteration (NULL, FALSE);
      g_usleep (100);
    }
}

static void
configure (Fixture *f)
{
  static const guint8 set_configuration[8] = { 0x00, 0x09, 1, 0, 0, 0, 0, 0 };
  PbUsbipUrbHeader reply;
  guint32 seqnum = send_submit (f, 0, PB_USBIP_DIR_OUT, 0, set_configuration);

  recv_reply (f, PB_USBIP_DIR_OUT, &reply, NULL, 0);
  g_assert_cmpuint (reply.command, ==, PB_USBIP_RET_SUBMIT);
  g_assert_cmpuint (reply.seqnum, ==, seqnum);
  g_assert_cmpint (reply.u.ret_submit.status, ==, 0);
}

/* The cancel is in flight (the device heard it but has not finished) when the transfer
 * completes normally: the host must get RET_UNLINK(-ECONNRESET) and never a RET_SUBMIT. */
static void
test_unlink_completion_races_cancel (Fixture *f, gconstpointer data)
{
  PbUsbipUrbHeader reply;
  guint8 payload[512];
  guint32 target, unlink, probe;
  PbUrb *urb;
  static const guint8 get_status[8] = { 0x80, 0x00, 0, 0, 0, 0, 2, 0 };

  configure (f);
  target = send_submit (f, 1, PB_USBIP_DIR_IN, 512, NULL);
  wait_for_held (f, 1);
  unlink = send_unlink (f, target);
  while (f->controlled.cancels_seen == 0)
    g_main_context_iteration (NULL, TRUE);

  urb = g_queue_pop_head (&f->controlled.held);
  g_assert_true (urb->cancelled);
  memset (urb->buffer, 0x11, 512);
  pb_urb_complete (urb, PB_URB_OK, 512);

  recv_reply (f, PB_USBIP_DIR_IN, &reply, payload, sizeof payload);
  g_assert_cmpuint (reply.command, ==, PB_USBIP_RET_UNLINK);
  g_assert_cmpuint (reply.seqnum, ==, unlink);
  g_assert_cmpint (reply.u.ret_unlink.status, ==, PB_URB_ECONNRESET);

  /* The next reply on the wire belongs to the next request: no stray RET_SUBMIT in between. */
  probe = send_submit (f, 0, PB_USBIP_DIR_IN, 2, get_status);
  recv_reply (f, PB_USBIP_DIR_IN, &reply, payload, sizeof payload);
  g_assert_cmpuint (reply.command, ==, PB_USBIP_RET_SUBMIT);
  g_assert_cmpuint (reply.seqnum, ==, probe);
  assert_no_reply_pending (f);
}

/* The unlink arrives after the transfer completed and its RET_SUBMIT went out: RET_SUBMIT
 * first, then RET_UNLINK with status 0. */
static void
test_unlink_after_completion (Fixture *f, gconstpointer data)
{
  PbUsbipUrbHeader reply;
  guint8 payload[512];
  guint32 target, unlink;
  PbUrb *urb;

  configure (f);
  target = send_submit (f, 1, PB_USBIP_DIR_IN, 512, NULL);
  wait_for_held (f, 1);
  urb = g_queue_pop_head (&f->controlled.held);
  memset (urb->buffer, 0x22, 100);
  pb_urb_complete (urb, PB_URB_OK, 100);
  /* The reply is in the socket, unread, when the unlink is sent. */
  unlink = send_unlink (f, target);

  recv_reply (f, PB_USBIP_DIR_IN, &reply, payload, sizeof payload);
  g_assert_cmpuint (reply.command, ==, PB_USBIP_RET_SUBMIT);
  g_assert_cmpuint (reply.seqnum, ==, target);
  g_assert_cmpuint (reply.u.ret_submit.actual_length, ==, 100);
  g_assert_cmpint (payload[0], ==, 0x22);
  g_assert_cmpint (payload[99], ==, 0x22);

  recv_reply (f, PB_USBIP_DIR_IN, &reply, payload, sizeof payload);
  g_assert_cmpuint (reply.command, ==, PB_USBIP_RET_UNLINK);
  g_assert_cmpuint (reply.seqnum, ==, unlink);
  g_assert_cmpint (reply.u.ret_unlink.status, ==, 0);
  g_assert_cmpuint (f->controlled.cancels_seen, ==, 0);
  assert_no_reply_pending (f);
}

static void
test_unlink_cancelled_at_once (Fixture *f, gconstpointer data)
{
  PbUsbipUrbHeader reply;
  guint32 target, unlink;

  f->controlled.complete_on_cancel = TRUE;
  configure (f);
  target = send_submit (f, 2, PB_USBIP_DIR_OUT, 4096, NULL);
  wait_for_held (f, 1);
  unlink = send_unlink (f, target);
  recv_reply (f, PB_USBIP_DIR_OUT, &reply, NULL, 0);
  g_assert_cmpuint (reply.command, ==, PB_USBIP_RET_UNLINK);
  g_assert_cmpuint (reply.seqnum, ==, unlink);
  g_assert_cmpint (reply.u.ret_unlink.status, ==, PB_URB_ECONNRESET);
  g_assert_cmpuint (f->controlled.held.length, ==, 0);
  assert_no_reply_pending (f);
}

static void
test_unlink_burst_of_unknown (Fixture *f, gconstpointer data)
{
  PbUsbipUrbHeader reply;
  guint32 first = 0;

  g_autofree guint8 *burst = g_malloc (1000 * PB_USBIP_URB_HEADER_SIZE);

  configure (f);
  /* One write: the test and the session share a thread, so the burst must fit the socket. */
  for (guint i = 0; i < 1000; i++)
    {
      guint32 seqnum = encode_unlink (f, 0x7fff0000 + i, burst + i * PB_USBIP_URB_HEADER_SIZE);
      if (i == 0)
        first = seqnum;
    }
  send_all (f->client_fd, burst, 1000 * PB_USBIP_URB_HEADER_SIZE);
  for (guint i = 0; i < 1000; i++)
    {
      recv_reply (f, PB_USBIP_DIR_OUT, &reply, NULL, 0);
      g_assert_cmpuint (reply.command, ==, PB_USBIP_RET_UNLINK);
      g_assert_cmpuint (reply.seqnum, ==, first + i);
      g_assert_cmpint (reply.u.ret_unlink.status, ==, 0);
    }
  g_assert_false (f->closed);
  configure (f);
}

/* Linux unlinks URBs one at a time and waits for each answer (cdc-acm's close, usb_poison_urb):
 * an unlinked URB must be answered even while older URBs on its endpoint stay pending. */
static void
test_unlink_newer_than_pending (Fixture *f, gconstpointer data)
{
  PbUsbipUrbHeader reply;
  guint8 payload[512];
  guint32 older, newer, unlink;
  PbUrb *urb_older;

  f->controlled.complete_on_cancel = TRUE;
  configure (f);
  older = send_submit (f, 1, PB_USBIP_DIR_IN, 512, NULL);
  newer = send_submit (f, 1, PB_USBIP_DIR_IN, 512, NULL);
  wait_for_held (f, 2);
  unlink = send_unlink (f, newer);
  recv_reply (f, PB_USBIP_DIR_IN, &reply, payload, sizeof payload);
  g_assert_cmpuint (reply.command, ==, PB_USBIP_RET_UNLINK);
  g_assert_cmpuint (reply.seqnum, ==, unlink);
  g_assert_cmpint (reply.u.ret_unlink.status, ==, PB_URB_ECONNRESET);
  assert_no_reply_pending (f);

  /* The older one still completes normally, and nothing comes for the unlinked one. */
  urb_older = g_queue_pop_head (&f->controlled.held);
  g_assert_cmpuint (urb_older->seqnum, ==, older);
  pb_urb_complete (urb_older, PB_URB_OK, 7);
  recv_reply (f, PB_USBIP_DIR_IN, &reply, payload, sizeof payload);
  g_assert_cmpuint (reply.command, ==, PB_USBIP_RET_SUBMIT);
  g_assert_cmpuint (reply.seqnum, ==, older);
  g_assert_cmpuint (reply.u.ret_submit.actual_length, ==, 7);
  assert_no_reply_pending (f);
}

/* The same when the device had already finished the newer URB, which waits for its turn. */
static void
test_unlink_finished_behind_pending (Fixture *f, gconstpointer data)
{
  PbUsbipUrbHeader reply;
  guint8 payload[512];
  guint32 older, newer, unlink;
  PbUrb *urb_older, *urb_newer;

  configure (f);
  older = send_submit (f, 1, PB_USBIP_DIR_IN, 512, NULL);
  newer = send_submit (f, 1, PB_USBIP_DIR_IN, 512, NULL);
  wait_for_held (f, 2);
  urb_older = g_queue_pop_head (&f->controlled.held);
  urb_newer = g_queue_pop_head (&f->controlled.held);
  pb_urb_complete (urb_newer, PB_URB_OK, 3);
  assert_no_reply_pending (f); /* waits behind the older one */

  unlink = send_unlink (f, newer);
  recv_reply (f, PB_USBIP_DIR_IN, &reply, payload, sizeof payload);
  g_assert_cmpuint (reply.command, ==, PB_USBIP_RET_UNLINK);
  g_assert_cmpuint (reply.seqnum, ==, unlink);
  g_assert_cmpint (reply.u.ret_unlink.status, ==, PB_URB_ECONNRESET);
  g_assert_cmpuint (f->controlled.cancels_seen, ==, 0);
  assert_no_reply_pending (f);

  pb_urb_complete (urb_older, PB_URB_OK, 5);
  recv_reply (f, PB_USBIP_DIR_IN, &reply, payload, sizeof payload);
  g_assert_cmpuint (reply.seqnum, ==, older);
  assert_no_reply_pending (f);
}

/* Completions on one endpoint reach the host in submission order, whatever order the device
 * finishes them in; another endpoint is not held up by them. */
static void
test_order_per_endpoint (Fixture *f, gconstpointer data)
{
  PbUsbipUrbHeader reply;
  guint8 payload[512];
  guint32 first, second, out;
  PbUrb *urb_first, *urb_second, *urb_out;

  configure (f);
  first = send_submit (f, 1, PB_USBIP_DIR_IN, 512, NULL);
  second = send_submit (f, 1, PB_USBIP_DIR_IN, 512, NULL);
  out = send_submit (f, 2, PB_USBIP_DIR_OUT, 512, NULL);
  wait_for_held (f, 3);
  urb_first = g_queue_pop_head (&f->controlled.held);
  urb_second = g_queue_pop_head (&f->controlled.held);
  urb_out = g_queue_pop_head (&f->controlled.held);
  g_assert_cmpuint (urb_first->seqnum, ==, first);
  g_assert_cmpuint (urb_out->length, ==, 512);
  g_assert_cmpint (urb_out->buffer[511], ==, 0xa5);

  pb_urb_complete (urb_second, PB_URB_OK, 10);
  assert_no_reply_pending (f); /* held until the first completes */

  pb_urb_complete (urb_out, PB_URB_OK, 512);
  recv_reply (f, PB_USBIP_DIR_OUT, &reply, payload, sizeof payload);
  g_assert_cmpuint (reply.seqnum, ==, out);
  g_assert_cmpuint (reply.u.ret_submit.actual_length, ==, 512);
  g_assert_cmpuint (pb_usbip_urb_payload_length (&reply), ==, 0);

  pb_urb_complete (urb_first, PB_URB_OK, 20);
  recv_reply (f, PB_USBIP_DIR_IN, &reply, payload, sizeof payload);
  g_assert_cmpuint (reply.seqnum, ==, first);
  g_assert_cmpuint (reply.u.ret_submit.actual_length, ==, 20);
  recv_reply (f, PB_USBIP_DIR_IN, &reply, payload, sizeof payload);
  g_assert_cmpuint (reply.seqnum, ==, second);
  g_assert_cmpuint (reply.u.ret_submit.actual_length, ==, 10);
}

/* The client vanishes with URBs at the device: each is cancelled, and once the device has
 * completed them all the session closes and the device is free for the next import. */
static void
test_close_with_pending (Fixture *f, gconstpointer data)
{
  PbUrb *urb;

  configure (f);
  send_submit (f, 1, PB_USBIP_DIR_IN, 512, NULL);
  send_submit (f, 1, PB_USBIP_DIR_IN, 512, NULL);
  send_submit (f, 2, PB_USBIP_DIR_OUT, 100, NULL);
  wait_for_held (f, 3);
  close (f->client_fd);
  f->client_fd = -1;
  while (f->controlled.cancels_seen < 3)
    g_main_context_iteration (NULL, TRUE);
  g_assert_true (pb_export_session_is_closed (f->session));
  g_assert_true (pb_device_is_busy (PB_DEVICE (f->device)));
  g_assert_false (f->closed);

  while ((urb = g_queue_pop_head (&f->controlled.held)) != NULL)
    pb_urb_complete (urb, PB_URB_ECONNRESET, 0);
  run_until (&f->closed);
  g_assert_false (pb_device_is_busy (PB_DEVICE (f->device)));
}

static void
test_malformed_ends_session (Fixture *f, gconstpointer data)
{
  guint8 garbage[PB_USBIP_URB_HEADER_SIZE];

  configure (f);
  send_submit (f, 1, PB_USBIP_DIR_IN, 512, NULL);
  wait_for_held (f, 1);
  memset (garbage, 0xee, sizeof garbage);
  send_all (f->client_fd, garbage, sizeof garbage);
  while (f->controlled.cancels_seen < 1)
    g_main_context_iteration (NULL, TRUE);
  g_assert_true (pb_export_session_is_closed (f->session));
  pb_urb_complete (g_queue_pop_head (&f->controlled.held), PB_URB_ECONNRESET, 0);
  run_until (&f->closed);
  g_assert_false (pb_device_is_busy (PB_DEVICE (f->device)));
}

static void
test_oversized_transfer_ends_session (Fixture *f, gconstpointer data)
{
  configure (f);
  send_submit (f, 1, PB_USBIP_DIR_IN, 0xffffffffu, NULL);
  run_until (&f->closed);
  g_assert_cmpuint (f->controlled.transfers_seen, ==, 0);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);

  g_test_add ("/unlink/completion-races-cancel", Fixture, NULL, fixture_setup, test_unlink_completion_races_cancel, fixture_teardown);
  g_test_add ("/unlink/after-completion", Fixture, NULL, fixture_setup, test_unlink_after_completion, fixture_teardown);
  g_test_add ("/unlink/cancelled-at-once", Fixture, NULL, fixture_setup, test_unlink_cancelled_at_once, fixture_teardown);
  g_test_add ("/unlink/burst-of-unknown", Fixture, NULL, fixture_setup, test_unlink_burst_of_unknown, fixture_teardown);
  g_test_add ("/unlink/newer-than-pending", Fixture, NULL, fixture_setup, test_unlink_newer_than_pending, fixture_teardown);
  g_test_add ("/unlink/finished-behind-pending", Fixture, NULL, fixture_setup, test_unlink_finished_behind_pending, fixture_teardown);
  g_test_add ("/session/order-per-endpoint", Fixture, NULL, fixture_setup, test_order_per_endpoint, fixture_teardown);
  g_test_add ("/session/close-with-pending", Fixture, NULL, fixture_setup, test_close_with_pending, fixture_teardown);
  g_test_add ("/session/malformed-ends-session", Fixture, NULL, fixture_setup, test_malformed_ends_session, fixture_teardown);
  g_test_add ("/session/oversized-transfer", Fixture, NULL, fixture_setup, test_oversized_transfer_ends_session, fixture_teardown);
  return g_test_run ();
}
