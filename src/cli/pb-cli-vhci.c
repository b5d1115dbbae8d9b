/* `plugboard attach`, `detach`, `port` and `virtual`: the client side through the kernel's
 * vhci-hcd. Root is needed for now (the helper issue moves this behind polkit).
 *
 * PLUGBOARD_SYSFS_ROOT and PLUGBOARD_RUNTIME_DIR point these verbs at another sysfs tree and
 * records folder; the tests use them. */
#define G_LOG_DOMAIN "plugboard"

#include <errno.h>
#include <glib-unix.h>
#include <glib/gstdio.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "pb-cli.h"
#include "pb-keyboard.h"
#include "pb-remote.h"
#include "pb-server.h"
#include "pb-vhci.h"

static const char *
runtime_dir (void)
{
  const char *dir = g_getenv ("PLUGBOARD_RUNTIME_DIR");
  return dir != NULL ? dir : "/run/plugboard";
}

static char *
record_path (guint port)
{
  g_autofree char *name = g_strdup_printf ("port%u", port);
  return g_build_filename (runtime_dir (), name, NULL);
}

/* What a port is attached to, kept beside the kernel's own state: host, port, bus ID, time. */
static void
write_record (guint port, const char *host, guint16 remote_port, const char *busid)
{
  g_autoptr(GKeyFile) record = g_key_file_new ();
  g_autoptr(GError) error = NULL;
  g_autoptr(GDateTime) now = g_date_time_new_now_utc ();
  g_autofree char *iso = g_date_time_format_iso8601 (now);
  g_autofree char *path = record_path (port);

  g_key_file_set_string (record, "attachment", "host", host);
  g_key_file_set_integer (record, "attachment", "port", remote_port);
  g_key_file_set_string (record, "attachment", "busid", busid);
  g_key_file_set_string (record, "attachment", "attached", iso);
  if (g_mkdir_with_parents (runtime_dir (), 0755) < 0 || !g_key_file_save_to_file (record, path, &error))
    fprintf (stderr, "plugboard: warning: cannot record the attachment in %s: %s\n", path,
             error != NULL ? error->message : g_strerror (errno));
}

static PbVhci *
open_vhci (const char *verb, int *status)
{
  g_autoptr(GError) error = NULL;
  PbVhci *vhci = pb_vhci_new (g_getenv ("PLUGBOARD_SYSFS_ROOT"), &error);

  if (vhci == NULL)
    {
      fprintf (stderr, "plugboard %s: %s\n", verb, error->message);
      *status = PB_EXIT_FAILURE;
    }
  return vhci;
}

static gboolean
parse_options (GOptionContext *context, const char *verb, int *argc, char ***argv)
{
  g_autoptr(GError) error = NULL;

  if (!g_option_context_parse (context, argc, argv, &error))
    {
      fprintf (stderr, "plugboard %s: %s\n", verb, error->message);
      return FALSE;
    }
  if (*argc > 1)
    {
      fprintf (stderr, "plugboard %s: unexpected argument “%s”\n", verb, (*argv)[1]);
      return FALSE;
    }
  return TRUE;
}

int
pb_cli_attach (int argc, char **argv)
{
  g_autofree char *host = NULL;
  g_autofree char *busid = NULL;
  gint port = PB_USBIP_DEFAULT_PORT;
  g_autoptr(GOptionContext) context = g_option_context_new ("— attach a remote device through vhci-hcd");
  GOptionEntry entries[] = {
    { "remote", 'r', 0, G_OPTION_ARG_STRING, &host, "Server to import from", "HOST" },
    { "port", 'p', 0, G_OPTION_ARG_INT, &port, "Server's TCP port (default 3240)", "N" },
    { "busid", 'b', 0, G_OPTION_ARG_STRING, &busid, "Bus ID of the device on the server", "BUSID" },
    { NULL }
  };
  g_autoptr(PbVhci) vhci = NULL;
  g_autoptr(GSocketConnection) connection = NULL;
  g_autoptr(GError) error = NULL;
  PbUsbipDeviceRecord record;
  guint vhci_port;
  int status = PB_EXIT_OK;

  g_option_context_add_main_entries (context, entries, NULL);
  g_option_context_set_description (context,
    "Imports BUSID from a USB/IP server (Plugboard or Linux usbipd) and hands the connection to\n"
    "the kernel's vhci-hcd, so the device appears locally. Needs root and the vhci-hcd module.\n\n"
    "Example:\n  sudo plugboard attach -r server.local -b 1-1.2");
  if (!parse_options (context, "attach", &argc, &argv))
    return PB_EXIT_USAGE;
  if (host == NULL || busid == NULL || port < 1 || port > 65535)
    {
      fprintf (stderr, "plugboard attach: give -r HOST and -b BUSID (see --help)\n");
      return PB_EXIT_USAGE;
    }
  vhci = open_vhci ("attach", &status);
  if (vhci == NULL)
    return status;

  connection = pb_remote_connect (host, (guint16) port, NULL, &error);
  if (connection == NULL || !pb_remote_import_on (connection, busid, &record, NULL, &error))
    {
      fprintf (stderr, "plugboard attach: %s\n", error->message);
      return pb_cli_exit_code_for_error (error);
    }
  if (!pb_vhci_attach (vhci, g_socket_get_fd (g_socket_connection_get_socket (connection)),
                       (record.busnum << 16) | (record.devnum & 0xffff), record.speed, &vhci_port, &error))
    {
      fprintf (stderr, "plugboard attach: %s\n", error->message);
      return pb_cli_exit_code_for_error (error);
    }
  /* The kernel holds its own reference to the socket now. */
  g_io_stream_close (G_IO_STREAM (connection), NULL, NULL);
  write_record (vhci_port, host, (guint16) port, busid);
  printf ("attached %s from %s port %d to vhci port %u\n", busid, host, port, vhci_port);
  return PB_EXIT_OK;
}

int
pb_cli_detach (int argc, char **argv)
{
  gint port = -1;
  g_autoptr(GOptionContext) context = g_option_context_new ("— detach a vhci-hcd port");
  GOptionEntry entries[] = {
    { "port", 'p', 0, G_OPTION_ARG_INT, &port, "vhci port number (see plugboard port)", "PORT" },
    { NULL }
  };
  g_autoptr(PbVhci) vhci = NULL;
  g_autoptr(GError) error = NULL;
  g_autofree char *path = NULL;
  int status = PB_EXIT_OK;

  g_option_context_add_main_entries (context, entries, NULL);
  if (!parse_options (context, "detach", &argc, &argv))
    return PB_EXIT_USAGE;
  if (port < 0)
    {
      fprintf (stderr, "plugboard detach: give -p PORT (see plugboard port)\n");
      return PB_EXIT_USAGE;
    }
  vhci = open_vhci ("detach", &status);
  if (vhci == NULL)
    return status;
  if (!pb_vhci_detach (vhci, (guint) port, &error))
    {
      fprintf (stderr, "plugboard detach: %s\n", error->message);
      return pb_cli_exit_code_for_error (error);
    }
  path = record_path ((guint) port);
  g_unlink (path);
  printf ("port %d is detached\n", port);
  return PB_EXIT_OK;
}

static const char *
speed_name (guint speed)
{
  switch (speed)
    {
    case PB_USBIP_SPEED_LOW: return "Low Speed(1.5Mbps)";
    case PB_USBIP_SPEED_FULL: return "Full Speed(12Mbps)";
    case PB_USBIP_SPEED_HIGH: return "High Speed(480Mbps)";
    case PB_USBIP_SPEED_SUPER: return "Super Speed(5000Mbps)";
    case PB_USBIP_SPEED_SUPER_PLUS: return "Super Speed Plus(10000Mbps)";
    default: return "Unknown Speed";
    }
}

int
pb_cli_port (int argc, char **argv)
{
  g_autoptr(GOptionContext) context = g_option_context_new ("— list the vhci-hcd ports in use");
  g_autoptr(PbVhci) vhci = NULL;
  g_autoptr(GArray) ports = NULL;
  g_autoptr(GError) error = NULL;
  int status = PB_EXIT_OK;

  if (!parse_options (context, "port", &argc, &argv))
    return PB_EXIT_USAGE;
  vhci = open_vhci ("port", &status);
  if (vhci == NULL)
    return status;
  ports = pb_vhci_read_ports (vhci, &error);
  if (ports == NULL)
    {
      fprintf (stderr, "plugboard port: %s\n", error->message);
      return PB_EXIT_FAILURE;
    }
  printf ("Imported USB devices\n====================\n");
  for (guint i = 0; i < ports->len; i++)
    {
      const PbVhciPort *p = &g_array_index (ports, PbVhciPort, i);
      g_autofree char *path = NULL;
      g_autoptr(GKeyFile) record = g_key_file_new ();

      if (p->state != PB_VHCI_PORT_USED)
        continue;
      printf ("Port %02u: <Port in Use> at %s\n", p->port, speed_name (p->speed));
      printf ("       devid %08x on local bus ID %s\n", p->devid, p->local_busid);
      path = record_path (p->port);
      if (g_key_file_load_from_file (record, path, G_KEY_FILE_NONE, NULL))
        {
          g_autofree char *host = g_key_file_get_string (record, "attachment", "host", NULL);
          g_autofree char *busid = g_key_file_get_string (record, "attachment", "busid", NULL);
          g_autofree char *since = g_key_file_get_string (record, "attachment", "attached", NULL);
          gint remote_port = g_key_file_get_integer (record, "attachment", "port", NULL);
          printf ("       %s -> usbip://%s:%d/%s (since %s)\n", p->local_busid, host != NULL ? host : "?",
                  remote_port, busid != NULL ? busid : "?", since != NULL ? since : "?");
        }
    }
  return PB_EXIT_OK;
}

/* ---- virtual devices over a socketpair ---- */

typedef struct {
  GMainLoop *loop;
  guint open_sessions;
} VirtualRun;

static void
on_virtual_session_closed (PbServer *server, PbExportSession *session, const GError *reason, gpointer user_data)
{
  VirtualRun *run = user_data;

  printf ("close %s: %s\n", pb_device_get_busid (pb_export_session_get_device (session)),
          reason != NULL ? reason->message : "closed");
  if (--run->open_sessions == 0)
    g_main_loop_quit (run->loop);
}

static gboolean
on_virtual_quit (gpointer user_data)
{
  g_main_loop_quit (((VirtualRun *) user_data)->loop);
  return G_SOURCE_CONTINUE;
}

int
pb_cli_virtual (int argc, char **argv)
{
  g_auto(GStrv) specs = NULL;
  g_autofree char *type_text = NULL;
  gboolean type_stdin = FALSE;
  g_autoptr(GOptionContext) context = g_option_context_new ("— attach virtual devices locally, with no network");
  GOptionEntry entries[] = {
    { "attach", 'a', 0, G_OPTION_ARG_STRING_ARRAY, &specs,
      "Attach a virtual device: msc:IMAGE[,ro], keyboard, serial[:pty] (repeatable)", "SPEC" },
    { "type", 0, 0, G_OPTION_ARG_STRING, &type_text, "Text the virtual keyboard types once attached", "TEXT" },
    { "type-stdin", 0, 0, G_OPTION_ARG_NONE, &type_stdin, "The virtual keyboard types what arrives on standard input, as it arrives", NULL },
    { NULL }
  };
  g_autoptr(PbVhci) vhci = NULL;
  g_autoptr(PbServer) server = NULL;
  g_autoptr(GPtrArray) owners = g_ptr_array_new_with_free_func (g_object_unref);
  g_autoptr(GArray) attached_ports = g_array_new (FALSE, FALSE, sizeof (guint));
  VirtualRun run = { 0 };
  int status = PB_EXIT_OK;

  g_option_context_add_main_entries (context, entries, NULL);
  g_option_context_set_description (context,
    "Each device is served on one end of a socketpair whose other end goes to vhci-hcd: the\n"
    "device appears on this machine and its driver binds. Runs until SIGINT/SIGTERM or until\n"
    "the kernel lets go of every device; then detaches. Needs root and the vhci-hcd module.\n\n"
    "Example:\n  sudo plugboard virtual --attach msc:disk.img --attach keyboard --type 'hello\\n'");
  if (!parse_options (context, "virtual", &argc, &argv))
    return PB_EXIT_USAGE;
  if (specs == NULL || specs[0] == NULL)
    {
      fprintf (stderr, "plugboard virtual: give at least one --attach SPEC (see --help)\n");
      return PB_EXIT_USAGE;
    }
  setvbuf (stdout, NULL, _IOLBF, 0);
  vhci = open_vhci ("virtual", &status);
  if (vhci == NULL)
    return status;

  server = pb_server_new ();
  run.loop = g_main_loop_new (NULL, FALSE);
  g_signal_connect (server, "session-closed", G_CALLBACK (on_virtual_session_closed), &run);

  for (guint i = 0; specs[i] != NULL; i++)
    {
      g_autoptr(GError) error = NULL;
      g_autofree char *description = NULL;
      PbVirtualDevice *device = NULL;
      GObject *owner = pb_cli_make_virtual_device (specs[i], &device, &description, &error);
      PbUsbipDeviceRecord record;
      g_autoptr(GSocket) ours = NULL;
      int fds[2];
      guint port;

      if (owner != NULL)
        {
          g_ptr_array_add (owners, owner);
          pb_device_set_description (PB_DEVICE (device), description);
        }
      if (owner == NULL || !pb_server_add_device (server, PB_DEVICE (device), &error))
        {
          fprintf (stderr, "plugboard virtual: %s\n", error->message);
          status = pb_cli_exit_code_for_error (error);
          break;
        }
      if (socketpair (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) < 0)
        {
          fprintf (stderr, "plugboard virtual: socketpair: %s\n", g_strerror (errno));
          status = PB_EXIT_FAILURE;
          break;
        }
      ours = g_socket_new_from_fd (fds[0], &error);
      if (ours == NULL || pb_server_serve_socket (server, ours, PB_DEVICE (device), &error) == NULL)
        {
          fprintf (stderr, "plugboard virtual: %s\n", error->message);
          close (fds[1]);
          status = PB_EXIT_FAILURE;
          break;
        }
      pb_device_describe (PB_DEVICE (device), &record);
      if (!pb_vhci_attach (vhci, fds[1], pb_device_get_devid (PB_DEVICE (device)), record.speed, &port, &error))
        {
          fprintf (stderr, "plugboard virtual: %s\n", error->message);
          close (fds[1]);
          status = pb_cli_exit_code_for_error (error);
          break;
        }
      /* The kernel holds its own reference to its end. */
      close (fds[1]);
      run.open_sessions++;
      g_array_append_val (attached_ports, port);
      printf ("attached %s (%s) to vhci port %u\n", pb_device_get_busid (PB_DEVICE (device)), description, port);
      if (type_text != NULL && PB_IS_KEYBOARD (owner))
        {
          g_autofree char *text = g_strcompress (type_text);
          pb_cli_type_later (PB_KEYBOARD (owner), text);
        }
      if (type_stdin && PB_IS_KEYBOARD (owner))
        pb_cli_type_from_stdin (PB_KEYBOARD (owner));
    }

  if (status == PB_EXIT_OK)
    {
      g_unix_signal_add (SIGINT, on_virtual_quit, &run);
      g_unix_signal_add (SIGTERM, on_virtual_quit, &run);
      g_main_loop_run (run.loop);
    }
  for (guint i = 0; i < attached_ports->len; i++)
    pb_vhci_detach (vhci, g_array_index (attached_ports, guint, i), NULL);
  pb_server_stop (server);
  g_main_loop_unref (run.loop);
  return status;
}
