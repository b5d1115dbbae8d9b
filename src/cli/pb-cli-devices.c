/* Built-in virtual devices from their command-line spec, shared by `serve` and `virtual`. */
#define G_LOG_DOMAIN "plugboard"

#include <errno.h>
#include <glib-unix.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "pb-cli.h"
#include "pb-default-image.h"
#include "pb-mass-storage.h"
#include "pb-serial.h"

static GObject *
make_mass_storage (const char *argument, PbVirtualDevice **device, char **description, GError **error)
{
  g_auto(GStrv) parts = argument != NULL ? g_strsplit (argument, ",", -1) : NULL;
  const char *path = parts != NULL && parts[0][0] != '\0' ? parts[0] : NULL;
  gboolean read_only = FALSE;
  PbMassStorage *storage;
  int fd;

  for (guint i = 1; parts != NULL && parts[i] != NULL; i++)
    {
      if (!g_str_equal (parts[i], "ro"))
        {
          g_set_error (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT, "unknown mass storage option “%s” (known: ro)",
                       parts[i]);
          return NULL;
        }
      read_only = TRUE;
    }

  if (path == NULL)
    fd = pb_default_image_create (error);
  else
    {
      fd = open (path, (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC);
      if (fd < 0)
        {
          int saved = errno;
          g_set_error (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT, "cannot open image %s%s: %s%s", path,
                       read_only ? "" : " for writing", g_strerror (saved),
                       !read_only && (saved == EACCES || saved == EROFS) ? " (add ,ro to serve it read-only)" : "");
        }
    }
  if (fd < 0)
    return NULL;
  storage = pb_mass_storage_new (fd, read_only, error);
  close (fd);
  if (storage == NULL)
    return NULL;
  *device = pb_mass_storage_get_device (storage);
  *description = g_strdup_printf ("virtual disk, %s, %" G_GUINT64_FORMAT " MiB%s", path != NULL ? path : "embedded image",
                                  pb_mass_storage_get_block_count (storage) * 512 / (1024 * 1024),
                                  read_only ? ", read-only" : "");
  return G_OBJECT (storage);
}

GObject *
pb_cli_make_virtual_device (const char *spec, PbVirtualDevice **device, char **description, GError **error)
{
  g_autofree char *kind = NULL;
  const char *colon = strchr (spec, ':');
  const char *argument = colon != NULL ? colon + 1 : NULL;

  kind = colon != NULL ? g_strndup (spec, colon - spec) : g_strdup (spec);

  if (g_str_equal (kind, "msc"))
    return make_mass_storage (argument, device, description, error);

  if (g_str_equal (kind, "keyboard") && argument == NULL)
    {
      PbKeyboard *keyboard = pb_keyboard_new ();
      *device = pb_keyboard_get_device (keyboard);
      *description = g_strdup ("virtual keyboard");
      return G_OBJECT (keyboard);
    }

  if (g_str_equal (kind, "serial") && (argument == NULL || g_str_equal (argument, "pty")))
    {
      PbSerialMode mode = argument != NULL ? PB_SERIAL_MODE_PTY : PB_SERIAL_MODE_ECHO;
      PbSerial *serial = pb_serial_new (mode, error);

      if (serial == NULL)
        return NULL;
      *device = pb_serial_get_device (serial);
      *description = mode == PB_SERIAL_MODE_PTY
                       ? g_strdup_printf ("virtual serial port, pty %s", pb_serial_get_pty_path (serial))
                       : g_strdup ("virtual serial port, echo");
      return G_OBJECT (serial);
    }

  g_set_error (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT,
               "unknown virtual device “%s” (known: msc[:IMAGE[,ro]], keyboard, serial[:pty])", spec);
  return NULL;
}

typedef struct {
  PbKeyboard *keyboard;
  char *text;
} TypeLater;

static void
type_later_free (gpointer data)
{
  TypeLater *later = data;
  g_object_unref (later->keyboard);
  g_free (later->text);
  g_free (later);
}

static gboolean
on_type_later (gpointer data)
{
  TypeLater *later = data;
  g_autoptr(GError) error = NULL;

  if (!pb_keyboard_type_string (later->keyboard, later->text, &error))
    g_printerr ("plugboard: cannot type: %s\n", error->message);
  return G_SOURCE_REMOVE;
}

void
pb_cli_type_later (PbKeyboard *keyboard, const char *text)
{
  TypeLater *later = g_new0 (TypeLater, 1);

  later->keyboard = g_object_ref (keyboard);
  later->text = g_strdup (text);
  /* Linux's HID core drops reports that arrive while hid-generic is still probing, and usbhid
   * starts polling before that ends (seen in the QEMU suite: all keys sent, none delivered).
   * Typing a moment after the import lets the driver finish. */
  g_timeout_add_full (G_PRIORITY_DEFAULT, PB_CLI_TYPE_DELAY_MS, on_type_later, later, type_later_free);
}

/* ---- --type-stdin ---- */

static gboolean
on_stdin_readable (gint fd, GIOCondition condition, gpointer user_data)
{
  PbKeyboard *keyboard = user_data;
  char chunk[512];
  gssize n = read (fd, chunk, sizeof chunk);

  if (n < 0 && (errno == EINTR || errno == EAGAIN))
    return G_SOURCE_CONTINUE;
  if (n <= 0)
    return G_SOURCE_REMOVE; /* end of input (or a broken stdin): typing is over, serving goes on */

  /* One character at a time, so that one untypable byte costs only itself. */
  for (gssize i = 0; i < n; i++)
    {
      char one[2] = { chunk[i], '\0' };
      g_autoptr(GError) error = NULL;

      if (one[0] != '\0' && !pb_keyboard_type_string (keyboard, one, &error))
        g_printerr ("plugboard: not typed: %s\n", error->message);
    }
  return G_SOURCE_CONTINUE;
}

void
pb_cli_type_from_stdin (PbKeyboard *keyboard)
{
  g_unix_fd_add_full (G_PRIORITY_DEFAULT, STDIN_FILENO, G_IO_IN | G_IO_HUP | G_IO_ERR, on_stdin_readable,
                      g_object_ref (keyboard), g_object_unref);
}
