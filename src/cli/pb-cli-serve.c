/* `plugboard serve`: a standalone USB/IP server for virtual devices. No root needed. */
#define G_LOG_DOMAIN "plugboard"

#include <glib-unix.h>
#include <stdio.h>
#include <string.h>

#include "pb-cli.h"
#include "pb-keyboard.h"
#include "pb-monitor.h"
#include "pb-server.h"
#include "pb-usb-device.h"

typedef struct {
  PbServer *server;
  GMainLoop *loop;
  GPtrArray *owners;     /* the built-in device objects (PbMassStorage, PbKeyboard, PbSerial) */
  PbKeyboard *keyboard;  /* to type --type text on import; owned by owners */
  PbMonitor *monitor;    /* libusb, once a --share needs it */
  char **share_specs;    /* --share, to share again what is plugged back in */
  char *type_text;
} Serve;

/* Exports device; on success serve->owners takes the caller's reference on owner. */
static gboolean
add_device (Serve *serve, GObject *owner, PbVirtualDevice *device, const char *description, GError **error)
{
  pb_device_set_description (PB_DEVICE (device), description);
  if (!pb_server_add_device (serve->server, PB_DEVICE (device), error))
    return FALSE;
  g_ptr_array_add (serve->owners, owner);
  return TRUE;
}

static gboolean
add_virtual (Serve *serve, const char *spec, GError **error)
{
  PbVirtualDevice *device = NULL;
  g_autofree char *description = NULL;
  g_autoptr(GObject) owner = pb_cli_make_virtual_device (spec, &device, &description, error);

  if (owner == NULL)
    return FALSE;
  if (PB_IS_KEYBOARD (owner) && serve->keyboard != NULL)
    {
      g_set_error_literal (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT, "only one --virtual keyboard is supported");
      return FALSE;
    }
  if (!add_device (serve, owner, device, description, error))
    return FALSE;
  if (PB_IS_KEYBOARD (owner))
    serve->keyboard = PB_KEYBOARD (owner);
  g_steal_pointer (&owner);
  return TRUE;
}

static void
on_device_vanished (PbDevice *device, gpointer user_data)
{
  Serve *serve = user_data;

  printf ("unplugged %s\n", pb_device_get_busid (device));
  g_ptr_array_remove (serve->owners, device); /* a replug makes a new one */
}

static gboolean add_found (Serve *serve, libusb_device *found, GError **error);

/* A device arrived: share it if a --share names it (by bus ID or VID:PID) and it is not shared. */
static void
on_device_added (PbMonitor *monitor, const char *busid, gpointer user_data)
{
  Serve *serve = user_data;
  g_autoptr(GError) error = NULL;
  libusb_device *found;
  struct libusb_device_descriptor d;
  g_autofree char *ids = NULL;

  if (pb_server_find_device (serve->server, busid) != NULL ||
      (found = pb_monitor_find_device (monitor, busid, NULL)) == NULL)
    return;
  if (libusb_get_device_descriptor (found, &d) == 0 && !pb_monitor_device_is_imported (found))
    ids = g_strdup_printf ("%04x:%04x", d.idVendor, d.idProduct); /* see pb_monitor_find_device */
  for (guint i = 0; serve->share_specs[i] != NULL; i++)
    if (g_str_equal (serve->share_specs[i], busid) ||
        (ids != NULL && g_ascii_strcasecmp (serve->share_specs[i], ids) == 0))
      {
        if (add_found (serve, found, &error))
          printf ("plugged %s: sharing it again\n", busid);
        else
          printf ("plugged %s: cannot share it: %s\n", busid, error->message);
        break;
      }
  libusb_unref_device (found);
}

/* --share BUSID|VID:PID: a real device of this machine, through libusb. */
static gboolean
add_shared (Serve *serve, const char *spec, GError **error)
{
  libusb_device *found;
  gboolean ok;

  if (serve->monitor == NULL)
    {
      if ((serve->monitor = pb_monitor_new (error)) == NULL)
        return FALSE;
      g_signal_connect (serve->monitor, "device-added", G_CALLBACK (on_device_added), serve);
    }
  found = pb_monitor_find_device (serve->monitor, spec, error);
  if (found == NULL)
    return FALSE;
  ok = add_found (serve, found, error);
  libusb_unref_device (found);
  return ok;
}

static gboolean
add_found (Serve *serve, libusb_device *found, GError **error)
{
  g_autoptr(PbUsbDevice) device = NULL;
  struct libusb_device_descriptor d;

  device = pb_usb_device_new (serve->monitor, found, error);
  if (device != NULL && libusb_get_device_descriptor (found, &d) == 0)
    {
      g_autofree char *description = g_strdup_printf ("USB device %04x:%04x", d.idVendor, d.idProduct);
      pb_device_set_description (PB_DEVICE (device), description);
    }
  if (device == NULL || !pb_server_add_device (serve->server, PB_DEVICE (device), error))
    return FALSE;
  g_signal_connect (device, "vanished", G_CALLBACK (on_device_vanished), serve);
  g_ptr_array_add (serve->owners, g_steal_pointer (&device));
  return TRUE;
}

static void
on_session_opened (PbServer *server, PbExportSession *session, gpointer user_data)
{
  Serve *serve = user_data;
  PbDevice *device = pb_export_session_get_device (session);

  printf ("import %s (%s) by %s\n", pb_device_get_busid (device), pb_device_get_description (device),
          pb_export_session_get_peer_name (session));
  if (serve->keyboard != NULL && serve->type_text != NULL &&
      device == PB_DEVICE (pb_keyboard_get_device (serve->keyboard)))
    pb_cli_type_later (serve->keyboard, serve->type_text);
}

static void
on_session_closed (PbServer *server, PbExportSession *session, const GError *reason, gpointer user_data)
{
  PbDevice *device = pb_export_session_get_device (session);
  PbExportSessionStats stats;

  pb_export_session_get_stats (session, &stats);
  printf ("close %s by %s: %s (%" G_GUINT64_FORMAT " URBs, %" G_GUINT64_FORMAT " bytes out, %" G_GUINT64_FORMAT
          " bytes in)\n",
          pb_device_get_busid (device), pb_export_session_get_peer_name (session),
          reason != NULL ? reason->message : "closed", stats.urbs_submitted, stats.bytes_to_device,
          stats.bytes_from_device);
}

static void
on_request_rejected (PbServer *server, const char *peer, const GError *reason, gpointer user_data)
{
  printf ("reject %s: %s\n", peer, reason->message);
}

static gboolean
on_quit_signal (gpointer user_data)
{
  Serve *serve = user_data;

  g_main_loop_quit (serve->loop);
  return G_SOURCE_CONTINUE;
}

int
pb_cli_serve (int argc, char **argv)
{
  g_autofree char *listen_address = NULL;
  gint port = PB_USBIP_DEFAULT_PORT;
  g_auto(GStrv) virtual_specs = NULL;
  g_auto(GStrv) share_specs = NULL;
  g_autofree char *type_text = NULL;
  gboolean type_stdin = FALSE;
  g_autoptr(GError) error = NULL;
  g_autoptr(GOptionContext) context = NULL;
  Serve serve = { 0 };
  GOptionEntry entries[] = {
    { "listen", 'l', 0, G_OPTION_ARG_STRING, &listen_address, "Listen on this IP address only (default: all, IPv4 and IPv6)", "ADDR" },
    { "port", 'p', 0, G_OPTION_ARG_INT, &port, "TCP port (default 3240; 0 picks a free one)", "N" },
    { "virtual", 0, 0, G_OPTION_ARG_STRING_ARRAY, &virtual_specs,
      "Serve a virtual device: msc[:IMAGE[,ro]], keyboard, serial[:pty] (repeatable)", "SPEC" },
    { "share", 0, 0, G_OPTION_ARG_STRING_ARRAY, &share_specs,
      "Share a USB device of this machine, by bus ID or VID:PID (see plugboard list -l; repeatable)", "BUSID" },
    { "type", 0, 0, G_OPTION_ARG_STRING, &type_text, "Text the virtual keyboard types each time it is imported (2 s later, once the host's driver is ready)", "TEXT" },
    { "type-stdin", 0, 0, G_OPTION_ARG_NONE, &type_stdin, "The virtual keyboard types what arrives on standard input, as it arrives", NULL },
    { NULL }
  };
  int status = PB_EXIT_OK;

  context = g_option_context_new ("— serve virtual USB devices over USB/IP");
  g_option_context_add_main_entries (context, entries, NULL);
  g_option_context_set_description (context,
    "With no --virtual and no --share, serves the three built-in devices: a disk on an\n"
    "embedded 16 MiB FAT image (msc), a keyboard and an echoing serial port.\n\n"
    "--share exports a real device through libusb (no usbip-host module): while a client has\n"
    "it, its kernel drivers are detached, and given back when the client lets go. Needs\n"
    "write access to /dev/bus/usb (root, or a udev rule).\n\n"
    "Devices:\n"
    "  msc               disk on the embedded demo image (in memory, writable, lost at exit)\n"
    "  msc:IMAGE         disk backed by IMAGE (a file or block device, size a multiple of 512)\n"
    "  msc:IMAGE,ro      the same, read-only (writes fail with DATA PROTECT)\n"
    "  keyboard          HID boot keyboard (US layout); see --type and --type-stdin\n"
    "  serial            CDC-ACM serial port that echoes what the host sends\n"
    "  serial:pty        CDC-ACM serial port bridged to a pseudo-terminal printed at start\n\n"
    "Virtual devices get bus IDs 100-1, 100-2, … in the order given. Each import and each\n"
    "closed connection is logged as one line on standard output. SIGINT/SIGTERM stop.\n\n"
    "Examples:\n"
    "  plugboard serve\n"
    "  plugboard serve --virtual msc:disk.img --virtual keyboard --type 'hello\\n'\n"
    "  sudo usbip attach -r SERVER -b 100-1        # on the client, with Linux's usbip tools");
  if (!g_option_context_parse (context, &argc, &argv, &error))
    {
      fprintf (stderr, "plugboard serve: %s\n", error->message);
      return PB_EXIT_USAGE;
    }
  if (argc > 1)
    {
      fprintf (stderr, "plugboard serve: unexpected argument “%s”\n", argv[1]);
      return PB_EXIT_USAGE;
    }
  if (port < 0 || port > 65535)
    {
      fprintf (stderr, "plugboard serve: port %d is out of range\n", port);
      return PB_EXIT_USAGE;
    }
  if (type_text != NULL)
    {
      /* Let shells pass "\n" and "\t" literally. */
      g_autofree char *compressed = g_strcompress (type_text);
      g_free (type_text);
      type_text = g_steal_pointer (&compressed);
    }

  /* One line per event, even into a pipe. */
  setvbuf (stdout, NULL, _IOLBF, 0);

  serve.server = pb_server_new ();
  serve.owners = g_ptr_array_new_with_free_func (g_object_unref);
  serve.type_text = type_text;

  serve.share_specs = share_specs;
  for (guint i = 0; share_specs != NULL && share_specs[i] != NULL && error == NULL; i++)
    add_shared (&serve, share_specs[i], &error);
  if (error == NULL && (share_specs == NULL || share_specs[0] == NULL) &&
      (virtual_specs == NULL || virtual_specs[0] == NULL))
    {
      static const char *const defaults[] = { "msc", "keyboard", "serial", NULL };
      for (guint i = 0; defaults[i] != NULL && error == NULL; i++)
        add_virtual (&serve, defaults[i], &error);
    }
  else
    for (guint i = 0; virtual_specs != NULL && virtual_specs[i] != NULL && error == NULL; i++)
      add_virtual (&serve, virtual_specs[i], &error);
  if (error != NULL)
    {
      fprintf (stderr, "plugboard serve: %s\n", error->message);
      status = pb_cli_exit_code_for_error (error);
      goto out;
    }

  if (type_stdin && serve.keyboard != NULL)
    pb_cli_type_from_stdin (serve.keyboard);
  g_signal_connect (serve.server, "session-opened", G_CALLBACK (on_session_opened), &serve);
  g_signal_connect (serve.server, "session-closed", G_CALLBACK (on_session_closed), &serve);
  g_signal_connect (serve.server, "request-rejected", G_CALLBACK (on_request_rejected), &serve);

  if (!pb_server_listen (serve.server, listen_address, (guint16) port, &error))
    {
      fprintf (stderr, "plugboard serve: %s\n", error->message);
      status = PB_EXIT_FAILURE;
      goto out;
    }
  printf ("listening on %s port %u\n", listen_address != NULL ? listen_address : "all addresses",
          pb_server_get_port (serve.server));
  {
    GPtrArray *devices = pb_server_get_devices (serve.server);
    for (guint i = 0; i < devices->len; i++)
      printf ("exporting %s: %s\n", pb_device_get_busid (devices->pdata[i]),
              pb_device_get_description (devices->pdata[i]));
  }

  serve.loop = g_main_loop_new (NULL, FALSE);
  g_unix_signal_add (SIGINT, on_quit_signal, &serve);
  g_unix_signal_add (SIGTERM, on_quit_signal, &serve);
  g_main_loop_run (serve.loop);
  printf ("stopping\n");

out:
  /* Closes sessions; each device completes and closes before the objects go. */
  pb_server_stop (serve.server);
  {
    gint64 deadline = g_get_monotonic_time () + 2 * G_USEC_PER_SEC;
    while (g_get_monotonic_time () < deadline)
      {
        g_autoptr(GPtrArray) sessions = pb_server_get_sessions (serve.server);
        if (sessions->len == 0)
          break;
        g_main_context_iteration (NULL, FALSE);
        g_usleep (1000);
      }
  }
  g_clear_object (&serve.server);
  g_clear_pointer (&serve.owners, g_ptr_array_unref);
  g_clear_object (&serve.monitor);
  g_clear_pointer (&serve.loop, g_main_loop_unref);
  return status;
}
