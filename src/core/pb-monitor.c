#define G_LOG_DOMAIN "plugboard"

#include "pb-monitor.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "pb-error.h"

/* What the event thread hands the main context: a finished transfer (done != NULL), or a
 * hot-plug event (busid, arrived). */
typedef struct {
  PbMonitorTransferDone done;
  gpointer user_data;
  PbMonitor *monitor;
  struct libusb_transfer *transfer;
  char *busid;
  gboolean arrived;
} Ticket;

struct _PbMonitor {
  GObject parent_instance;

  libusb_context *usb;
  GThread *event_thread;
  gint stopping;         /* atomic: tells the event thread to end */

  GMutex lock;
  GQueue finished;       /* Ticket *, guarded by lock */
  int wake_fd;           /* eventfd: the event thread's knock on the main context */
  GSource *source;
  libusb_hotplug_callback_handle hotplug;
  gboolean has_hotplug;
};

G_DEFINE_FINAL_TYPE (PbMonitor, pb_monitor, G_TYPE_OBJECT)

enum { SIGNAL_DEVICE_ADDED, SIGNAL_DEVICE_REMOVED, N_SIGNALS };
static guint signals[N_SIGNALS];

/* ---- the event thread ---- */

static gpointer
event_thread_main (gpointer data)
{
  PbMonitor *self = data;

  while (!g_atomic_int_get (&self->stopping))
    {
      int rc = libusb_handle_events_completed (self->usb, &self->stopping);
      if (rc < 0 && rc != LIBUSB_ERROR_INTERRUPTED)
        {
          g_warning ("libusb event handling: %s", libusb_strerror (rc));
          g_usleep (10000); /* do not spin on a persistent error */
        }
    }
  return NULL;
}

static void
hand_over (PbMonitor *self, Ticket *ticket)
{
  guint64 one = 1;

  g_mutex_lock (&self->lock);
  g_queue_push_tail (&self->finished, ticket);
  g_mutex_unlock (&self->lock);
  if (write (self->wake_fd, &one, sizeof one) < 0 && errno != EAGAIN)
    g_warning ("monitor: cannot wake the main context: %s", g_strerror (errno));
}

/* Runs on the event thread (libusb calls it from event handling): queue and knock. */
static int LIBUSB_CALL
on_hotplug (libusb_context *usb, libusb_device *device, libusb_hotplug_event event, void *user_data)
{
  PbMonitor *self = user_data;
  Ticket *ticket = g_new0 (Ticket, 1);

  /* No reference here: this may run while the monitor is being finalized (which deregisters
   * the callback, then drops what is queued). */
  ticket->busid = pb_monitor_device_busid (device);
  ticket->arrived = event == LIBUSB_HOTPLUG_EVENT_DEVICE_ARRIVED;
  hand_over (self, ticket);
  return 0; /* stay registered */
}

/* Runs on the event thread: queue the ticket and knock. Nothing else. */
static void LIBUSB_CALL
on_transfer_finished (struct libusb_transfer *transfer)
{
  Ticket *ticket = transfer->user_data;

  hand_over (ticket->monitor, ticket);
}

/* ---- the main context ---- */

static gboolean
on_wake (gpointer user_data)
{
  PbMonitor *self = user_data;
  guint64 count;
  GQueue batch = G_QUEUE_INIT;
  Ticket *ticket;

  if (read (self->wake_fd, &count, sizeof count) < 0 && errno != EAGAIN)
    g_warning ("monitor: reading the wake-up: %s", g_strerror (errno));
  g_mutex_lock (&self->lock);
  batch = self->finished;
  g_queue_init (&self->finished);
  g_mutex_unlock (&self->lock);

  g_object_ref (self); /* a ticket may hold the last reference */
  while ((ticket = g_queue_pop_head (&batch)) != NULL)
    {
      if (ticket->done != NULL)
        {
          ticket->done (ticket->transfer, ticket->user_data);
          g_object_unref (ticket->monitor);
        }
      else
        g_signal_emit (self, signals[ticket->arrived ? SIGNAL_DEVICE_ADDED : SIGNAL_DEVICE_REMOVED], 0, ticket->busid);
      g_free (ticket->busid);
      g_free (ticket);
    }
  g_object_unref (self);
  return G_SOURCE_CONTINUE;
}

int
pb_monitor_submit_transfer (PbMonitor *self, struct libusb_transfer *transfer, PbMonitorTransferDone done,
                            gpointer user_data)
{
  Ticket *ticket = g_new0 (Ticket, 1);
  int rc;

  ticket->done = done;
  ticket->user_data = user_data;
  ticket->monitor = g_object_ref (self);
  ticket->transfer = transfer;
  transfer->callback = on_transfer_finished;
  transfer->user_data = ticket;
  rc = libusb_submit_transfer (transfer);
  if (rc < 0)
    {
      g_object_unref (ticket->monitor);
      g_free (ticket);
    }
  return rc;
}

/* ---- devices ---- */

char *
pb_monitor_device_busid (libusb_device *device)
{
  guint8 ports[8];
  int n = libusb_get_port_numbers (device, ports, G_N_ELEMENTS (ports));
  GString *busid = g_string_new (NULL);

  g_string_printf (busid, "%u-", libusb_get_bus_number (device));
  if (n <= 0)
    g_string_append (busid, "0"); /* a root hub; never listed */
  for (int i = 0; i < n; i++)
    g_string_append_printf (busid, "%s%u", i > 0 ? "." : "", ports[i]);
  return g_string_free (busid, FALSE);
}

char *
pb_monitor_device_sysfs_path (libusb_device *device)
{
  g_autofree char *busid = pb_monitor_device_busid (device);
  g_autofree char *link = g_build_filename ("/sys/bus/usb/devices", busid, NULL);
  char *real = realpath (link, NULL);
  char *path = real != NULL ? g_strdup (real) : g_canonicalize_filename (link, NULL);

  free (real);
  return path;
}

gboolean
pb_monitor_device_is_imported (libusb_device *device)
{
  g_autofree char *path = pb_monitor_device_sysfs_path (device);

  return strstr (path, "/vhci_hcd") != NULL;
}

GPtrArray *
pb_monitor_list_devices (PbMonitor *self, GError **error)
{
  libusb_device **list = NULL;
  ssize_t n = libusb_get_device_list (self->usb, &list);
  GPtrArray *devices;

  if (n < 0)
    {
      g_set_error (error, PB_ERROR, PB_ERROR_FAILED, "cannot list USB devices: %s", libusb_strerror ((int) n));
      return NULL;
    }
  devices = g_ptr_array_new_with_free_func ((GDestroyNotify) libusb_unref_device);
  for (ssize_t i = 0; i < n; i++)
    if (libusb_get_parent (list[i]) != NULL || libusb_get_port_number (list[i]) != 0)
      g_ptr_array_add (devices, libusb_ref_device (list[i])); /* root hubs have neither */
  libusb_free_device_list (list, 1);
  return devices;
}

libusb_device *
pb_monitor_find_device (PbMonitor *self, const char *busid_or_ids, GError **error)
{
  g_autoptr(GPtrArray) devices = pb_monitor_list_devices (self, error);
  unsigned vendor = 0, product = 0;
  char tail;
  gboolean by_ids = sscanf (busid_or_ids, "%4x:%4x%c", &vendor, &product, &tail) == 2 &&
                    strchr (busid_or_ids, '-') == NULL;

  if (devices == NULL)
    return NULL;
  for (guint i = 0; i < devices->len; i++)
    {
      libusb_device *device = devices->pdata[i];

      if (by_ids)
        {
          struct libusb_device_descriptor descriptor;
          /* Never a device imported through vhci-hcd: sharing it would loop an export into
           * itself (the QEMU suite saw `--share VID:PID` pick up its own client's import). */
          if (libusb_get_device_descriptor (device, &descriptor) == 0 && descriptor.idVendor == vendor &&
              descriptor.idProduct == product && !pb_monitor_device_is_imported (device))
            return libusb_ref_device (device);
        }
      else
        {
          g_autofree char *busid = pb_monitor_device_busid (device);
          if (g_str_equal (busid, busid_or_ids))
            return libusb_ref_device (device);
        }
    }
  g_set_error (error, PB_ERROR, PB_ERROR_NOT_FOUND, "no local USB device %s", busid_or_ids);
  return NULL;
}

libusb_context *
pb_monitor_get_libusb (PbMonitor *self)
{
  return self->usb;
}

/* ---- life ---- */

static gboolean
wake_source_dispatch (GSource *source, GSourceFunc callback, gpointer user_data)
{
  return callback (user_data);
}

static GSourceFuncs wake_source_funcs = {
  .dispatch = wake_source_dispatch,
};

PbMonitor *
pb_monitor_new (GError **error)
{
  g_autoptr(PbMonitor) self = g_object_new (PB_TYPE_MONITOR, NULL);
  int rc = libusb_init (&self->usb);

  if (rc < 0)
    {
      self->usb = NULL;
      g_set_error (error, PB_ERROR, PB_ERROR_FAILED, "cannot start libusb: %s", libusb_strerror (rc));
      return NULL;
    }
  self->wake_fd = eventfd (0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (self->wake_fd < 0)
    {
      g_set_error (error, PB_ERROR, PB_ERROR_FAILED, "eventfd: %s", g_strerror (errno));
      return NULL;
    }
  self->source = g_source_new (&wake_source_funcs, sizeof (GSource));
  g_source_set_static_name (self->source, "PbMonitor transfers");
  g_source_set_callback (self->source, on_wake, self, NULL);
  g_source_add_unix_fd (self->source, self->wake_fd, G_IO_IN);
  g_source_attach (self->source, g_main_context_get_thread_default ());
  /* Hot-plug needs libusb's udev or netlink monitor; without it, a vanished device is still
   * noticed by its transfers failing. The callback holds no reference: it is deregistered
   * before the monitor goes (finalize). */
  if (libusb_has_capability (LIBUSB_CAP_HAS_HOTPLUG) &&
      libusb_hotplug_register_callback (self->usb,
                                        LIBUSB_HOTPLUG_EVENT_DEVICE_ARRIVED | LIBUSB_HOTPLUG_EVENT_DEVICE_LEFT,
                                        0, LIBUSB_HOTPLUG_MATCH_ANY, LIBUSB_HOTPLUG_MATCH_ANY,
                                        LIBUSB_HOTPLUG_MATCH_ANY, on_hotplug, self, &self->hotplug) == 0)
    self->has_hotplug = TRUE;
  self->event_thread = g_thread_new ("libusb-events", event_thread_main, self);
  return g_steal_pointer (&self);
}

static void
pb_monitor_finalize (GObject *object)
{
  PbMonitor *self = PB_MONITOR (object);

  /* Every ticket holds a reference: no transfer is in flight here. */
  if (self->has_hotplug)
    libusb_hotplug_deregister_callback (self->usb, self->hotplug);
  if (self->event_thread != NULL)
    {
      g_atomic_int_set (&self->stopping, 1);
      libusb_interrupt_event_handler (self->usb);
      g_thread_join (self->event_thread);
    }
  if (self->source != NULL)
    {
      g_source_destroy (self->source);
      g_source_unref (self->source);
    }
  if (self->wake_fd >= 0)
    close (self->wake_fd);
  {
    Ticket *ticket; /* only hot-plug events can be left: transfers hold references */
    while ((ticket = g_queue_pop_head (&self->finished)) != NULL)
      {
        g_free (ticket->busid);
        g_free (ticket);
      }
  }
  if (self->usb != NULL)
    libusb_exit (self->usb);
  g_mutex_clear (&self->lock);
  G_OBJECT_CLASS (pb_monitor_parent_class)->finalize (object);
}

static void
pb_monitor_class_init (PbMonitorClass *klass)
{
  G_OBJECT_CLASS (klass)->finalize = pb_monitor_finalize;

  /* A USB device arrived or left (bus ID), when libusb can tell (see pb_monitor_new). */
  signals[SIGNAL_DEVICE_ADDED] = g_signal_new ("device-added", G_TYPE_FROM_CLASS (klass), G_SIGNAL_RUN_LAST, 0, NULL,
                                               NULL, NULL, G_TYPE_NONE, 1, G_TYPE_STRING);
  signals[SIGNAL_DEVICE_REMOVED] = g_signal_new ("device-removed", G_TYPE_FROM_CLASS (klass), G_SIGNAL_RUN_LAST, 0,
                                                 NULL, NULL, NULL, G_TYPE_NONE, 1, G_TYPE_STRING);
}

static void
pb_monitor_init (PbMonitor *self)
{
  g_mutex_init (&self->lock);
  g_queue_init (&self->finished);
  self->wake_fd = -1;
}
