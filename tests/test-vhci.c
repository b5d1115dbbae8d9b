/* PbVhci: the status parser on text as the kernel prints it, and discovery, attach and detach
 * against a sysfs tree laid out by the test. A stand-in, because the host kernel here has no
 * vhci-hcd: the real driver judges PbVhci in the QEMU suite (tests/vm, issue 3). */
#include <glib/gstdio.h>
#include <string.h>
#include <sys/wait.h>

#include "pb-test-util.h"
#include "pb-vhci.h"

/* vhci_hcd.0 of Debian 12's kernel with 2 ports per hub: one USB 2 port in use. */
static const char status_0[] =
  "hub port sta spd dev      sockfd local_busid\n"
  "hs  0000 006 003 00640001 000005 3-1\n"
  "hs  0001 004 000 00000000 000000 0-0\n"
  "ss  0002 004 000 00000000 000000 0-0\n"
  "ss  0003 004 000 00000000 000000 0-0\n";
static const char status_1[] =
  "hub port sta spd dev      sockfd local_busid\n"
  "hs  0004 004 000 00000000 000000 0-0\n"
  "hs  0005 004 000 00000000 000000 0-0\n"
  "ss  0006 004 000 00000000 000000 0-0\n"
  "ss  0007 004 000 00000000 000000 0-0\n";

static void
test_parse (void)
{
  g_autoptr(GArray) ports = g_array_new (FALSE, TRUE, sizeof (PbVhciPort));
  g_autoptr(GError) error = NULL;
  const PbVhciPort *used;

  g_assert_true (pb_vhci_parse_status (status_0, ports, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (ports->len, ==, 4);
  used = &g_array_index (ports, PbVhciPort, 0);
  g_assert_false (used->super_speed_hub);
  g_assert_cmpuint (used->port, ==, 0);
  g_assert_cmpint (used->state, ==, PB_VHCI_PORT_USED);
  g_assert_cmpuint (used->speed, ==, PB_USBIP_SPEED_HIGH);
  g_assert_cmpuint (used->devid, ==, 0x00640001);
  g_assert_cmpuint (used->sockfd, ==, 5);
  g_assert_cmpstr (used->local_busid, ==, "3-1");
  g_assert_true (g_array_index (ports, PbVhciPort, 2).super_speed_hub);
  g_assert_cmpint (g_array_index (ports, PbVhciPort, 3).state, ==, PB_VHCI_PORT_FREE);

  g_assert_false (pb_vhci_parse_status ("hs  0000 004 000 00000000 000000 0-0\n", ports, &error));
  g_assert_error (error, PB_ERROR, PB_ERROR_PROTOCOL);
  g_clear_error (&error);
  g_assert_false (pb_vhci_parse_status ("hub port sta\nxx  0000 004 000 00000000 000000 0-0\n", ports, &error));
  g_assert_error (error, PB_ERROR, PB_ERROR_PROTOCOL);
  g_clear_error (&error);
  g_assert_false (pb_vhci_parse_status ("hub port sta\nhs  0000 004\n", ports, &error));
  g_assert_error (error, PB_ERROR, PB_ERROR_PROTOCOL);
}

static char *
make_tree (const char *bus)
{
  char *root = pb_test_make_scratch_dir ();
  g_autofree char *dir = g_build_filename (root, "devices", bus, "vhci_hcd.0", NULL);
  const char *files[][2] = {
    { "nports", "8\n" }, { "status", status_0 }, { "status.1", status_1 }, { "attach", "" }, { "detach", "" },
  };

  g_assert_cmpint (g_mkdir_with_parents (dir, 0755), ==, 0);
  for (gsize i = 0; i < G_N_ELEMENTS (files); i++)
    {
      g_autofree char *path = g_build_filename (dir, files[i][0], NULL);
      g_assert_true (g_file_set_contents (path, files[i][1], -1, NULL));
    }
  return root;
}

static char *
read_attribute (PbVhci *vhci, const char *name)
{
  g_autofree char *path = g_build_filename (pb_vhci_get_path (vhci), name, NULL);
  char *text = NULL;
  g_assert_true (g_file_get_contents (path, &text, NULL, NULL));
  return text;
}

static void
test_attach_detach (gconstpointer bus)
{
  g_autofree char *root = make_tree (bus);
  g_autoptr(GError) error = NULL;
  g_autoptr(PbVhci) vhci = pb_vhci_new (root, &error);
  g_autoptr(GArray) ports = NULL;
  g_autofree char *written = NULL;
  guint port = 999;

  g_assert_no_error (error);
  g_assert_cmpuint (pb_vhci_get_n_ports (vhci), ==, 8);
  ports = pb_vhci_read_ports (vhci, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (ports->len, ==, 8);

  /* A high-speed device goes to the first free USB 2 port: port 0 is in use. */
  g_assert_true (pb_vhci_attach (vhci, 7, (100 << 16) | 1, PB_USBIP_SPEED_HIGH, &port, &error));
  g_assert_cmpuint (port, ==, 1);
  written = read_attribute (vhci, "attach");
  g_assert_cmpstr (written, ==, "1 7 6553601 3");
  g_clear_pointer (&written, g_free);

  /* A SuperSpeed device needs a SuperSpeed port. */
  g_assert_true (pb_vhci_attach (vhci, 8, 0x00650002, PB_USBIP_SPEED_SUPER, &port, &error));
  g_assert_cmpuint (port, ==, 2);
  written = read_attribute (vhci, "attach");
  g_assert_cmpstr (written, ==, "2 8 6619138 5");
  g_clear_pointer (&written, g_free);

  g_assert_false (pb_vhci_attach (vhci, 8, 1, PB_USBIP_SPEED_UNKNOWN, &port, &error));
  g_assert_error (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT);
  g_clear_error (&error);

  g_assert_true (pb_vhci_detach (vhci, 0, &error));
  written = read_attribute (vhci, "detach");
  g_assert_cmpstr (written, ==, "0");
  pb_test_remove_tree (root);
}

static void
test_missing (void)
{
  g_autofree char *root = pb_test_make_scratch_dir ();
  g_autoptr(GError) error = NULL;

  g_assert_null (pb_vhci_new (root, &error));
  g_assert_error (error, PB_ERROR, PB_ERROR_NOT_FOUND);
  g_assert_nonnull (strstr (error->message, "modprobe vhci-hcd"));
  pb_test_remove_tree (root);
}

static char *
run_cli (const char *root, const char *runtime, int *status, const char *const *args)
{
  g_autoptr(GPtrArray) argv = g_ptr_array_new ();
  g_auto(GStrv) env = g_get_environ ();
  g_autoptr(GError) error = NULL;
  char *out = NULL;

  env = g_environ_setenv (env, "PLUGBOARD_SYSFS_ROOT", root, TRUE);
  env = g_environ_setenv (env, "PLUGBOARD_RUNTIME_DIR", runtime, TRUE);
  g_ptr_array_add (argv, (char *) pb_test_plugboard_path ());
  for (guint i = 0; args[i] != NULL; i++)
    g_ptr_array_add (argv, (char *) args[i]);
  g_ptr_array_add (argv, NULL);
  g_assert_true (g_spawn_sync (NULL, (char **) argv->pdata, env, G_SPAWN_STDERR_TO_DEV_NULL, NULL, NULL, &out, NULL,
                               status, &error));
  g_assert_no_error (error);
  return out;
}

/* `plugboard attach` imports from a real server, hands the socket to vhci-hcd (here: the
 * laid-out tree, so only what is written is checked) and records where the port points;
 * `plugboard port` shows it; `plugboard detach` writes the port and drops the record. */
static void
test_cli_attach_port_detach (void)
{
  g_autofree char *root = make_tree ("platform");
  g_autofree char *runtime = g_build_filename (root, "run", NULL);
  g_autoptr(PbTestServer) server = pb_test_server_start ("--virtual", "keyboard", NULL);
  g_autofree char *port_text = g_strdup_printf ("%u", pb_test_server_get_port (server));
  g_autofree char *out = NULL;
  g_autofree char *record = NULL;
  g_autofree char *record_path = g_build_filename (runtime, "port1", NULL);
  g_autofree char *attach_path = g_build_filename (root, "devices/platform/vhci_hcd.0/attach", NULL);
  g_autofree char *written = NULL;
  g_auto(GStrv) fields = NULL;
  int status;

  out = run_cli (root, runtime, &status,
                 (const char *const[]) { "attach", "-r", "127.0.0.1", "--port", port_text, "-b", "100-1", NULL });
  g_assert_true (g_spawn_check_wait_status (status, NULL));
  g_assert_nonnull (strstr (out, "to vhci port 1"));
  g_assert_true (g_file_get_contents (attach_path, &written, NULL, NULL));
  fields = g_strsplit (written, " ", -1);
  g_assert_cmpuint (g_strv_length (fields), ==, 4);
  g_assert_cmpstr (fields[0], ==, "1");
  g_assert_cmpstr (fields[2], ==, "6553601"); /* 100 << 16 | 1 */
  g_assert_cmpstr (fields[3], ==, "2");       /* the keyboard is full speed */
  g_assert_true (g_file_get_contents (record_path, &record, NULL, NULL));
  g_assert_nonnull (strstr (record, "busid=100-1"));
  g_assert_nonnull (strstr (record, "host=127.0.0.1"));
  g_clear_pointer (&out, g_free);

  /* Port 0 is in use in the laid-out status: listed, without a record of ours. */
  out = run_cli (root, runtime, &status, (const char *const[]) { "port", NULL });
  g_assert_true (g_spawn_check_wait_status (status, NULL));
  g_assert_nonnull (strstr (out, "Port 00: <Port in Use> at High Speed(480Mbps)"));
  g_clear_pointer (&out, g_free);

  out = run_cli (root, runtime, &status, (const char *const[]) { "detach", "-p", "1", NULL });
  g_assert_true (g_spawn_check_wait_status (status, NULL));
  g_assert_false (g_file_test (record_path, G_FILE_TEST_EXISTS));
  g_clear_pointer (&out, g_free);

  out = run_cli (root, runtime, &status, (const char *const[]) { "detach", NULL });
  g_assert_cmpint (WEXITSTATUS (status), ==, 2);
  g_assert_true (pb_test_server_stop (server));
  pb_test_remove_tree (root);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/vhci/parse", test_parse);
  g_test_add_data_func ("/vhci/attach-detach/platform", "platform", test_attach_detach);
  g_test_add_data_func ("/vhci/attach-detach/faux", "faux", test_attach_detach);
  g_test_add_func ("/vhci/missing", test_missing);
  g_test_add_func ("/vhci/cli-attach-port-detach", test_cli_attach_port_detach);
  return g_test_run ();
}
