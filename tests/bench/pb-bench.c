/* plugboard-bench: figures for the full stack over loopback TCP, each beside a baseline run in
 * the same process. Prints; never asserts a time.
 *
 *   control: GET_DESCRIPTOR(device) round trips through PbRemoteDevice → TCP → PbServer →
 *            PbExportSession → PbVirtualDevice, p50/p99, against a bare TCP ping-pong of the
 *            same message sizes (48 bytes out, 48 + 18 back).
 *   bulk:    bulk IN from a source endpoint and bulk OUT to a sink endpoint with 1, 4 and 16
 *            URBs in flight, MB/s, against a bare TCP stream in the same process.
 */
#include <errno.h>
#include <gio/gio.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "pb-remote.h"
#include "pb-server.h"
#include "pb-virtual-device.h"

#define CONTROL_ROUNDS 20000
#define BULK_SECONDS 1.5

/* ---- the device under test: bulk source (IN 0x81) and sink (OUT 0x02) ---- */

static void
sink_source_transfer (PbVirtualDevice *device, PbUrb *urb, gpointer user_data)
{
  /* The source's data is whatever the buffer holds: the benchmark measures transport. */
  pb_urb_complete (urb, PB_URB_OK, urb->length);
}

static const PbVirtualDeviceOps sink_source_ops = { .transfer = sink_source_transfer };

static const guint8 device_descriptor[18] = {
  18, 1, 0x00, 0x02, 0xff, 0, 0, 64, 0x6b, 0x1d, 0x98, 0x01, 0x00, 0x01, 0, 0, 0, 1,
};
static const guint8 configuration[] = {
  9, 2, 9 + 9 + 7 + 7, 0, 1, 1, 0, 0x80, 50,
  9, 4, 0, 0, 2, 0xff, 0, 0, 0,
  7, 5, 0x81, 2, 0x00, 0x02, 0,
  7, 5, 0x02, 2, 0x00, 0x02, 0,
};

/* ---- server thread ---- */

typedef struct {
  GMainContext *context;
  GMainLoop *loop;
  PbServer *server;
  guint16 port;
  GMutex lock;
  GCond ready;
  gboolean started;
  PbExportSessionStats stats; /* of the last session, to check the client's byte counts */
  gboolean closed;
} ServerThread;

static void
on_session_closed (PbServer *server, PbExportSession *session, const GError *reason, gpointer user_data)
{
  ServerThread *st = user_data;

  g_mutex_lock (&st->lock);
  pb_export_session_get_stats (session, &st->stats);
  st->closed = TRUE;
  g_cond_signal (&st->ready);
  g_mutex_unlock (&st->lock);
}

static gpointer
server_thread_main (gpointer data)
{
  ServerThread *st = data;
  g_autoptr(GError) error = NULL;
  g_autoptr(PbVirtualDevice) device = pb_virtual_device_new (&sink_source_ops, NULL, NULL);

  g_main_context_push_thread_default (st->context);
  if (!pb_virtual_device_set_descriptors (device, PB_USBIP_SPEED_HIGH, device_descriptor, sizeof device_descriptor,
                                          configuration, sizeof configuration, &error))
    g_error ("descriptors: %s", error->message);
  st->server = pb_server_new ();
  g_signal_connect (st->server, "session-closed", G_CALLBACK (on_session_closed), st);
  if (!pb_server_add_device (st->server, PB_DEVICE (device), &error) ||
      !pb_server_listen (st->server, "127.0.0.1", 0, &error))
    g_error ("server: %s", error->message);
  g_mutex_lock (&st->lock);
  st->port = pb_server_get_port (st->server);
  st->started = TRUE;
  g_cond_signal (&st->ready);
  g_mutex_unlock (&st->lock);

  g_main_loop_run (st->loop);
  pb_server_stop (st->server);
  for (int i = 0; i < 100; i++)
    g_main_context_iteration (st->context, FALSE);
  g_clear_object (&st->server);
  g_main_context_pop_thread_default (st->context);
  return NULL;
}

/* ---- bare TCP baselines ---- */

typedef struct {
  int listen_fd;
  gsize request_size;
  gsize reply_size;
  gboolean stream; /* sink everything instead of ping-pong */
  gsize chunk;     /* read size when sinking: the writer's size, as the stack's reader uses */
} BareServer;

static int
tcp_listen_loopback (guint16 *port)
{
  struct sockaddr_in addr = { .sin_family = AF_INET, .sin_addr.s_addr = htonl (INADDR_LOOPBACK) };
  socklen_t len = sizeof addr;
  int fd = socket (AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

  if (fd < 0 || bind (fd, (struct sockaddr *) &addr, sizeof addr) < 0 || listen (fd, 4) < 0 ||
      getsockname (fd, (struct sockaddr *) &addr, &len) < 0)
    g_error ("bare listen: %s", g_strerror (errno));
  *port = ntohs (addr.sin_port);
  return fd;
}

static int
tcp_connect_loopback (guint16 port)
{
  struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons (port), .sin_addr.s_addr = htonl (INADDR_LOOPBACK) };
  int fd = socket (AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;

  if (fd < 0 || connect (fd, (struct sockaddr *) &addr, sizeof addr) < 0)
    g_error ("bare connect: %s", g_strerror (errno));
  setsockopt (fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

static gboolean
read_full (int fd, guint8 *buf, gsize len)
{
  while (len > 0)
    {
      gssize n = read (fd, buf, len);
      if (n <= 0)
        return FALSE;
      buf += n;
      len -= (gsize) n;
    }
  return TRUE;
}

static gboolean
write_full (int fd, const guint8 *buf, gsize len)
{
  while (len > 0)
    {
      gssize n = send (fd, buf, len, MSG_NOSIGNAL);
      if (n <= 0)
        return FALSE;
      buf += n;
      len -= (gsize) n;
    }
  return TRUE;
}

static gpointer
bare_server_main (gpointer data)
{
  BareServer *bs = data;
  int fd = accept (bs->listen_fd, NULL, NULL);
  int one = 1;
  g_autofree guint8 *buf = g_malloc0 (MAX (bs->request_size, bs->reply_size) + (1 << 20));

  setsockopt (fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (bs->stream)
    while (read (fd, buf, bs->chunk) > 0)
      ;
  else
    while (read_full (fd, buf, bs->request_size) && write_full (fd, buf, bs->reply_size))
      ;
  close (fd);
  return NULL;
}

static int
compare_gint64 (gconstpointer a, gconstpointer b)
{
  gint64 x = *(const gint64 *) a, y = *(const gint64 *) b;
  return x < y ? -1 : x > y;
}

typedef struct {
  double p50_us, p99_us;
} Latency;

static Latency
latency_of (gint64 *samples, guint n)
{
  qsort (samples, n, sizeof samples[0], compare_gint64);
  return (Latency) { samples[n / 2] / 1000.0, samples[(n * 99) / 100] / 1000.0 };
}

/* Bare TCP ping-pong and the full stack alternate round by round, so that whatever else the
 * machine is doing weighs on both figures alike. */
typedef struct {
  Latency bare;
  Latency stack;
} ControlFigures;

static gint64
elapsed_ns (const struct timespec *a, const struct timespec *b)
{
  return (b->tv_sec - a->tv_sec) * 1000000000LL + (b->tv_nsec - a->tv_nsec);
}

static ControlFigures
control_round_trips (PbRemoteDevice *device)
{
  BareServer bs = { .request_size = PB_USBIP_URB_HEADER_SIZE, .reply_size = PB_USBIP_URB_HEADER_SIZE + 18 };
  g_autofree gint64 *bare = g_new (gint64, CONTROL_ROUNDS);
  g_autofree gint64 *stack = g_new (gint64, CONTROL_ROUNDS);
  guint8 buf[256] = { 0 };
  ControlFigures figures;
  guint16 port;
  GThread *thread;
  int fd;

  bs.listen_fd = tcp_listen_loopback (&port);
  thread = g_thread_new ("bare-ping-pong", bare_server_main, &bs);
  fd = tcp_connect_loopback (port);
  for (guint i = 0; i < CONTROL_ROUNDS; i++)
    {
      g_autoptr(GError) error = NULL;
      guint32 actual = 0;
      struct timespec a, b, c;

      clock_gettime (CLOCK_MONOTONIC, &a);
      if (!write_full (fd, buf, bs.request_size) || !read_full (fd, buf, bs.reply_size))
        g_error ("bare ping-pong failed");
      clock_gettime (CLOCK_MONOTONIC, &b);
      if (!pb_remote_device_control (device, 0x80, PB_USB_REQ_GET_DESCRIPTOR, PB_USB_DT_DEVICE << 8, 0, buf, 18,
                                     &actual, 5000, NULL, &error) ||
          actual != 18)
        g_error ("GET_DESCRIPTOR failed: %s", error != NULL ? error->message : "short");
      clock_gettime (CLOCK_MONOTONIC, &c);
      bare[i] = elapsed_ns (&a, &b);
      stack[i] = elapsed_ns (&b, &c);
    }
  close (fd);
  g_thread_join (thread);
  close (bs.listen_fd);
  figures.bare = latency_of (bare, CONTROL_ROUNDS);
  figures.stack = latency_of (stack, CONTROL_ROUNDS);
  return figures;
}

static double
bare_stream_mbps (gsize chunk)
{
  BareServer bs = { .stream = TRUE, .chunk = chunk };
  guint16 port;
  GThread *thread;
  int fd;
  g_autofree guint8 *buf = g_malloc0 (chunk);
  gint64 start, bytes = 0;

  bs.listen_fd = tcp_listen_loopback (&port);
  thread = g_thread_new ("bare-stream", bare_server_main, &bs);
  fd = tcp_connect_loopback (port);
  start = g_get_monotonic_time ();
  while (g_get_monotonic_time () - start < BULK_SECONDS * G_USEC_PER_SEC)
    {
      if (!write_full (fd, buf, chunk))
        g_error ("bare stream failed");
      bytes += chunk;
    }
  double seconds = (g_get_monotonic_time () - start) / (double) G_USEC_PER_SEC;
  close (fd);
  g_thread_join (thread);
  close (bs.listen_fd);
  return bytes / seconds / 1e6;
}

/* ---- the full stack ---- */

typedef struct {
  PbRemoteDevice *device;
  PbRemoteUrbRequest request;
  guint64 bytes;
  gboolean stop;
  guint outstanding;
  gint32 failed_status;
} BulkRun;

static void on_bulk_done (PbRemoteDevice *device, const PbRemoteUrbResult *result, gpointer user_data);

static void
bulk_submit_one (BulkRun *run)
{
  g_autoptr(GError) error = NULL;

  if (pb_remote_device_submit (run->device, &run->request, on_bulk_done, run, &error) == 0)
    g_error ("submit: %s", error->message);
  run->outstanding++;
}

static void
on_bulk_done (PbRemoteDevice *device, const PbRemoteUrbResult *result, gpointer user_data)
{
  BulkRun *run = user_data;

  run->outstanding--;
  if (result->status != 0)
    run->failed_status = result->status;
  run->bytes += result->actual_length;
  if (!run->stop && run->failed_status == 0)
    bulk_submit_one (run);
}

static guint64 client_bytes_in, client_bytes_out;

static double
stack_bulk_mbps (PbRemoteDevice *device, PbUsbipDirection direction, guint in_flight, guint32 urb_size)
{
  BulkRun run = { .device = device };
  g_autofree guint8 *buffers = g_malloc0 ((gsize) urb_size);
  gint64 start;

  run.request.ep = direction == PB_USBIP_DIR_IN ? 1 : 2;
  run.request.direction = direction;
  /* Every URB shares one buffer: the payload's content is not what is measured. */
  run.request.buffer = buffers;
  run.request.length = urb_size;
  for (guint i = 0; i < in_flight; i++)
    bulk_submit_one (&run);
  start = g_get_monotonic_time ();
  while (g_get_monotonic_time () - start < BULK_SECONDS * G_USEC_PER_SEC && run.failed_status == 0)
    g_main_context_iteration (NULL, TRUE);
  double seconds = (g_get_monotonic_time () - start) / (double) G_USEC_PER_SEC;
  guint64 bytes = run.bytes;
  run.stop = TRUE;
  while (run.outstanding > 0)
    g_main_context_iteration (NULL, TRUE);
  if (run.failed_status != 0)
    g_error ("bulk transfer failed with status %d", run.failed_status);
  if (direction == PB_USBIP_DIR_IN)
    client_bytes_in += run.bytes;
  else
    client_bytes_out += run.bytes;
  return bytes / seconds / 1e6;
}

int
main (int argc, char **argv)
{
  ServerThread st = { 0 };
  GThread *thread;
  g_autoptr(GError) error = NULL;
  g_autoptr(PbRemoteDevice) device = NULL;
  ControlFigures control;
  static const guint in_flight[] = { 1, 4, 16 };
  guint32 urb_size = 256 * 1024;

  if (argc > 1)
    urb_size = (guint32) g_ascii_strtoull (argv[1], NULL, 10) * 1024;

  st.context = g_main_context_new ();
  st.loop = g_main_loop_new (st.context, FALSE);
  g_mutex_init (&st.lock);
  g_cond_init (&st.ready);
  thread = g_thread_new ("server", server_thread_main, &st);
  g_mutex_lock (&st.lock);
  while (!st.started)
    g_cond_wait (&st.ready, &st.lock);
  g_mutex_unlock (&st.lock);

  device = pb_remote_import ("127.0.0.1", st.port, "100-1", NULL, &error);
  if (device == NULL)
    g_error ("import: %s", error->message);
  if (!pb_remote_device_control (device, 0x00, PB_USB_REQ_SET_CONFIGURATION, 1, 0, NULL, 0, NULL, 5000, NULL, &error))
    g_error ("SET_CONFIGURATION: %s", error->message);

  printf ("plugboard-bench: loopback TCP, server on its own thread, client on the main thread\n\n");
  printf ("control transfer round trip (GET_DESCRIPTOR device, %d rounds)\n", CONTROL_ROUNDS);
  control = control_round_trips (device);
  printf ("  bare TCP ping-pong 48/66 bytes   p50 %7.1f us   p99 %7.1f us\n", control.bare.p50_us, control.bare.p99_us);
  printf ("  plugboard full stack             p50 %7.1f us   p99 %7.1f us\n", control.stack.p50_us,
          control.stack.p99_us);
  printf ("  ratio (stack / bare)             p50 %7.2fx      p99 %7.2fx\n\n", control.stack.p50_us / control.bare.p50_us,
          control.stack.p99_us / control.bare.p99_us);

  printf ("bulk throughput, %u KiB URBs, %.1f s per figure\n", urb_size / 1024, BULK_SECONDS);
  /* The baseline runs before and after the stack's figures, to show the drift. */
  double bare_mbps = bare_stream_mbps (urb_size);
  for (guint i = 0; i < G_N_ELEMENTS (in_flight); i++)
    {
      double in_mbps = stack_bulk_mbps (device, PB_USBIP_DIR_IN, in_flight[i], urb_size);
      double out_mbps = stack_bulk_mbps (device, PB_USBIP_DIR_OUT, in_flight[i], urb_size);
      printf ("  %2u in flight   IN %8.0f MB/s (%.2fx bare)   OUT %8.0f MB/s (%.2fx bare)\n", in_flight[i],
              in_mbps, in_mbps / bare_mbps, out_mbps, out_mbps / bare_mbps);
    }
  {
    double bare_after = bare_stream_mbps (urb_size);
    printf ("  bare TCP stream, %u KiB writes   %8.0f MB/s before, %.0f MB/s after (ratios above use before)\n",
            urb_size / 1024, bare_mbps, bare_after);
  }

  pb_remote_device_close (device);
  /* The server must have moved exactly the bytes the client counted. */
  g_mutex_lock (&st.lock);
  while (!st.closed)
    g_cond_wait (&st.ready, &st.lock);
  g_mutex_unlock (&st.lock);
  printf ("  check: server sent %" G_GUINT64_FORMAT " bulk IN bytes (client received %" G_GUINT64_FORMAT
          "), took %" G_GUINT64_FORMAT " bulk OUT bytes (client sent %" G_GUINT64_FORMAT ")\n",
          st.stats.bytes_from_device - (guint64) 18 * CONTROL_ROUNDS, client_bytes_in, st.stats.bytes_to_device, client_bytes_out);
  if (st.stats.bytes_from_device - (guint64) 18 * CONTROL_ROUNDS != client_bytes_in || st.stats.bytes_to_device != client_bytes_out)
    g_error ("byte counts disagree");
  g_main_loop_quit (st.loop);
  g_thread_join (thread);
  g_main_loop_unref (st.loop);
  g_main_context_unref (st.context);
  return 0;
}
