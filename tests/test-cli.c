/* The `plugboard` command line as a user runs it: the built binary in subprocesses, its exit
 * codes and output; plus the usb.ids reader that `list` and `probe` name things with. */
#include <netinet/in.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "pb-error.h"
#include "pb-test-util.h"
#include "pb-usb-ids.h"
#include "pb-usbip.h"
#include "pb-virtual-device.h"

/* ---- running the binary ---- */

typedef struct {
  int status;  /* exit status; -1 when killed by a signal */
  char *out;
  char *err;
} Run;

static void
run_clear (Run *run)
{
  g_clear_pointer (&run->out, g_free);
  g_clear_pointer (&run->err, g_free);
}
G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC (Run, run_clear)

static char *
bytes_to_string (GBytes *bytes)
{
  gsize len = 0;
  const char *data = bytes != NULL ? g_bytes_get_data (bytes, &len) : NULL;
  return g_strndup (data != NULL ? data : "", len);
}

/* src/cli/meson.build builds the binary only once all of its sources exist; until then the
 * tests that run it skip (and say so) rather than fail. */
static gboolean
have_plugboard (void)
{
  if (g_file_test (pb_test_plugboard_path (), G_FILE_TEST_IS_EXECUTABLE))
    return TRUE;
  g_test_skip ("plugboard is not built in this tree");
  return FALSE;
}

typedef void (*TestFunc) (void);

static void
with_plugboard (gconstpointer data)
{
  TestFunc func = (TestFunc) data;

  if (have_plugboard ())
    func ();
}

/* Runs plugboard with the NULL-terminated arguments and waits for it. */
static void
run_plugboard (Run *run, const char *first_arg, ...)
{
  g_autoptr(GSubprocessLauncher) launcher =
    g_subprocess_launcher_new (G_SUBPROCESS_FLAGS_STDOUT_PIPE | G_SUBPROCESS_FLAGS_STDERR_PIPE);
  g_autoptr(GPtrArray) argv = g_ptr_array_new ();
  g_autoptr(GSubprocess) process = NULL;
  g_autoptr(GBytes) out = NULL;
  g_autoptr(GBytes) err = NULL;
  g_autoptr(GError) error = NULL;
  g_autofree char *command = NULL;
  va_list args;

  g_ptr_array_add (argv, (gpointer) pb_test_plugboard_path ());
  va_start (args, first_arg);
  for (const char *arg = first_arg; arg != NULL; arg = va_arg (args, const char *))
    g_ptr_array_add (argv, (gpointer) arg);
  va_end (args);
  g_ptr_array_add (argv, NULL);

  /* Untranslated messages, whatever the machine's locale. */
  g_subprocess_launcher_setenv (launcher, "LC_ALL", "C.UTF-8", TRUE);
  process = g_subprocess_launcher_spawnv (launcher, (const char *const *) argv->pdata, &error);
  g_assert_no_error (error);
  g_subprocess_communicate (process, NULL, NULL, &out, &err, &error);
  g_assert_no_error (error);

  run->status = g_subprocess_get_if_exited (process) ? g_subprocess_get_exit_status (process) : -1;
  run->out = bytes_to_string (out);
  run->err = bytes_to_string (err);
  command = g_strjoinv (" ", (char **) argv->pdata);
  g_test_message ("%s → exit %d\n--- stdout ---\n%s--- stderr ---\n%s", command, run->status, run->out, run->err);
}

#define assert_contains(haystack, needle) \
  G_STMT_START { \
    if (strstr ((haystack), (needle)) == NULL) \
      g_error ("“%s” not found in:\n%s", (needle), (haystack)); \
  } G_STMT_END

/* A TCP port on 127.0.0.1 that refuses connections for as long as the socket lives: bound,
 * never listening, so no other process can take it meanwhile. */
static GSocket *
reserve_closed_port (guint16 *port)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GSocket) socket = g_socket_new (G_SOCKET_FAMILY_IPV4, G_SOCKET_TYPE_STREAM, G_SOCKET_PROTOCOL_TCP, &error);
  g_autoptr(GInetAddress) loopback = g_inet_address_new_loopback (G_SOCKET_FAMILY_IPV4);
  g_autoptr(GSocketAddress) any_port = g_inet_socket_address_new (loopback, 0);
  g_autoptr(GSocketAddress) bound = NULL;

  g_assert_no_error (error);
  g_assert_true (g_socket_bind (socket, any_port, FALSE, &error));
  g_assert_no_error (error);
  bound = g_socket_get_local_address (socket, &error);
  g_assert_no_error (error);
  *port = g_inet_socket_address_get_port (G_INET_SOCKET_ADDRESS (bound));
  return g_steal_pointer (&socket);
}

/* ---- command line ---- */

static void
test_help (void)
{
  g_auto(Run) run = { 0 };

  run_plugboard (&run, "--help", NULL);
  g_assert_cmpint (run.status, ==, 0);
  assert_contains (run.out, "Usage: plugboard VERB");
  assert_contains (run.out, "serve");
  assert_contains (run.out, "list");
  assert_contains (run.out, "probe");
  assert_contains (run.out, "Exit status");
  g_assert_cmpstr (run.err, ==, "");
}

static void
test_no_arguments (void)
{
  g_auto(Run) run = { 0 };

  run_plugboard (&run, NULL);
  g_assert_cmpint (run.status, ==, 2);
  assert_contains (run.err, "Usage: plugboard VERB");
}

static void
test_verb_help (void)
{
  static const char *const verbs[] = { "serve", "list", "probe" };

  for (gsize i = 0; i < G_N_ELEMENTS (verbs); i++)
    {
      g_auto(Run) run = { 0 };
      g_autofree char *usage = g_strdup_printf ("plugboard %s", verbs[i]);

      run_plugboard (&run, verbs[i], "--help", NULL);
      g_assert_cmpint (run.status, ==, 0);
      assert_contains (run.out, "Usage:");
      assert_contains (run.out, usage);
      assert_contains (run.out, "Examples:");
    }
  /* The client verbs document their options. */
  {
    g_auto(Run) run = { 0 };
    run_plugboard (&run, "probe", "--help", NULL);
    assert_contains (run.out, "--remote");
    assert_contains (run.out, "--port");
    assert_contains (run.out, "--busid");
  }
}

static void
test_unknown_verb (void)
{
  g_auto(Run) run = { 0 };

  run_plugboard (&run, "frobnicate", NULL);
  g_assert_cmpint (run.status, ==, 2);
  assert_contains (run.err, "unknown verb");
  assert_contains (run.err, "frobnicate");
}

static void
test_bad_options (void)
{
  {
    g_auto(Run) run = { 0 };
    run_plugboard (&run, "list", NULL);
    g_assert_cmpint (run.status, ==, 2);
    assert_contains (run.err, "plugboard list: ");
    assert_contains (run.err, "-r HOST");
  }
  {
    g_auto(Run) run = { 0 };
    run_plugboard (&run, "list", "-r", "127.0.0.1", "--no-such-option", NULL);
    g_assert_cmpint (run.status, ==, 2);
    assert_contains (run.err, "plugboard list: ");
  }
  {
    g_auto(Run) run = { 0 };
    run_plugboard (&run, "list", "-r", "127.0.0.1", "--port", "70000", NULL);
    g_assert_cmpint (run.status, ==, 2);
    assert_contains (run.err, "out of range");
  }
  {
    g_auto(Run) run = { 0 };
    run_plugboard (&run, "list", "-r", "127.0.0.1", "stray", NULL);
    g_assert_cmpint (run.status, ==, 2);
    assert_contains (run.err, "stray");
  }
}

static void
test_probe_without_busid (void)
{
  g_auto(Run) run = { 0 };

  run_plugboard (&run, "probe", "-r", "127.0.0.1", NULL);
  g_assert_cmpint (run.status, ==, 2);
  assert_contains (run.err, "plugboard probe: ");
  assert_contains (run.err, "-b BUSID");
  g_assert_cmpstr (run.out, ==, "");
}

static void
test_list_refused (void)
{
  guint16 port;
  g_autoptr(GSocket) reserved G_GNUC_UNUSED = reserve_closed_port (&port);
  g_autofree char *port_text = g_strdup_printf ("%u", port);
  g_auto(Run) run = { 0 };

  run_plugboard (&run, "list", "-r", "127.0.0.1", "--port", port_text, NULL);
  g_assert_cmpint (run.status, ==, 3);
  g_assert_true (g_str_has_prefix (run.err, "plugboard list: "));
  assert_contains (run.err, "refused");
  g_assert_cmpstr (run.out, ==, "");
}

static void
test_probe_refused (void)
{
  guint16 port;
  g_autoptr(GSocket) reserved G_GNUC_UNUSED = reserve_closed_port (&port);
  g_autofree char *port_text = g_strdup_printf ("%u", port);
  g_auto(Run) run = { 0 };

  run_plugboard (&run, "probe", "-r", "127.0.0.1", "-p", port_text, "-b", "1-1", NULL);
  g_assert_cmpint (run.status, ==, 3);
  g_assert_true (g_str_has_prefix (run.err, "plugboard probe: "));
  assert_contains (run.err, "refused");
}

/* An unknown host is "unreachable" (3), not "no such bus ID" (4). .invalid never resolves
 * (RFC 6761). */
static void
test_unknown_host (void)
{
  {
    g_auto(Run) run = { 0 };
    run_plugboard (&run, "list", "-r", "no-such-host.invalid", NULL);
    g_assert_cmpint (run.status, ==, 3);
    assert_contains (run.err, "no-such-host.invalid");
  }
  {
    g_auto(Run) run = { 0 };
    run_plugboard (&run, "probe", "-r", "no-such-host.invalid", "-b", "1-1", NULL);
    g_assert_cmpint (run.status, ==, 3);
    assert_contains (run.err, "no-such-host.invalid");
  }
}

/* ---- against a real `plugboard serve` ---- */

static void
test_end_to_end (void)
{
  g_autoptr(PbTestServer) server = pb_test_server_start ("--virtual", "keyboard", "--virtual", "serial", NULL);
  g_autofree char *port = g_strdup_printf ("%u", pb_test_server_get_port (server));

  g_assert_cmpuint (pb_test_server_get_n_devices (server), ==, 2);
  g_assert_cmpstr (pb_test_server_get_busid (server, 0), ==, "100-1");
  g_assert_cmpstr (pb_test_server_get_busid (server, 1), ==, "100-2");

  /* list: usbip's layout, both devices, interface classes named. */
  {
    g_auto(Run) run = { 0 };
    run_plugboard (&run, "list", "-r", "127.0.0.1", "--port", port, NULL);
    g_assert_cmpint (run.status, ==, 0);
    g_assert_true (g_str_has_prefix (run.out, "Exportable USB devices\n======================\n - 127.0.0.1\n"));
    assert_contains (run.out, "      100-1: ");
    assert_contains (run.out, "      100-2: ");
    assert_contains (run.out, "(1209:0002)");
    assert_contains (run.out, "(1209:0003)");
    assert_contains (run.out, ": /sys/devices/plugboard/usb100/100-1\n");
    assert_contains (run.out, ":  0 - Human Interface Device / ");
    assert_contains (run.out, "(03/01/01)");
    assert_contains (run.out, "(02/02/01)");
    assert_contains (run.out, ":  1 - CDC Data / ");
    g_assert_cmpstr (run.err, ==, "");
  }

  /* probe: the keyboard enumerated from userspace. */
  {
    g_auto(Run) run = { 0 };
    run_plugboard (&run, "probe", "-r", "127.0.0.1", "--port", port, "-b", "100-1", NULL);
    g_assert_cmpint (run.status, ==, 0);
    assert_contains (run.out, "Device 100-1 on 127.0.0.1 port ");
    assert_contains (run.out, "Plugboard Virtual Keyboard");
    assert_contains (run.out, "idVendor            0x1209");
    assert_contains (run.out, "bInterfaceClass          3 Human Interface Device");
    assert_contains (run.out, "HID Descriptor (type 0x21, 9 bytes):");
    assert_contains (run.out, "bEndpointAddress      0x81 EP 1 IN");
    assert_contains (run.out, "Transfer Type            Interrupt");
    assert_contains (run.out, "wMaxPacketSize      0x0008 1x 8 bytes");
    assert_contains (run.out, "bInterval               10");
    assert_contains (run.out, "Active configuration: 1\n");
    g_assert_cmpstr (run.err, ==, "");
  }
  /* probe releases the device: the server logs the close and a second probe is not "busy". */
  g_assert_true (pb_test_server_wait_lines (server, "close 100-1 ", 1, 10000));

  /* probe: the serial port, two interfaces with class-specific descriptors and bulk endpoints. */
  {
    g_auto(Run) run = { 0 };
    run_plugboard (&run, "probe", "-r", "127.0.0.1", "--port", port, "-b", "100-2", NULL);
    g_assert_cmpint (run.status, ==, 0);
    assert_contains (run.out, "Plugboard Virtual Serial");
    assert_contains (run.out, "bInterfaceClass          2 Communications");
    assert_contains (run.out, "bInterfaceClass         10 CDC Data");
    assert_contains (run.out, "Class-specific Interface Descriptor (type 0x24, 5 bytes):");
    assert_contains (run.out, "Transfer Type            Bulk");
    assert_contains (run.out, "0x0200 1x 512 bytes");
  }
  {
    g_auto(Run) run = { 0 };
    run_plugboard (&run, "probe", "-r", "127.0.0.1", "--port", port, "-b", "100-1", NULL);
    g_assert_cmpint (run.status, ==, 0);
    assert_contains (run.out, "Plugboard Virtual Keyboard");
  }

  /* An unknown bus ID. */
  {
    g_auto(Run) run = { 0 };
    run_plugboard (&run, "probe", "-r", "127.0.0.1", "--port", port, "-b", "9-9", NULL);
    g_assert_cmpint (run.status, ==, 4);
    g_assert_true (g_str_has_prefix (run.err, "plugboard probe: "));
    assert_contains (run.err, "no device");
    g_assert_cmpstr (run.out, ==, "");
  }

  g_assert_true (pb_test_server_stop (server));
}

/* ---- against a hand-made device that misbehaves ---- */

/* A one-connection USB/IP server on its own thread that answers the import and then control
 * requests from fixed tables: descriptors with malformed parts, strings carrying terminal escapes
 * and a bidi override, a stalled GET_STATUS. What `probe` must print without crashing, without
 * passing the escapes to the terminal, and with the right exit code. */
typedef enum {
  FAKE_MALFORMED,             /* odd descriptors, but every required request succeeds */
  FAKE_STALL_SET_CONFIGURATION,
  FAKE_SHORT_DEVICE_DESCRIPTOR,
  FAKE_EMPTY,                 /* exports nothing */
} FakeMode;

typedef struct {
  FakeMode mode;
  int listen_fd;
  guint16 port;
  GThread *thread;
  guint n_requests;
} FakeDevice;

static const guint8 fake_device_descriptor[18] = {
  18, PB_USB_DT_DEVICE, 0x00, 0x02, 0x00, 0x00, 0x00, 64,
  0x6b, 0x1d,  /* Linux Foundation */
  0x99, 0x09,  /* a product usb.ids does not know: the product string names it */
  0x00, 0x01, 1, 2, 3, 1,
};

/* wTotalLength says 64; 40 bytes exist, the last descriptor's bLength runs past them. */
static const guint8 fake_configuration[40] = {
  9, PB_USB_DT_CONFIG, 64, 0, 1, 1, 0, 0xa0, 50,
  9, PB_USB_DT_INTERFACE, 0, 0, 1, 0xff, 0x00, 0x00, 4,
  4, 0x41, 0xde, 0xad,
  7, PB_USB_DT_ENDPOINT, 0x81, 0x05, 0x00, 0x14, 1,  /* iso async IN, 3 × 1024 bytes */
  200, PB_USB_DT_CS_INTERFACE, 1, 2, 3, 4, 5, 6, 7, 8, 9,
};

static GBytes *
utf16_string_descriptor (const gunichar2 *units, gsize n)
{
  GByteArray *out = g_byte_array_new ();
  guint8 head[2] = { (guint8) (2 + 2 * n), PB_USB_DT_STRING };

  g_byte_array_append (out, head, 2);
  for (gsize i = 0; i < n; i++)
    {
      guint8 le[2] = { units[i] & 0xff, units[i] >> 8 };
      g_byte_array_append (out, le, 2);
    }
  return g_byte_array_free_to_bytes (out);
}

/* The reply to one control request: IN data, or a status. */
static gint32
fake_answer (FakeDevice *fake, const guint8 setup[8], GBytes **data)
{
  guint8 request = setup[1];
  guint8 type = setup[3], index = setup[2];
  guint16 length = setup[6] | setup[7] << 8;

  *data = NULL;
  if (request == PB_USB_REQ_GET_DESCRIPTOR && type == PB_USB_DT_DEVICE)
    *data = g_bytes_new (fake_device_descriptor, fake->mode == FAKE_SHORT_DEVICE_DESCRIPTOR ? 5 : 18);
  else if (request == PB_USB_REQ_GET_DESCRIPTOR && type == PB_USB_DT_CONFIG && index == 0)
    *data = g_bytes_new (fake_configuration, sizeof fake_configuration);
  else if (request == PB_USB_REQ_GET_DESCRIPTOR && type == PB_USB_DT_STRING)
    {
      static const gunichar2 languages[] = { 0x0409 };
      /* ESC [31m and BEL, which would recolour the terminal and ring it. */
      static const gunichar2 manufacturer[] = { 'E', 'v', 'i', 'l', 0x1b, '[', '3', '1', 'm', 'C', 'o', 0x07 };
      /* A right-to-left override, then an unpaired surrogate. */
      static const gunichar2 product[] = { 'F', 'a', 'k', 'e', ' ', 'P', 'r', 'o', 'd', 0x202e, 'x', 0xd800, 'y' };
      static const guint8 malformed[] = { 1, PB_USB_DT_STRING };

      switch (index)
        {
        case 0: *data = utf16_string_descriptor (languages, G_N_ELEMENTS (languages)); break;
        case 1: *data = utf16_string_descriptor (manufacturer, G_N_ELEMENTS (manufacturer)); break;
        case 2: *data = utf16_string_descriptor (product, G_N_ELEMENTS (product)); break;
        case 4: *data = g_bytes_new (malformed, sizeof malformed); break;
        default: return PB_URB_EPIPE;  /* string 3, the serial number */
        }
    }
  else if (request == PB_USB_REQ_SET_CONFIGURATION)
    return fake->mode == FAKE_STALL_SET_CONFIGURATION ? PB_URB_EPIPE : 0;
  else if (request == PB_USB_REQ_GET_CONFIGURATION)
    {
      static const guint8 one = 1;
      *data = g_bytes_new (&one, 1);
    }
  else
    return PB_URB_EPIPE;  /* GET_STATUS among others */

  if (*data != NULL && g_bytes_get_size (*data) > length)
    {
      GBytes *whole = *data;
      *data = g_bytes_new_from_bytes (whole, 0, length);
      g_bytes_unref (whole);
    }
  return 0;
}

static gpointer
fake_device_thread (gpointer user_data)
{
  FakeDevice *fake = user_data;
  struct pollfd pfd = { .fd = fake->listen_fd, .events = POLLIN };
  guint8 request[PB_USBIP_REQ_IMPORT_SIZE];
  PbUsbipDeviceRecord record = { 0 };
  const PbUsbipDeviceRecord *records[] = { &record };
  g_autoptr(GBytes) reply = NULL;
  int fd;

  if (poll (&pfd, 1, 10000) != 1)
    return NULL;
  fd = accept (fake->listen_fd, NULL, NULL);
  g_assert_cmpint (fd, >=, 0);

  g_strlcpy (record.path, "/sys/devices/fake/usb1/1-1", sizeof record.path);
  g_strlcpy (record.busid, "1-1", sizeof record.busid);
  record.busnum = 1;
  record.devnum = 2;
  record.speed = PB_USBIP_SPEED_HIGH;
  record.id_vendor = 0x1d6b;
  record.id_product = 0x0999;
  record.num_configurations = 1;

  g_assert_cmpint (pb_test_raw_recv (fd, request, PB_USBIP_OP_HEADER_SIZE, 10000), ==, PB_USBIP_OP_HEADER_SIZE);
  if (pb_read_be16 (request + 2) == PB_USBIP_OP_REQ_DEVLIST)
    {
      /* A path that would retitle the terminal window, a vendor nobody knows, interfaces of
       * classes usb.ids lacks. */
      g_strlcpy (record.path, "/sys/devices/fake\x1b]0;pwned\x07/1-1", sizeof record.path);
      record.id_vendor = 0xfff0;
      record.id_product = 0x0001;
      record.device_class = 0xfe;
      record.device_subclass = 0x42;
      record.device_protocol = 0x43;
      record.num_interfaces = 2;
      record.interfaces[0] = (PbUsbipInterfaceRecord) { 0x08, 0x06, 0x50 };
      record.interfaces[1] = (PbUsbipInterfaceRecord) { 0x77, 0x01, 0x02 };
      reply = pb_usbip_rep_devlist_encode (records, fake->mode == FAKE_EMPTY ? 0 : 1, NULL);
      g_assert_nonnull (reply);
      g_assert_true (pb_test_raw_send (fd, g_bytes_get_data (reply, NULL), g_bytes_get_size (reply), 10000));
      close (fd);
      return NULL;
    }
  g_assert_cmphex (pb_read_be16 (request + 2), ==, PB_USBIP_OP_REQ_IMPORT);
  g_assert_cmpint (pb_test_raw_recv (fd, request + PB_USBIP_OP_HEADER_SIZE, PB_USBIP_BUSID_SIZE, 10000), ==,
                   PB_USBIP_BUSID_SIZE);
  reply = pb_usbip_rep_import_encode (PB_USBIP_ST_OK, &record, NULL);
  g_assert_nonnull (reply);
  g_assert_true (pb_test_raw_send (fd, g_bytes_get_data (reply, NULL), g_bytes_get_size (reply), 10000));

  for (;;)
    {
      guint8 buffer[PB_USBIP_URB_HEADER_SIZE];
      PbUsbipUrbHeader header, answer = { 0 };
      g_autoptr(GBytes) data = NULL;
      gint32 status;

      if (pb_test_raw_recv (fd, buffer, sizeof buffer, 10000) != sizeof buffer)
        break;  /* probe is done and closed the connection */
      g_assert_true (pb_usbip_urb_header_decode (buffer, sizeof buffer, &header, NULL));
      g_assert_cmpuint (header.command, ==, PB_USBIP_CMD_SUBMIT);
      g_assert_cmpuint (header.ep, ==, 0);
      /* probe sends no OUT data: SET_CONFIGURATION has none. */
      g_assert_true (header.direction == PB_USBIP_DIR_IN || header.u.cmd_submit.transfer_buffer_length == 0);
      fake->n_requests++;

      status = fake_answer (fake, header.u.cmd_submit.setup, &data);
      answer.command = PB_USBIP_RET_SUBMIT;
      answer.seqnum = header.seqnum;
      answer.direction = header.direction;
      answer.u.ret_submit.status = status;
      answer.u.ret_submit.actual_length = data != NULL ? g_bytes_get_size (data) : 0;
      pb_usbip_urb_header_encode (&answer, buffer);
      g_assert_true (pb_test_raw_send (fd, buffer, sizeof buffer, 10000));
      if (data != NULL)
        g_assert_true (pb_test_raw_send (fd, g_bytes_get_data (data, NULL), g_bytes_get_size (data), 10000));
    }
  close (fd);
  return NULL;
}

static FakeDevice *
fake_device_start (FakeMode mode)
{
  FakeDevice *fake = g_new0 (FakeDevice, 1);
  struct sockaddr_in address = { .sin_family = AF_INET, .sin_addr.s_addr = htonl (INADDR_LOOPBACK) };
  socklen_t address_len = sizeof address;

  fake->mode = mode;
  fake->listen_fd = socket (AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  g_assert_cmpint (fake->listen_fd, >=, 0);
  g_assert_cmpint (bind (fake->listen_fd, (struct sockaddr *) &address, sizeof address), ==, 0);
  g_assert_cmpint (listen (fake->listen_fd, 1), ==, 0);
  g_assert_cmpint (getsockname (fake->listen_fd, (struct sockaddr *) &address, &address_len), ==, 0);
  fake->port = ntohs (address.sin_port);
  fake->thread = g_thread_new ("fake-device", fake_device_thread, fake);
  return fake;
}

/* Waits for the thread (it ends when probe closes the connection) and frees. */
static void
fake_device_free (FakeDevice *fake)
{
  g_thread_join (fake->thread);
  close (fake->listen_fd);
  g_free (fake);
}
G_DEFINE_AUTOPTR_CLEANUP_FUNC (FakeDevice, fake_device_free)

static void
run_probe_on_fake (Run *run, FakeDevice *fake)
{
  g_autofree char *port = g_strdup_printf ("%u", fake->port);
  run_plugboard (run, "probe", "-r", "127.0.0.1", "--port", port, "-b", "1-1", NULL);
}

static void
test_probe_malformed (void)
{
  g_autoptr(FakeDevice) fake = fake_device_start (FAKE_MALFORMED);
  g_auto(Run) run = { 0 };

  run_probe_on_fake (&run, fake);
  g_assert_cmpint (run.status, ==, 0);
  g_assert_cmpstr (run.err, ==, "");
  /* Nothing a terminal would act on, whatever the device sent. */
  g_assert_null (strchr (run.out, 0x1b));
  g_assert_null (strchr (run.out, 0x07));
  g_assert_null (strstr (run.out, "\u202e"));
  assert_contains (run.out, "iManufacturer            1 Evil?[31mCo?\n");
  assert_contains (run.out, "iProduct                 2 Fake Prod?x\ufffdy\n");
  assert_contains (run.out, "iSerial                  3 (not available: the device stalls the request)\n");
  assert_contains (run.out, "iInterface               4 (malformed string descriptor, 2 bytes)\n");
  /* usb.ids has no name for 1d6b:0999 (or no file at all): the device's own strings name it. */
  assert_contains (run.out, " ID 1d6b:0999 ");
  assert_contains (run.out, " Fake Prod?x\ufffdy\n");
  /* What the descriptors hold, as far as they make sense. */
  assert_contains (run.out, "wTotalLength        0x0040 (the device returned fewer bytes)\n");
  assert_contains (run.out, "      Remote Wakeup\n");
  assert_contains (run.out, "Descriptor (type 0x41, 4 bytes):\n        04 41 de ad\n");
  assert_contains (run.out, "Transfer Type            Isochronous");
  assert_contains (run.out, "Synch Type               Asynchronous");
  assert_contains (run.out, "wMaxPacketSize      0x1400 3x 1024 bytes");
  assert_contains (run.out, "Malformed descriptor at offset 29 (11 bytes left):\n    c8 24 01 02 03 04 05 06 07 08 09\n");
  assert_contains (run.out, "Active configuration: 1\n");
  /* GET_STATUS stalled: left out, not fatal. */
  g_assert_null (strstr (run.out, "Device Status"));
}

static void
test_probe_stall (void)
{
  g_autoptr(FakeDevice) fake = fake_device_start (FAKE_STALL_SET_CONFIGURATION);
  g_auto(Run) run = { 0 };

  run_probe_on_fake (&run, fake);
  g_assert_cmpint (run.status, ==, 1);
  g_assert_true (g_str_has_prefix (run.err, "plugboard probe: 1-1: SET_CONFIGURATION(1): "));
  assert_contains (run.err, "stall");
  g_assert_cmpstr (run.out, ==, "");
}

static void
test_probe_short_descriptor (void)
{
  g_autoptr(FakeDevice) fake = fake_device_start (FAKE_SHORT_DEVICE_DESCRIPTOR);
  g_auto(Run) run = { 0 };

  run_probe_on_fake (&run, fake);
  g_assert_cmpint (run.status, ==, 6);
  assert_contains (run.err, "GET_DESCRIPTOR(device): malformed reply (5 bytes");
  g_assert_cmpstr (run.out, ==, "");
}

static void
run_list_on_fake (Run *run, FakeDevice *fake)
{
  g_autofree char *port = g_strdup_printf ("%u", fake->port);
  run_plugboard (run, "list", "-r", "127.0.0.1", "--port", port, NULL);
}

static void
test_list_hostile (void)
{
  g_autoptr(FakeDevice) fake = fake_device_start (FAKE_MALFORMED);
  g_auto(Run) run = { 0 };

  run_list_on_fake (&run, fake);
  g_assert_cmpint (run.status, ==, 0);
  g_assert_null (strchr (run.out, 0x1b));
  g_assert_null (strchr (run.out, 0x07));
  assert_contains (run.out, "        1-1: unknown vendor : unknown product (fff0:0001)\n");
  assert_contains (run.out, "           : /sys/devices/fake?]0;pwned?/1-1\n");
  /* Class names without usb.ids come from the built-in table; subclasses need the file. */
  assert_contains (run.out, "           : Application Specific Interface / unknown subclass / unknown protocol (fe/42/43)\n");
  assert_contains (run.out, "           :  0 - Mass Storage / ");
  assert_contains (run.out, " (08/06/50)\n");
  assert_contains (run.out, "           :  1 - unknown class / unknown subclass / unknown protocol (77/01/02)\n");
}

static void
test_list_empty (void)
{
  g_autoptr(FakeDevice) fake = fake_device_start (FAKE_EMPTY);
  g_auto(Run) run = { 0 };

  run_list_on_fake (&run, fake);
  g_assert_cmpint (run.status, ==, 0);
  g_assert_cmpstr (run.out, ==, "no exportable devices found on 127.0.0.1\n");
  g_assert_cmpstr (run.err, ==, "");
}

/* ---- usb.ids ---- */

static void
test_usb_ids_sample (void)
{
  g_autofree char *path = g_test_build_filename (G_TEST_DIST, "data", "usb.ids.sample", NULL);
  g_autoptr(GError) error = NULL;
  g_autoptr(PbUsbIds) ids = pb_usb_ids_load (path, &error);
  const char *cafe;

  g_assert_no_error (error);
  g_assert_nonnull (ids);

  g_assert_cmpstr (pb_usb_ids_vendor (ids, 0x0001), ==, "Fry's Electronics");
  g_assert_cmpstr (pb_usb_ids_product (ids, 0x0001, 0x7778), ==, "Counterfeit flash drive [Kingston]");
  g_assert_cmpstr (pb_usb_ids_vendor (ids, 0x1209), ==, "Generic");
  g_assert_cmpstr (pb_usb_ids_product (ids, 0x1209, 0x0002), ==, "pid.codes Test PID");
  /* The first name given wins over a later duplicate. */
  g_assert_cmpstr (pb_usb_ids_vendor (ids, 0x1d6b), ==, "Linux Foundation");
  g_assert_cmpstr (pb_usb_ids_product (ids, 0x1d6b, 0x0002), ==, "2.0 root hub");
  g_assert_cmpstr (pb_usb_ids_product (ids, 0x1d6b, 0x0104), ==, "Multifunction Composite Gadget");
  /* Interface lines under a product are not products; codes are per vendor. */
  g_assert_null (pb_usb_ids_product (ids, 0x1d6b, 0x0000));
  g_assert_null (pb_usb_ids_product (ids, 0x1209, 0x0104));
  g_assert_null (pb_usb_ids_product (ids, 0x1d6b, 0x0105));
  g_assert_null (pb_usb_ids_vendor (ids, 0x1d6c));
  /* Trailing blanks and a CR are not part of names. */
  g_assert_cmpstr (pb_usb_ids_vendor (ids, 0xabcd), ==, "Unknown");
  g_assert_cmpstr (pb_usb_ids_product (ids, 0xabcd, 0x1234), ==, "Trailing blanks and CR");
  /* Products after a malformed or nameless vendor line belong to nobody. */
  g_assert_null (pb_usb_ids_product (ids, 0xabcd, 0x5678));
  g_assert_null (pb_usb_ids_vendor (ids, 0xbeef));
  g_assert_null (pb_usb_ids_product (ids, 0xbeef, 0x00ff));
  /* A Latin-1 name comes out as valid UTF-8. */
  cafe = pb_usb_ids_vendor (ids, 0xc0de);
  g_assert_nonnull (cafe);
  g_assert_true (g_utf8_validate (cafe, -1, NULL));
  g_assert_true (g_str_has_prefix (cafe, "Caf"));
  g_assert_true (g_str_has_suffix (cafe, " Devices"));
  g_assert_cmpstr (pb_usb_ids_product (ids, 0xc0de, 0x0001), ==, "Espresso");

  g_assert_cmpstr (pb_usb_ids_class (ids, 0x00), ==, "(Defined at Interface level)");
  g_assert_cmpstr (pb_usb_ids_class (ids, 0x03), ==, "Human Interface Device");
  g_assert_cmpstr (pb_usb_ids_subclass (ids, 0x03, 0x01), ==, "Boot Interface Subclass");
  g_assert_cmpstr (pb_usb_ids_protocol (ids, 0x03, 0x01, 0x01), ==, "Keyboard");
  g_assert_cmpstr (pb_usb_ids_protocol (ids, 0x03, 0x01, 0x02), ==, "Mouse");
  g_assert_cmpstr (pb_usb_ids_protocol (ids, 0x03, 0x00, 0x00), ==, "None");
  g_assert_null (pb_usb_ids_protocol (ids, 0x03, 0x00, 0x01));
  g_assert_cmpstr (pb_usb_ids_subclass (ids, 0x02, 0x02), ==, "Abstract (modem)");
  g_assert_cmpstr (pb_usb_ids_protocol (ids, 0x02, 0x02, 0x01), ==, "AT-commands (v.25ter)");
  g_assert_cmpstr (pb_usb_ids_class (ids, 0x08), ==, "Mass Storage");
  g_assert_cmpstr (pb_usb_ids_subclass (ids, 0x08, 0x06), ==, "SCSI");
  g_assert_cmpstr (pb_usb_ids_protocol (ids, 0x08, 0x06, 0x50), ==, "Bulk-Only");
  /* Class, subclass and protocol codes do not alias one another. */
  g_assert_null (pb_usb_ids_subclass (ids, 0x00, 0x03));
  g_assert_null (pb_usb_ids_class (ids, 0x06));
  g_assert_null (pb_usb_ids_class (ids, 0x09));
  /* A protocol under a malformed subclass line is dropped, not filed under the previous one. */
  g_assert_null (pb_usb_ids_protocol (ids, 0x08, 0x06, 0x51));
  /* Indented lines of the sections after the classes (HUT, L, …) land nowhere. */
  g_assert_cmpstr (pb_usb_ids_class (ids, 0xff), ==, "Vendor Specific Class");
  g_assert_null (pb_usb_ids_subclass (ids, 0xff, 0x01));
  g_assert_null (pb_usb_ids_product (ids, 0x1d6b, 0x0001));
}

static void
test_usb_ids_null (void)
{
  /* No database installed: every lookup answers "unknown". */
  g_assert_null (pb_usb_ids_vendor (NULL, 0x1d6b));
  g_assert_null (pb_usb_ids_product (NULL, 0x1d6b, 0x0002));
  g_assert_null (pb_usb_ids_class (NULL, 0x03));
  g_assert_null (pb_usb_ids_subclass (NULL, 0x03, 0x01));
  g_assert_null (pb_usb_ids_protocol (NULL, 0x03, 0x01, 0x01));
  pb_usb_ids_free (NULL);
}

static void
test_usb_ids_errors (void)
{
  g_autofree char *dir = pb_test_make_scratch_dir ();
  g_autofree char *missing = g_build_filename (dir, "missing.ids", NULL);
  g_autofree char *empty = g_build_filename (dir, "empty.ids", NULL);
  g_autofree char *comments = g_build_filename (dir, "comments.ids", NULL);

  {
    g_autoptr(GError) error = NULL;
    g_assert_null (pb_usb_ids_load (missing, &error));
    g_assert_error (error, PB_ERROR, PB_ERROR_NOT_FOUND);
  }
  g_assert_true (g_file_set_contents (empty, "", 0, NULL));
  {
    g_autoptr(GError) error = NULL;
    g_assert_null (pb_usb_ids_load (empty, &error));
    g_assert_error (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT);
  }
  g_assert_true (g_file_set_contents (comments, "# only comments\n\n#\tand nothing else\nnot an entry", -1, NULL));
  {
    g_autoptr(GError) error = NULL;
    g_assert_null (pb_usb_ids_load (comments, &error));
    g_assert_error (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT);
  }
  pb_test_remove_tree (dir);
}

static void
test_usb_ids_default (void)
{
  g_autoptr(PbUsbIds) ids = pb_usb_ids_load_default ();
  gint64 start;

  if (ids == NULL)
    {
      g_test_skip ("no usb.ids installed in the configured paths");
      return;
    }
  /* Names every copy of the real file has. */
  g_assert_cmpstr (pb_usb_ids_vendor (ids, 0x1d6b), ==, "Linux Foundation");
  g_assert_cmpstr (pb_usb_ids_class (ids, 0x03), ==, "Human Interface Device");
  g_assert_cmpstr (pb_usb_ids_subclass (ids, 0x08, 0x06), ==, "SCSI");
  g_assert_cmpstr (pb_usb_ids_protocol (ids, 0x08, 0x06, 0x50), ==, "Bulk-Only");

  /* One pass over the ~1 MB file: well under the time a command line may take to start. */
  start = g_get_monotonic_time ();
  for (guint i = 0; i < 3; i++)
    pb_usb_ids_free (pb_usb_ids_load_default ());
  g_test_message ("usb.ids loaded in %" G_GINT64_FORMAT " µs on average", (g_get_monotonic_time () - start) / 3);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);

  g_test_add_data_func ("/cli/help", (gconstpointer) test_help, with_plugboard);
  g_test_add_data_func ("/cli/no-arguments", (gconstpointer) test_no_arguments, with_plugboard);
  g_test_add_data_func ("/cli/verb-help", (gconstpointer) test_verb_help, with_plugboard);
  g_test_add_data_func ("/cli/unknown-verb", (gconstpointer) test_unknown_verb, with_plugboard);
  g_test_add_data_func ("/cli/bad-options", (gconstpointer) test_bad_options, with_plugboard);
  g_test_add_data_func ("/cli/probe-without-busid", (gconstpointer) test_probe_without_busid, with_plugboard);
  g_test_add_data_func ("/cli/list-refused", (gconstpointer) test_list_refused, with_plugboard);
  g_test_add_data_func ("/cli/probe-refused", (gconstpointer) test_probe_refused, with_plugboard);
  g_test_add_data_func ("/cli/unknown-host", (gconstpointer) test_unknown_host, with_plugboard);
  g_test_add_data_func ("/cli/end-to-end", (gconstpointer) test_end_to_end, with_plugboard);
  g_test_add_data_func ("/cli/list-hostile", (gconstpointer) test_list_hostile, with_plugboard);
  g_test_add_data_func ("/cli/list-empty", (gconstpointer) test_list_empty, with_plugboard);
  g_test_add_data_func ("/cli/probe-malformed", (gconstpointer) test_probe_malformed, with_plugboard);
  g_test_add_data_func ("/cli/probe-stall", (gconstpointer) test_probe_stall, with_plugboard);
  g_test_add_data_func ("/cli/probe-short-descriptor", (gconstpointer) test_probe_short_descriptor, with_plugboard);
  g_test_add_func ("/cli/usb-ids/sample", test_usb_ids_sample);
  g_test_add_func ("/cli/usb-ids/null", test_usb_ids_null);
  g_test_add_func ("/cli/usb-ids/errors", test_usb_ids_errors);
  g_test_add_func ("/cli/usb-ids/default", test_usb_ids_default);

  return g_test_run ();
}
