/* The `plugboard` command line as a user runs it: the built binary in subprocesses, its exit
 * codes and output; plus the usb.ids reader that `list` and `probe` name things with. */
#include <string.h>

#include "pb-error.h"
#include "pb-test-util.h"
#include "pb-usb-ids.h"

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
  g_autoptr(GSocket) reserved = reserve_closed_port (&port);
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
  g_autoptr(GSocket) reserved = reserve_closed_port (&port);
  g_autofree char *port_text = g_strdup_printf ("%u", port);
  g_auto(Run) run = { 0 };

  run_plugboard (&run, "probe", "-r", "127.0.0.1", "-p", port_text, "-b", "1-1", NULL);
  g_assert_cmpint (run.status, ==, 3);
  g_assert_true (g_str_has_prefix (run.err, "plugboard probe: "));
  assert_contains (run.err, "refused");
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
    assert_contains (run.out, "idVendor           0x1209");
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
  g_test_add_data_func ("/cli/end-to-end", (gconstpointer) test_end_to_end, with_plugboard);
  g_test_add_func ("/cli/usb-ids/sample", test_usb_ids_sample);
  g_test_add_func ("/cli/usb-ids/null", test_usb_ids_null);
  g_test_add_func ("/cli/usb-ids/errors", test_usb_ids_errors);
  g_test_add_func ("/cli/usb-ids/default", test_usb_ids_default);

  return g_test_run ();
}
