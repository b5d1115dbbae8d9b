#define G_LOG_DOMAIN "plugboard"

#include "pb-vhci.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* Where vhci_hcd.0 (the controller that carries attach, detach, nports and every status file)
 * may live, relative to the sysfs root. */
static const char *const controller_paths[] = {
  "devices/platform/vhci_hcd.0",
  "devices/faux/vhci_hcd.0",
  "bus/platform/devices/vhci_hcd.0",
  "bus/faux/devices/vhci_hcd.0",
};

struct _PbVhci {
  GObject parent_instance;
  char *path;
  guint n_ports;
};

G_DEFINE_FINAL_TYPE (PbVhci, pb_vhci, G_TYPE_OBJECT)

gboolean
pb_vhci_parse_status (const char *text, GArray *ports, GError **error)
{
  g_auto(GStrv) lines = g_strsplit (text, "\n", -1);
  gboolean header_seen = FALSE;

  for (guint i = 0; lines[i] != NULL; i++)
    {
      const char *line = lines[i];
      PbVhciPort port = { 0 };
      char hub[3] = { 0 };
      char busid[PB_USBIP_BUSID_SIZE + 1] = { 0 };
      unsigned int number, state, speed, devid, sockfd;

      if (line[0] == '\0')
        continue;
      if (!header_seen && g_str_has_prefix (line, "hub "))
        {
          header_seen = TRUE;
          continue;
        }
      /* "hs  0000 004 000 00000000 000000 0-0": hub, port, state, speed, devid (hex), sockfd,
       * local bus ID. */
      if (sscanf (line, "%2s %u %u %u %x %u %32s", hub, &number, &state, &speed, &devid, &sockfd, busid) != 7 ||
          (strcmp (hub, "hs") != 0 && strcmp (hub, "ss") != 0))
        {
          g_set_error (error, PB_ERROR, PB_ERROR_PROTOCOL, "cannot read vhci-hcd status line “%s”", line);
          return FALSE;
        }
      port.super_speed_hub = strcmp (hub, "ss") == 0;
      port.port = number;
      port.state = (PbVhciPortState) state;
      port.speed = speed;
      port.devid = devid;
      port.sockfd = sockfd;
      g_strlcpy (port.local_busid, busid, sizeof port.local_busid);
      g_array_append_val (ports, port);
    }
  if (!header_seen)
    {
      g_set_error_literal (error, PB_ERROR, PB_ERROR_PROTOCOL, "vhci-hcd status has no header line");
      return FALSE;
    }
  return TRUE;
}

PbVhci *
pb_vhci_new (const char *sysfs_root, GError **error)
{
  g_autoptr(PbVhci) self = g_object_new (PB_TYPE_VHCI, NULL);
  g_autofree char *nports_path = NULL;
  g_autofree char *nports_text = NULL;
  guint64 nports;

  if (sysfs_root == NULL)
    sysfs_root = "/sys";
  for (gsize i = 0; i < G_N_ELEMENTS (controller_paths) && self->path == NULL; i++)
    {
      g_autofree char *candidate = g_build_filename (sysfs_root, controller_paths[i], NULL);
      g_autofree char *attach = g_build_filename (candidate, "attach", NULL);
      if (g_file_test (attach, G_FILE_TEST_EXISTS))
        self->path = g_steal_pointer (&candidate);
    }
  if (self->path == NULL)
    {
      g_set_error (error, PB_ERROR, PB_ERROR_NOT_FOUND,
                   "no vhci-hcd controller under %s (is the vhci-hcd module loaded? modprobe vhci-hcd)", sysfs_root);
      return NULL;
    }
  nports_path = g_build_filename (self->path, "nports", NULL);
  if (!g_file_get_contents (nports_path, &nports_text, NULL, error))
    return NULL;
  if (!g_ascii_string_to_unsigned (g_strstrip (nports_text), 10, 1, 65535, &nports, error))
    {
      g_prefix_error (error, "%s: ", nports_path);
      return NULL;
    }
  self->n_ports = (guint) nports;
  return g_steal_pointer (&self);
}

const char *
pb_vhci_get_path (PbVhci *self)
{
  g_return_val_if_fail (PB_IS_VHCI (self), NULL);
  return self->path;
}

guint
pb_vhci_get_n_ports (PbVhci *self)
{
  g_return_val_if_fail (PB_IS_VHCI (self), 0);
  return self->n_ports;
}

GArray *
pb_vhci_read_ports (PbVhci *self, GError **error)
{
  g_autoptr(GArray) ports = g_array_new (FALSE, TRUE, sizeof (PbVhciPort));

  g_return_val_if_fail (PB_IS_VHCI (self), NULL);

  /* One status file per controller: "status" for the first, "status.N" for the others. */
  for (guint controller = 0;; controller++)
    {
      g_autofree char *name = controller == 0 ? g_strdup ("status") : g_strdup_printf ("status.%u", controller);
      g_autofree char *path = g_build_filename (self->path, name, NULL);
      g_autofree char *text = NULL;
      g_autoptr(GError) local_error = NULL;

      if (!g_file_get_contents (path, &text, NULL, &local_error))
        {
          if (controller > 0 && g_error_matches (local_error, G_FILE_ERROR, G_FILE_ERROR_NOENT))
            break;
          g_propagate_error (error, g_steal_pointer (&local_error));
          return NULL;
        }
      if (!pb_vhci_parse_status (text, ports, error))
        {
          g_prefix_error (error, "%s: ", path);
          return NULL;
        }
    }
  return g_steal_pointer (&ports);
}

/* Writes text to a sysfs attribute in one write, as the kernel expects. Returns errno or 0. */
static int
write_attribute (const char *directory, const char *name, const char *text)
{
  g_autofree char *path = g_build_filename (directory, name, NULL);
  gsize len = strlen (text);
  int fd = open (path, O_WRONLY | O_CLOEXEC);
  gssize written;
  int saved;

  if (fd < 0)
    return errno;
  written = write (fd, text, len);
  saved = errno;
  close (fd);
  if (written < 0)
    return saved;
  return (gsize) written == len ? 0 : EIO;
}

gboolean
pb_vhci_attach (PbVhci *self, int sockfd, guint32 devid, PbUsbipSpeed speed, guint *port_out, GError **error)
{
  g_autoptr(GArray) ports = NULL;
  gboolean want_super = speed >= PB_USBIP_SPEED_SUPER;

  g_return_val_if_fail (PB_IS_VHCI (self), FALSE);

  if (speed == PB_USBIP_SPEED_UNKNOWN || speed > PB_USBIP_SPEED_SUPER_PLUS)
    {
      g_set_error (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT, "cannot attach a device of speed %u", speed);
      return FALSE;
    }
  ports = pb_vhci_read_ports (self, error);
  if (ports == NULL)
    return FALSE;

  for (guint i = 0; i < ports->len; i++)
    {
      const PbVhciPort *port = &g_array_index (ports, PbVhciPort, i);
      g_autofree char *request = NULL;
      int err;

      /* SuperSpeed devices need SuperSpeed ports, and the rest USB 2 ports. */
      if (port->state != PB_VHCI_PORT_FREE || port->super_speed_hub != want_super)
        continue;
      request = g_strdup_printf ("%u %d %u %u", port->port, sockfd, devid, (guint) speed);
      err = write_attribute (self->path, "attach", request);
      if (err == 0)
        {
          if (port_out != NULL)
            *port_out = port->port;
          return TRUE;
        }
      /* Taken since we read the status: try the next one. */
      if (err == EBUSY)
        continue;
      g_set_error (error, PB_ERROR, PB_ERROR_DEVICE, "vhci-hcd refused to attach to port %u: %s", port->port,
                   g_strerror (err));
      return FALSE;
    }
  g_set_error (error, PB_ERROR, PB_ERROR_BUSY, "no free %s port on vhci-hcd",
               want_super ? "SuperSpeed" : "USB 2");
  return FALSE;
}

gboolean
pb_vhci_detach (PbVhci *self, guint port, GError **error)
{
  g_autofree char *request = g_strdup_printf ("%u", port);
  int err;

  g_return_val_if_fail (PB_IS_VHCI (self), FALSE);

  err = write_attribute (self->path, "detach", request);
  if (err != 0)
    {
      g_set_error (error, PB_ERROR, err == EINVAL ? PB_ERROR_NOT_FOUND : PB_ERROR_DEVICE,
                   "cannot detach vhci-hcd port %u: %s", port, g_strerror (err));
      return FALSE;
    }
  return TRUE;
}

static void
pb_vhci_finalize (GObject *object)
{
  g_free (PB_VHCI (object)->path);
  G_OBJECT_CLASS (pb_vhci_parent_class)->finalize (object);
}

static void
pb_vhci_class_init (PbVhciClass *klass)
{
  G_OBJECT_CLASS (klass)->finalize = pb_vhci_finalize;
}

static void
pb_vhci_init (PbVhci *self)
{
}
