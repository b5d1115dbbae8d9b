#include "pb-test-util.h"

#include <glib/gstdio.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "pb-usbip.h"

const char *
pb_test_plugboard_path (void)
{
  const char *path = g_getenv ("PB_PLUGBOARD_BIN");
  g_assert_nonnull (path);
  return path;
}

char *
pb_test_make_scratch_dir (void)
{
  g_autoptr(GError) error = NULL;
  char *dir = g_dir_make_tmp ("plugboard-test-XXXXXX", &error);
  g_assert_no_error (error);
  return dir;
}

void
pb_test_remove_tree (const char *path)
{
  g_autoptr(GDir) dir = g_dir_open (path, 0, NULL);
  const char *name;
  if (dir != NULL)
    while ((name = g_dir_read_name (dir)) != NULL)
      {
        g_autofree char *child = g_build_filename (path, name, NULL);
        if (g_file_test (child, G_FILE_TEST_IS_DIR) && !g_file_test (child, G_FILE_TEST_IS_SYMLINK))
          pb_test_remove_tree (child);
        else
          g_unlink (child);
      }
  g_rmdir (path);
}

/* ---- a `plugboard serve` child process ---- */

#define PB_TEST_SERVER_START_TIMEOUT_MS 10000
#define PB_TEST_SERVER_STOP_TIMEOUT_MS 10000

struct _PbTestServer {
  GSubprocess *process;
  GPid pid;
  GThread *reader;
  GMutex lock;
  GCond cond;
  GPtrArray *lines;      /* char *, guarded by lock */
  gboolean eof;          /* guarded by lock */
  guint16 port;
  GPtrArray *busids;
  GPtrArray *descriptions;
  char *pty_path;
  gboolean stopped;
};

static void
server_child_setup (gpointer user_data)
{
  pid_t parent = GPOINTER_TO_INT (user_data);

  /* Never outlive a test that crashed or failed an assertion. */
  prctl (PR_SET_PDEATHSIG, SIGKILL);
  if (getppid () != parent)
    _exit (1);
}

static gpointer
server_reader_thread (gpointer user_data)
{
  PbTestServer *server = user_data;
  g_autoptr(GDataInputStream) input =
    g_data_input_stream_new (g_subprocess_get_stdout_pipe (server->process));

  for (;;)
    {
      char *line = g_data_input_stream_read_line (input, NULL, NULL, NULL);
      g_mutex_lock (&server->lock);
      if (line == NULL)
        server->eof = TRUE;
      else
        g_ptr_array_add (server->lines, line);
      g_cond_broadcast (&server->cond);
      g_mutex_unlock (&server->lock);
      if (line == NULL)
        break;
    }
  return NULL;
}

/* Called with lock held. */
static guint
server_count_locked (PbTestServer *server, const char *prefix)
{
  guint n = 0;

  for (guint i = 0; i < server->lines->len; i++)
    if (g_str_has_prefix (server->lines->pdata[i], prefix))
      n++;
  return n;
}

guint
pb_test_server_count_lines (PbTestServer *server, const char *prefix)
{
  guint n;

  g_mutex_lock (&server->lock);
  n = server_count_locked (server, prefix);
  g_mutex_unlock (&server->lock);
  return n;
}

gboolean
pb_test_server_wait_lines (PbTestServer *server, const char *prefix, guint count, guint timeout_ms)
{
  gint64 deadline = g_get_monotonic_time () + (gint64) timeout_ms * 1000;
  gboolean found;

  g_mutex_lock (&server->lock);
  while (!(found = server_count_locked (server, prefix) >= count) && !server->eof)
    if (!g_cond_wait_until (&server->cond, &server->lock, deadline))
      {
        found = server_count_locked (server, prefix) >= count;
        break;
      }
  g_mutex_unlock (&server->lock);
  return found;
}

char *
pb_test_server_dup_output (PbTestServer *server)
{
  GString *out = g_string_new (NULL);

  g_mutex_lock (&server->lock);
  for (guint i = 0; i < server->lines->len; i++)
    g_string_append_printf (out, "%s%s", i > 0 ? "\n" : "", (const char *) server->lines->pdata[i]);
  g_mutex_unlock (&server->lock);
  return g_string_free (out, FALSE);
}

/* The first line starting with prefix, copied, or NULL. */
static char *
server_dup_line (PbTestServer *server, const char *prefix, guint nth)
{
  char *found = NULL;

  g_mutex_lock (&server->lock);
  for (guint i = 0; i < server->lines->len && found == NULL; i++)
    if (g_str_has_prefix (server->lines->pdata[i], prefix) && nth-- == 0)
      found = g_strdup (server->lines->pdata[i]);
  g_mutex_unlock (&server->lock);
  return found;
}

static void
server_fail_start (PbTestServer *server, const char *what)
{
  g_autofree char *output = pb_test_server_dup_output (server);
  g_test_message ("plugboard serve said:\n%s", output);
  g_error ("plugboard serve: %s", what);
}

PbTestServer *
pb_test_server_startv (const char *const *args)
{
  g_autoptr(GSubprocessLauncher) launcher = NULL;
  g_autoptr(GPtrArray) argv = g_ptr_array_new ();
  GSubprocessFlags flags = G_SUBPROCESS_FLAGS_STDOUT_PIPE;
  g_autoptr(GError) error = NULL;
  g_autofree char *listening = NULL;
  PbTestServer *server;
  guint n_virtual = 0;
  guint port = 0;

  g_ptr_array_add (argv, (gpointer) pb_test_plugboard_path ());
  g_ptr_array_add (argv, (gpointer) "serve");
  g_ptr_array_add (argv, (gpointer) "--listen");
  g_ptr_array_add (argv, (gpointer) "127.0.0.1");
  g_ptr_array_add (argv, (gpointer) "--port");
  g_ptr_array_add (argv, (gpointer) "0");
  for (guint i = 0; args != NULL && args[i] != NULL; i++)
    {
      if (g_str_equal (args[i], "--virtual") || g_str_has_prefix (args[i], "--virtual="))
        n_virtual++;
      if (g_str_equal (args[i], "--type-stdin"))
        flags |= G_SUBPROCESS_FLAGS_STDIN_PIPE; /* see pb_test_server_write_stdin */
      g_ptr_array_add (argv, (gpointer) args[i]);
    }
  g_ptr_array_add (argv, NULL);
  launcher = g_subprocess_launcher_new (flags);

  server = g_new0 (PbTestServer, 1);
  g_mutex_init (&server->lock);
  g_cond_init (&server->cond);
  server->lines = g_ptr_array_new_with_free_func (g_free);
  server->busids = g_ptr_array_new_with_free_func (g_free);
  server->descriptions = g_ptr_array_new_with_free_func (g_free);

  g_subprocess_launcher_set_child_setup (launcher, server_child_setup, GINT_TO_POINTER (getpid ()), NULL);
  server->process = g_subprocess_launcher_spawnv (launcher, (const char *const *) argv->pdata, &error);
  g_assert_no_error (error);
  server->pid = (GPid) atoi (g_subprocess_get_identifier (server->process));
  server->reader = g_thread_new ("plugboard-serve-stdout", server_reader_thread, server);

  if (!pb_test_server_wait_lines (server, "listening on ", 1, PB_TEST_SERVER_START_TIMEOUT_MS))
    server_fail_start (server, "no “listening on” line");
  listening = server_dup_line (server, "listening on ", 0);
  {
    const char *p = strstr (listening, " port ");
    if (p == NULL || sscanf (p, " port %u", &port) != 1 || port == 0 || port > 65535)
      server_fail_start (server, "cannot read the port");
  }
  server->port = (guint16) port;

  if (n_virtual == 0)
    n_virtual = 3;
  if (!pb_test_server_wait_lines (server, "exporting ", n_virtual, PB_TEST_SERVER_START_TIMEOUT_MS))
    server_fail_start (server, "fewer “exporting” lines than devices");
  for (guint i = 0; i < n_virtual; i++)
    {
      g_autofree char *line = server_dup_line (server, "exporting ", i);
      const char *busid = line + strlen ("exporting ");
      const char *colon = strstr (busid, ": ");
      const char *pty;

      if (colon == NULL)
        server_fail_start (server, "malformed “exporting” line");
      g_ptr_array_add (server->busids, g_strndup (busid, colon - busid));
      g_ptr_array_add (server->descriptions, g_strdup (colon + 2));
      pty = strstr (colon, "pty /dev/");
      if (pty != NULL && server->pty_path == NULL)
        {
          pty += strlen ("pty ");
          server->pty_path = g_strndup (pty, strcspn (pty, " ,;)"));
        }
    }
  return server;
}

PbTestServer *
pb_test_server_start (const char *first_arg, ...)
{
  g_autoptr(GPtrArray) args = g_ptr_array_new ();
  va_list ap;

  va_start (ap, first_arg);
  for (const char *arg = first_arg; arg != NULL; arg = va_arg (ap, const char *))
    g_ptr_array_add (args, (gpointer) arg);
  va_end (ap);
  g_ptr_array_add (args, NULL);
  return pb_test_server_startv ((const char *const *) args->pdata);
}

void
pb_test_server_write_stdin (PbTestServer *server, const char *text)
{
  GOutputStream *in = g_subprocess_get_stdin_pipe (server->process);
  g_autoptr(GError) error = NULL;

  g_assert_nonnull (in);
  g_assert_true (g_output_stream_write_all (in, text, strlen (text), NULL, NULL, &error));
  g_assert_no_error (error);
  g_assert_true (g_output_stream_flush (in, NULL, &error));
  g_assert_no_error (error);
}

guint16
pb_test_server_get_port (PbTestServer *server)
{
  return server->port;
}

GPid
pb_test_server_get_pid (PbTestServer *server)
{
  return server->pid;
}

guint
pb_test_server_get_n_devices (PbTestServer *server)
{
  return server->busids->len;
}

const char *
pb_test_server_get_busid (PbTestServer *server, guint index)
{
  g_assert_cmpuint (index, <, server->busids->len);
  return server->busids->pdata[index];
}

const char *
pb_test_server_get_description (PbTestServer *server, guint index)
{
  g_assert_cmpuint (index, <, server->descriptions->len);
  return server->descriptions->pdata[index];
}

const char *
pb_test_server_get_pty_path (PbTestServer *server)
{
  return server->pty_path;
}

gboolean
pb_test_server_is_running (PbTestServer *server)
{
  return !server->stopped && g_subprocess_get_identifier (server->process) != NULL;
}

guint64
pb_test_server_get_rss_kib (PbTestServer *server)
{
  g_autofree char *path = g_strdup_printf ("/proc/%d/status", (int) server->pid);
  g_autofree char *contents = NULL;
  g_autoptr(GError) error = NULL;
  const char *line;

  g_file_get_contents (path, &contents, NULL, &error);
  g_assert_no_error (error);
  line = strstr (contents, "\nVmRSS:");
  g_assert_nonnull (line);
  return g_ascii_strtoull (line + strlen ("\nVmRSS:"), NULL, 10);
}

static void
on_server_waited (GObject *source, GAsyncResult *result, gpointer user_data)
{
  gboolean *done = user_data;

  g_subprocess_wait_finish (G_SUBPROCESS (source), result, NULL);
  *done = TRUE;
}

static gboolean
on_server_wait_timeout (gpointer user_data)
{
  gboolean *timed_out = user_data;

  *timed_out = TRUE;
  return G_SOURCE_REMOVE;
}

gboolean
pb_test_server_stop (PbTestServer *server)
{
  g_autoptr(GMainContext) context = NULL;
  GSource *timeout;
  gboolean done = FALSE;
  gboolean timed_out = FALSE;
  gboolean clean;

  if (server->stopped)
    return g_subprocess_get_if_exited (server->process) && g_subprocess_get_exit_status (server->process) == 0;
  server->stopped = TRUE;

  context = g_main_context_new ();
  g_main_context_push_thread_default (context);
  g_subprocess_send_signal (server->process, SIGTERM);
  g_subprocess_wait_async (server->process, NULL, on_server_waited, &done);
  timeout = g_timeout_source_new (PB_TEST_SERVER_STOP_TIMEOUT_MS);
  g_source_set_callback (timeout, on_server_wait_timeout, &timed_out, NULL);
  g_source_attach (timeout, context);
  while (!done)
    {
      if (timed_out)
        {
          g_test_message ("plugboard serve (pid %d) did not exit within %d ms of SIGTERM: killing it",
                          (int) server->pid, PB_TEST_SERVER_STOP_TIMEOUT_MS);
          g_subprocess_force_exit (server->process);
          timed_out = FALSE;
          g_source_destroy (timeout);
          g_source_unref (timeout);
          timeout = NULL;
        }
      g_main_context_iteration (context, TRUE);
    }
  if (timeout != NULL)
    {
      g_source_destroy (timeout);
      g_source_unref (timeout);
    }
  g_main_context_pop_thread_default (context);

  /* The pipe reaches its end once the process is gone. */
  g_thread_join (server->reader);
  server->reader = NULL;

  clean = g_subprocess_get_if_exited (server->process) && g_subprocess_get_exit_status (server->process) == 0;
  if (!clean)
    g_test_message ("plugboard serve ended %s %d", g_subprocess_get_if_signaled (server->process) ? "by signal" : "with status",
                    g_subprocess_get_if_signaled (server->process) ? g_subprocess_get_term_sig (server->process)
                                                                   : g_subprocess_get_exit_status (server->process));
  return clean;
}

void
pb_test_server_free (PbTestServer *server)
{
  if (server == NULL)
    return;
  pb_test_server_stop (server);
  g_object_unref (server->process);
  g_ptr_array_unref (server->lines);
  g_ptr_array_unref (server->busids);
  g_ptr_array_unref (server->descriptions);
  g_free (server->pty_path);
  g_mutex_clear (&server->lock);
  g_cond_clear (&server->cond);
  g_free (server);
}

/* ---- raw TCP clients ---- */

static int
remaining_ms (gint64 deadline)
{
  gint64 left = deadline - g_get_monotonic_time ();
  return left <= 0 ? 0 : (int) MIN ((left + 999) / 1000, G_MAXINT);
}

int
pb_test_raw_connect (guint16 port)
{
  struct sockaddr_in address = { .sin_family = AF_INET, .sin_port = htons (port) };
  int one = 1;
  int fd;

  address.sin_addr.s_addr = htonl (INADDR_LOOPBACK);
  fd = socket (AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  g_assert_cmpint (fd, >=, 0);
  if (connect (fd, (struct sockaddr *) &address, sizeof address) != 0)
    g_error ("connect to 127.0.0.1:%u: %s", port, g_strerror (errno));
  setsockopt (fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

gboolean
pb_test_raw_send (int fd, const void *data, gsize len, guint timeout_ms)
{
  gint64 deadline = g_get_monotonic_time () + (gint64) timeout_ms * 1000;
  gsize sent = 0;

  while (sent < len)
    {
      struct pollfd pfd = { .fd = fd, .events = POLLOUT };
      gssize n;
      int r = poll (&pfd, 1, remaining_ms (deadline));

      if (r < 0 && errno == EINTR)
        continue;
      if (r <= 0)
        return FALSE;
      n = send (fd, (const guint8 *) data + sent, len - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0)
        sent += (gsize) n;
      else if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK))
        continue;
      else
        return FALSE;
    }
  return TRUE;
}

gssize
pb_test_raw_recv (int fd, void *buf, gsize len, guint timeout_ms)
{
  gint64 deadline = g_get_monotonic_time () + (gint64) timeout_ms * 1000;
  gsize got = 0;

  while (got < len)
    {
      struct pollfd pfd = { .fd = fd, .events = POLLIN };
      gssize n;
      int r = poll (&pfd, 1, remaining_ms (deadline));

      if (r < 0 && errno == EINTR)
        continue;
      if (r <= 0)
        return -1;
      n = recv (fd, (guint8 *) buf + got, len - got, MSG_DONTWAIT);
      if (n > 0)
        got += (gsize) n;
      else if (n == 0)
        break;
      else if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
        continue;
      else
        break; /* ECONNRESET and friends: the peer is gone */
    }
  return (gssize) got;
}

gboolean
pb_test_raw_wait_closed (int fd, guint timeout_ms, gsize *n_discarded)
{
  gint64 deadline = g_get_monotonic_time () + (gint64) timeout_ms * 1000;
  guint8 scratch[16384];
  gsize total = 0;
  gboolean closed = FALSE;

  for (;;)
    {
      struct pollfd pfd = { .fd = fd, .events = POLLIN };
      gssize n;
      int r = poll (&pfd, 1, remaining_ms (deadline));

      if (r < 0 && errno == EINTR)
        continue;
      if (r <= 0)
        break;
      n = recv (fd, scratch, sizeof scratch, MSG_DONTWAIT);
      if (n > 0)
        total += (gsize) n;
      else if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK))
        continue;
      else
        {
          closed = TRUE;
          break;
        }
    }
  if (n_discarded != NULL)
    *n_discarded = total;
  return closed;
}

int
pb_test_raw_import (guint16 port, const char *busid, gint *status_out)
{
  guint8 request[PB_USBIP_REQ_IMPORT_SIZE];
  guint8 reply[PB_USBIP_OP_HEADER_SIZE + PB_USBIP_DEVICE_RECORD_SIZE];
  g_autoptr(GError) error = NULL;
  PbUsbipDeviceRecord record;
  int fd = pb_test_raw_connect (port);
  guint32 status;

  if (status_out != NULL)
    *status_out = -1;
  g_assert_true (pb_usbip_req_import_encode (request, busid, &error));
  g_assert_no_error (error);
  if (!pb_test_raw_send (fd, request, sizeof request, 5000) ||
      pb_test_raw_recv (fd, reply, PB_USBIP_OP_HEADER_SIZE, 10000) != PB_USBIP_OP_HEADER_SIZE)
    {
      close (fd);
      return -1;
    }
  g_assert_cmphex (pb_read_be16 (reply), ==, PB_USBIP_VERSION);
  g_assert_cmphex (pb_read_be16 (reply + 2), ==, PB_USBIP_OP_REP_IMPORT);
  status = pb_read_be32 (reply + 4);
  if (status_out != NULL)
    *status_out = (gint) status;
  if (status != PB_USBIP_ST_OK)
    {
      close (fd);
      return -1;
    }
  g_assert_cmpint (pb_test_raw_recv (fd, reply + PB_USBIP_OP_HEADER_SIZE, PB_USBIP_DEVICE_RECORD_SIZE, 10000), ==,
                   PB_USBIP_DEVICE_RECORD_SIZE);
  g_assert_true (pb_usbip_device_record_decode (reply + PB_USBIP_OP_HEADER_SIZE, PB_USBIP_DEVICE_RECORD_SIZE,
                                                &record, &error));
  g_assert_no_error (error);
  g_assert_cmpstr (record.busid, ==, busid);
  return fd;
}

/* ---- descriptors ---- */

guint8
pb_test_find_endpoint (const guint8 *config, gsize len, guint8 interface_class, guint8 transfer_type, gboolean in)
{
  gboolean in_interface = FALSE;
  gboolean seen_interface = FALSE;

  for (gsize pos = 0; pos + 2 <= len && config[pos] >= 2 && pos + config[pos] <= len; pos += config[pos])
    {
      const guint8 *d = config + pos;

      if (d[1] == 0x04 && d[0] >= 9)
        {
          /* Only the first interface of that class (its alternate setting 0). */
          in_interface = !seen_interface && d[5] == interface_class && d[3] == 0;
          if (in_interface)
            seen_interface = TRUE;
        }
      else if (d[1] == 0x05 && d[0] >= 7 && in_interface && (d[3] & 0x03) == transfer_type &&
               ((d[2] & 0x80) != 0) == (in != FALSE))
        return d[2];
    }
  return 0;
}

gint
pb_test_find_interface (const guint8 *config, gsize len, guint8 interface_class)
{
  for (gsize pos = 0; pos + 2 <= len && config[pos] >= 2 && pos + config[pos] <= len; pos += config[pos])
    if (config[pos + 1] == 0x04 && config[pos] >= 9 && config[pos + 5] == interface_class)
      return config[pos + 2];
  return -1;
}

/* ---- driving a PbDevice directly ---- */

static void
driver_on_complete (PbUrb *urb, gpointer user_data)
{
  PbTestDriver *driver = user_data;
  g_queue_push_tail (&driver->completed, urb);
}

void
pb_test_driver_init (PbTestDriver *driver, PbDevice *device)
{
  memset (driver, 0, sizeof *driver);
  driver->device = device;
  driver->next_seqnum = 1;
}

PbUrb *
pb_test_driver_urb_new (PbTestDriver *driver, guint ep, PbUsbipDirection direction, guint32 length)
{
  PbUrb *urb = g_new0 (PbUrb, 1);

  urb->seqnum = driver->next_seqnum++;
  urb->ep = ep;
  urb->direction = direction;
  urb->type = pb_device_get_endpoint_type (driver->device, ep, direction);
  urb->length = length;
  urb->buffer = g_malloc0 (length + 1);
  urb->complete_func = driver_on_complete;
  urb->complete_data = driver;
  return urb;
}

void
pb_test_urb_free (PbUrb *urb)
{
  g_free (urb->buffer);
  g_free (urb);
}

PbUrb *
pb_test_driver_take (PbTestDriver *driver, PbUrb *expected)
{
  g_assert_cmpuint (driver->completed.length, >=, 1);
  g_assert_true (g_queue_pop_head (&driver->completed) == expected);
  return expected;
}

PbUrb *
pb_test_driver_control (PbTestDriver *driver, guint8 request_type, guint8 request, guint16 value, guint16 index,
                        guint16 length, const guint8 *out_data)
{
  PbUrb *urb = pb_test_driver_urb_new (driver, 0, (request_type & 0x80) ? PB_USBIP_DIR_IN : PB_USBIP_DIR_OUT, length);
  guint8 setup[8] = { request_type, request, value & 0xff, value >> 8, index & 0xff, index >> 8,
                      length & 0xff, length >> 8 };

  memcpy (urb->setup, setup, 8);
  if (out_data != NULL)
    memcpy (urb->buffer, out_data, length);
  pb_device_submit (driver->device, urb);
  g_assert_cmpuint (driver->completed.length, ==, 1);
  return pb_test_driver_take (driver, urb);
}

void
pb_test_driver_expect_control (PbTestDriver *driver, guint8 request_type, guint8 request, guint16 value,
                               guint16 index, guint16 length, const guint8 *out_data, gint32 status,
                               const guint8 *data, guint32 data_len)
{
  PbUrb *urb = pb_test_driver_control (driver, request_type, request, value, index, length, out_data);

  g_assert_cmpint (urb->status, ==, status);
  g_assert_cmpuint (urb->actual_length, ==, data_len);
  if (data != NULL)
    g_assert_cmpmem (urb->buffer, urb->actual_length, data, data_len);
  pb_test_urb_free (urb);
}
