#define G_LOG_DOMAIN "plugboard"

#include "pb-usb-device.h"

#include <string.h>

#include "pb-error.h"

#define MAX_INTERFACES 32

struct _PbUsbDevice {
  PbDevice parent_instance;

  PbMonitor *monitor;
  libusb_device *device;
  libusb_device_handle *handle;   /* while imported */
  char *sysfs_path;
  PbUsbipSpeed speed;

  /* The active configuration as the host set it, and each interface's alternate setting. */
  guint8 configuration;
  guint n_interfaces;
  guint8 alternate[MAX_INTERFACES];
  gboolean claimed[MAX_INTERFACES];
  gboolean had_driver[MAX_INTERFACES]; /* a kernel driver to give back on close */
  PbEndpointType endpoint_types[2][16]; /* [IN?][number] in the current settings */

  guint vanish_idle;              /* pending report of a vanished device */
};

G_DEFINE_FINAL_TYPE (PbUsbDevice, pb_usb_device, PB_TYPE_DEVICE)

/* ---- libusb outcomes as Linux URB statuses ---- */

/* The URB status for a libusb call's result (0 for success). */
static gint32
status_from_libusb_error (int rc)
{
  switch (rc)
    {
    case LIBUSB_SUCCESS: return PB_URB_OK;
    case LIBUSB_ERROR_PIPE: return PB_URB_EPIPE;
    case LIBUSB_ERROR_NO_DEVICE: return PB_URB_ENODEV;
    case LIBUSB_ERROR_TIMEOUT: return PB_URB_ETIMEDOUT;
    case LIBUSB_ERROR_OVERFLOW: return PB_URB_EOVERFLOW;
    case LIBUSB_ERROR_INVALID_PARAM: return PB_URB_EINVAL;
    case LIBUSB_ERROR_NOT_FOUND: return PB_URB_ENOENT;
    default: return PB_URB_EPROTO;
    }
}

static gint32
status_from_transfer (const struct libusb_transfer *transfer, const PbUrb *urb)
{
  switch (transfer->status)
    {
    case LIBUSB_TRANSFER_COMPLETED:
      return PB_URB_OK;
    case LIBUSB_TRANSFER_ERROR:
      /* libusb reports a short packet under SHORT_NOT_OK as an error: Linux says -EREMOTEIO. */
      if ((urb->transfer_flags & PB_USBIP_URB_SHORT_NOT_OK) && (guint32) transfer->actual_length < urb->length)
        return PB_URB_EREMOTEIO;
      return PB_URB_EPROTO;
    case LIBUSB_TRANSFER_TIMED_OUT: return PB_URB_ETIMEDOUT;
    case LIBUSB_TRANSFER_CANCELLED: return PB_URB_ECONNRESET;
    case LIBUSB_TRANSFER_STALL: return PB_URB_EPIPE;
    case LIBUSB_TRANSFER_NO_DEVICE: return PB_URB_ESHUTDOWN;
    case LIBUSB_TRANSFER_OVERFLOW: return PB_URB_EOVERFLOW;
    default: return PB_URB_EPROTO;
    }
}

static gint32
status_from_iso_packet (enum libusb_transfer_status status)
{
  switch (status)
    {
    case LIBUSB_TRANSFER_COMPLETED: return PB_URB_OK;
    case LIBUSB_TRANSFER_STALL: return PB_URB_EPIPE;
    case LIBUSB_TRANSFER_OVERFLOW: return PB_URB_EOVERFLOW;
    case LIBUSB_TRANSFER_NO_DEVICE: return PB_URB_ESHUTDOWN;
    case LIBUSB_TRANSFER_CANCELLED: return PB_URB_ECONNRESET;
    default: return PB_URB_EILSEQ;
    }
}

/* ---- descriptors ---- */

static PbUsbipSpeed
speed_from_libusb (int speed)
{
  switch (speed)
    {
    case LIBUSB_SPEED_LOW: return PB_USBIP_SPEED_LOW;
    case LIBUSB_SPEED_FULL: return PB_USBIP_SPEED_FULL;
    case LIBUSB_SPEED_HIGH: return PB_USBIP_SPEED_HIGH;
    case LIBUSB_SPEED_SUPER: return PB_USBIP_SPEED_SUPER;
#if LIBUSB_API_VERSION >= 0x01000107
    case LIBUSB_SPEED_SUPER_PLUS: return PB_USBIP_SPEED_SUPER_PLUS;
#endif
    default: return PB_USBIP_SPEED_UNKNOWN;
    }
}

/* Endpoint types of the configuration in use with the alternate settings in use. */
static void
refresh_endpoints (PbUsbDevice *self)
{
  struct libusb_config_descriptor *config = NULL;

  memset (self->endpoint_types, 0xff, sizeof self->endpoint_types); /* PB_ENDPOINT_UNKNOWN */
  self->endpoint_types[0][0] = self->endpoint_types[1][0] = PB_ENDPOINT_CONTROL;
  self->n_interfaces = 0;
  if (self->configuration == 0 || libusb_get_config_descriptor_by_value (self->device, self->configuration, &config) < 0)
    return;
  self->n_interfaces = MIN (config->bNumInterfaces, MAX_INTERFACES);
  for (guint i = 0; i < self->n_interfaces; i++)
    {
      const struct libusb_interface *interface = &config->interface[i];
      for (int a = 0; a < interface->num_altsetting; a++)
        {
          const struct libusb_interface_descriptor *alt = &interface->altsetting[a];
          if (alt->bAlternateSetting != self->alternate[i])
            continue;
          for (guint e = 0; e < alt->bNumEndpoints; e++)
            {
              guint8 address = alt->endpoint[e].bEndpointAddress;
              self->endpoint_types[(address & 0x80) ? 1 : 0][address & 0x0f] =
                (PbEndpointType) (alt->endpoint[e].bmAttributes & 0x03);
            }
        }
    }
  libusb_free_config_descriptor (config);
}

static void
pb_usb_device_describe (PbDevice *device, PbUsbipDeviceRecord *record)
{
  PbUsbDevice *self = PB_USB_DEVICE (device);
  struct libusb_device_descriptor descriptor;
  struct libusb_config_descriptor *config = NULL;

  g_strlcpy (record->path, self->sysfs_path, sizeof record->path);
  record->speed = self->speed;
  if (libusb_get_device_descriptor (self->device, &descriptor) == 0)
    {
      record->id_vendor = descriptor.idVendor;
      record->id_product = descriptor.idProduct;
      record->bcd_device = descriptor.bcdDevice;
      record->device_class = descriptor.bDeviceClass;
      record->device_subclass = descriptor.bDeviceSubClass;
      record->device_protocol = descriptor.bDeviceProtocol;
      record->num_configurations = descriptor.bNumConfigurations;
    }
  if (libusb_get_active_config_descriptor (self->device, &config) == 0)
    {
      record->configuration_value = config->bConfigurationValue;
      record->num_interfaces = config->bNumInterfaces;
      for (guint i = 0; i < config->bNumInterfaces && i < G_N_ELEMENTS (record->interfaces); i++)
        if (config->interface[i].num_altsetting > 0)
          {
            const struct libusb_interface_descriptor *alt = &config->interface[i].altsetting[0];
            record->interfaces[i].interface_class = alt->bInterfaceClass;
            record->interfaces[i].interface_subclass = alt->bInterfaceSubClass;
            record->interfaces[i].interface_protocol = alt->bInterfaceProtocol;
          }
      libusb_free_config_descriptor (config);
    }
}

static PbEndpointType
pb_usb_device_get_endpoint_type (PbDevice *device, guint ep, PbUsbipDirection direction)
{
  PbUsbDevice *self = PB_USB_DEVICE (device);

  if (ep > 15)
    return PB_ENDPOINT_UNKNOWN;
  return self->endpoint_types[direction == PB_USBIP_DIR_IN ? 1 : 0][ep];
}

/* ---- interfaces: take them from the kernel's drivers and give them back ---- */

static void
release_interfaces (PbUsbDevice *self)
{
  for (guint i = 0; i < MAX_INTERFACES; i++)
    {
      if (self->claimed[i])
        libusb_release_interface (self->handle, (int) i);
      self->claimed[i] = FALSE;
    }
}

static void
give_back_drivers (PbUsbDevice *self)
{
  for (guint i = 0; i < MAX_INTERFACES; i++)
    {
      if (self->had_driver[i])
        libusb_attach_kernel_driver (self->handle, (int) i);
      self->had_driver[i] = FALSE;
    }
}

/* Claims every interface of the configuration in use, detaching kernel drivers first. */
static gboolean
claim_interfaces (PbUsbDevice *self, GError **error)
{
  for (guint i = 0; i < self->n_interfaces; i++)
    {
      int rc;

      if (libusb_kernel_driver_active (self->handle, (int) i) == 1)
        {
          rc = libusb_detach_kernel_driver (self->handle, (int) i);
          if (rc < 0 && rc != LIBUSB_ERROR_NOT_FOUND)
            {
              g_set_error (error, PB_ERROR, PB_ERROR_DEVICE, "cannot detach the kernel driver of interface %u: %s", i,
                           libusb_strerror (rc));
              return FALSE;
            }
          self->had_driver[i] = TRUE;
        }
      rc = libusb_claim_interface (self->handle, (int) i);
      if (rc < 0)
        {
          g_set_error (error, PB_ERROR, rc == LIBUSB_ERROR_BUSY ? PB_ERROR_BUSY : PB_ERROR_DEVICE,
                       "cannot claim interface %u: %s", i, libusb_strerror (rc));
          return FALSE;
        }
      self->claimed[i] = TRUE;
    }
  return TRUE;
}

static gboolean
pb_usb_device_open (PbDevice *device, GError **error)
{
  PbUsbDevice *self = PB_USB_DEVICE (device);
  int configuration = 0;
  int rc = libusb_open (self->device, &self->handle);

  if (rc < 0)
    {
      self->handle = NULL;
      g_set_error (error, PB_ERROR, rc == LIBUSB_ERROR_NO_DEVICE ? PB_ERROR_NOT_FOUND : PB_ERROR_DEVICE,
                   "cannot open %s: %s", pb_device_get_busid (device), libusb_strerror (rc));
      return FALSE;
    }
  memset (self->alternate, 0, sizeof self->alternate);
  if (libusb_get_configuration (self->handle, &configuration) < 0)
    configuration = 0;
  self->configuration = (guint8) configuration;
  refresh_endpoints (self);
  if (!claim_interfaces (self, error))
    {
      release_interfaces (self);
      give_back_drivers (self);
      g_clear_pointer (&self->handle, libusb_close);
      return FALSE;
    }
  return TRUE;
}

static void
pb_usb_device_close (PbDevice *device)
{
  PbUsbDevice *self = PB_USB_DEVICE (device);

  if (self->handle == NULL)
    return;
  release_interfaces (self);
  give_back_drivers (self);
  g_clear_pointer (&self->handle, libusb_close);
}

/* ---- transfers ---- */

static gboolean
report_vanished (gpointer user_data)
{
  PbUsbDevice *self = user_data;

  self->vanish_idle = 0;
  pb_device_vanished (PB_DEVICE (self));
  return G_SOURCE_REMOVE;
}

/* The hardware is gone. Reported from an idle: the session closes in answer, which cancels
 * URBs, and that must not happen inside a completion or a submit. */
static void
device_gone (PbUsbDevice *self)
{
  if (self->vanish_idle == 0 && !pb_device_is_vanished (PB_DEVICE (self)))
    self->vanish_idle = g_idle_add_full (G_PRIORITY_DEFAULT, report_vanished, g_object_ref (self), g_object_unref);
}

static void
on_monitor_device_removed (PbMonitor *monitor, const char *busid, gpointer user_data)
{
  PbUsbDevice *self = user_data;

  if (g_strcmp0 (busid, pb_device_get_busid (PB_DEVICE (self))) == 0)
    device_gone (self);
}

static void
on_transfer_done (struct libusb_transfer *transfer, gpointer user_data)
{
  PbUrb *urb = user_data;
  PbUsbDevice *self = urb->device_data;
  gint32 status = status_from_transfer (transfer, urb);
  guint32 actual = (guint32) MAX (transfer->actual_length, 0);

  urb->device_data = NULL;
  urb->device_link.data = NULL;
  if (transfer->type == LIBUSB_TRANSFER_TYPE_CONTROL)
    {
      /* libusb's control buffer starts with the setup packet. */
      actual = MIN (actual, urb->length);
      if (urb->direction == PB_USBIP_DIR_IN && actual > 0)
        memcpy (urb->buffer, libusb_control_transfer_get_data (transfer), actual);
      g_free (transfer->buffer);
    }
  else if (transfer->type == LIBUSB_TRANSFER_TYPE_ISOCHRONOUS)
    {
      guint errors = 0;
      actual = 0;
      for (guint i = 0; i < urb->n_iso_packets; i++)
        {
          const struct libusb_iso_packet_descriptor *packet = &transfer->iso_packet_desc[i];
          urb->iso_packets[i].actual_length = packet->actual_length;
          urb->iso_packets[i].status = status_from_iso_packet (packet->status);
          errors += packet->status != LIBUSB_TRANSFER_COMPLETED;
          actual += packet->actual_length;
        }
      urb->error_count = (gint32) errors;
    }
  if (transfer->status == LIBUSB_TRANSFER_NO_DEVICE)
    device_gone (self);
  libusb_free_transfer (transfer);
  pb_urb_complete (urb, status, MIN (actual, urb->length));
  g_object_unref (self);
}

static void
submit_transfer (PbUsbDevice *self, PbUrb *urb, struct libusb_transfer *transfer)
{
  int rc;

  /* device_data: us, with a reference until libusb gives the transfer back; device_link.data:
   * the transfer, for a cancel. */
  urb->device_data = g_object_ref (self);
  urb->device_link.data = transfer;
  rc = pb_monitor_submit_transfer (self->monitor, transfer, on_transfer_done, urb);
  if (rc < 0)
    {
      urb->device_data = NULL;
      urb->device_link.data = NULL;
      if (transfer->type == LIBUSB_TRANSFER_TYPE_CONTROL)
        g_free (transfer->buffer);
      libusb_free_transfer (transfer);
      if (rc == LIBUSB_ERROR_NO_DEVICE)
        device_gone (self);
      pb_urb_complete (urb, rc == LIBUSB_ERROR_NO_DEVICE ? PB_URB_ESHUTDOWN : status_from_libusb_error (rc), 0);
      g_object_unref (self);
      return;
    }
}

/* Requests the kernel's stub carries out itself instead of forwarding them (PROTOCOL.md):
 * they change state libusb must know about. TRUE when urb was one of them (and is complete). */
static gboolean
handle_standard_request (PbUsbDevice *self, PbUrb *urb)
{
  guint8 type = pb_urb_setup_request_type (urb), request = pb_urb_setup_request (urb);
  guint16 value = pb_urb_setup_value (urb), index = pb_urb_setup_index (urb);
  int rc;

  if (type == 0x00 && request == 0x09) /* SET_CONFIGURATION */
    {
      g_autoptr(GError) error = NULL;
      release_interfaces (self);
      rc = libusb_set_configuration (self->handle, value);
      if (rc == 0)
        {
          self->configuration = (guint8) value;
          memset (self->alternate, 0, sizeof self->alternate);
          refresh_endpoints (self);
          if (!claim_interfaces (self, &error))
            {
              g_warning ("%s: after SET_CONFIGURATION %u: %s", pb_device_get_busid (PB_DEVICE (self)), value,
                         error->message);
              rc = LIBUSB_ERROR_IO;
            }
        }
      pb_urb_complete (urb, status_from_libusb_error (rc), 0);
      return TRUE;
    }
  if (type == 0x01 && request == 0x0b) /* SET_INTERFACE */
    {
      rc = index < MAX_INTERFACES ? libusb_set_interface_alt_setting (self->handle, index, value)
                                  : LIBUSB_ERROR_INVALID_PARAM;
      if (rc == 0)
        {
          self->alternate[index] = (guint8) value;
          refresh_endpoints (self);
        }
      pb_urb_complete (urb, status_from_libusb_error (rc), 0);
      return TRUE;
    }
  if (type == 0x02 && request == 0x01 && value == 0) /* CLEAR_FEATURE(ENDPOINT_HALT) */
    {
      rc = libusb_clear_halt (self->handle, (unsigned char) (index & 0xff));
      pb_urb_complete (urb, status_from_libusb_error (rc), 0);
      return TRUE;
    }
  if (type == 0x23 && request == 0x03 && value == 4) /* SET_FEATURE(PORT_RESET) to a port */
    {
      rc = libusb_reset_device (self->handle);
      pb_urb_complete (urb, status_from_libusb_error (rc), 0);
      return TRUE;
    }
  return FALSE;
}

static void
pb_usb_device_submit (PbDevice *device, PbUrb *urb)
{
  PbUsbDevice *self = PB_USB_DEVICE (device);
  guint8 address = (guint8) (urb->ep | (urb->direction == PB_USBIP_DIR_IN ? 0x80 : 0));
  struct libusb_transfer *transfer;

  if (self->handle == NULL)
    {
      pb_urb_complete (urb, PB_URB_ESHUTDOWN, 0);
      return;
    }
  switch (urb->ep == 0 ? PB_ENDPOINT_CONTROL : urb->type)
    {
    case PB_ENDPOINT_CONTROL:
      {
        guint8 *buffer;

        if (handle_standard_request (self, urb))
          return;
        if (urb->length > G_MAXUINT16)
          {
            pb_urb_complete (urb, PB_URB_EINVAL, 0);
            return;
          }
        /* libusb wants the setup packet in front of the data: one copy, bounded by 64 KiB. */
        buffer = g_malloc (LIBUSB_CONTROL_SETUP_SIZE + urb->length);
        memcpy (buffer, urb->setup, LIBUSB_CONTROL_SETUP_SIZE);
        buffer[6] = urb->length & 0xff; /* wLength follows the buffer the host gave */
        buffer[7] = urb->length >> 8;
        if (urb->direction == PB_USBIP_DIR_OUT && urb->length > 0)
          memcpy (buffer + LIBUSB_CONTROL_SETUP_SIZE, urb->buffer, urb->length);
        transfer = libusb_alloc_transfer (0);
        libusb_fill_control_transfer (transfer, self->handle, buffer, NULL, NULL, 0);
        submit_transfer (self, urb, transfer);
        return;
      }
    case PB_ENDPOINT_BULK:
    case PB_ENDPOINT_INTERRUPT:
      transfer = libusb_alloc_transfer (0);
      if (urb->type == PB_ENDPOINT_BULK)
        libusb_fill_bulk_transfer (transfer, self->handle, address, urb->buffer, (int) urb->length, NULL, NULL, 0);
      else
        libusb_fill_interrupt_transfer (transfer, self->handle, address, urb->buffer, (int) urb->length, NULL, NULL, 0);
      if (urb->transfer_flags & PB_USBIP_URB_SHORT_NOT_OK)
        transfer->flags |= LIBUSB_TRANSFER_SHORT_NOT_OK;
      if (urb->transfer_flags & PB_USBIP_URB_ZERO_PACKET)
        transfer->flags |= LIBUSB_TRANSFER_ADD_ZERO_PACKET;
      submit_transfer (self, urb, transfer);
      return;
    case PB_ENDPOINT_ISOCHRONOUS:
      {
        guint32 offset = 0;

        /* libusb lays packets end to end; so does Linux. Other layouts are refused. */
        for (guint i = 0; i < urb->n_iso_packets; i++)
          {
            if (urb->iso_packets[i].offset != offset)
              {
                pb_urb_complete (urb, PB_URB_EINVAL, 0);
                return;
              }
            offset += urb->iso_packets[i].length;
          }
        if (offset > urb->length)
          {
            pb_urb_complete (urb, PB_URB_EINVAL, 0);
            return;
          }
        transfer = libusb_alloc_transfer ((int) urb->n_iso_packets);
        libusb_fill_iso_transfer (transfer, self->handle, address, urb->buffer, (int) urb->length,
                                  (int) urb->n_iso_packets, NULL, NULL, 0);
        for (guint i = 0; i < urb->n_iso_packets; i++)
          transfer->iso_packet_desc[i].length = urb->iso_packets[i].length;
        submit_transfer (self, urb, transfer);
        return;
      }
    default:
      pb_urb_complete (urb, PB_URB_EPIPE, 0);
      return;
    }
}

static void
pb_usb_device_cancel (PbDevice *device, PbUrb *urb)
{
  /* The URB completes when libusb gives the transfer back (CANCELLED, or done after all). */
  if (urb->device_data != NULL && urb->device_link.data != NULL)
    libusb_cancel_transfer (urb->device_link.data);
}

/* ---- life ---- */

PbUsbDevice *
pb_usb_device_new (PbMonitor *monitor, libusb_device *device, GError **error)
{
  g_autoptr(PbUsbDevice) self = g_object_new (PB_TYPE_USB_DEVICE, NULL);
  g_autofree char *busid = pb_monitor_device_busid (device);
  struct libusb_device_descriptor descriptor;

  if (libusb_get_device_descriptor (device, &descriptor) < 0)
    {
      g_set_error (error, PB_ERROR, PB_ERROR_DEVICE, "cannot read the descriptor of %s", busid);
      return NULL;
    }
  self->monitor = g_object_ref (monitor);
  self->device = libusb_ref_device (device);
  self->speed = speed_from_libusb (libusb_get_device_speed (device));
  self->sysfs_path = pb_monitor_device_sysfs_path (device);
  pb_device_set_address (PB_DEVICE (self), libusb_get_bus_number (device), libusb_get_device_address (device), busid);
  g_signal_connect_object (monitor, "device-removed", G_CALLBACK (on_monitor_device_removed), self, 0);
  return g_steal_pointer (&self);
}

const char *
pb_usb_device_get_sysfs_path (PbUsbDevice *self)
{
  return self->sysfs_path;
}

static void
pb_usb_device_finalize (GObject *object)
{
  PbUsbDevice *self = PB_USB_DEVICE (object);

  /* Each transfer holds a reference: none is in flight here. */
  if (self->handle != NULL)
    pb_usb_device_close (PB_DEVICE (self));
  g_clear_pointer (&self->device, libusb_unref_device);
  g_clear_object (&self->monitor);
  g_free (self->sysfs_path);
  G_OBJECT_CLASS (pb_usb_device_parent_class)->finalize (object);
}

static void
pb_usb_device_class_init (PbUsbDeviceClass *klass)
{
  PbDeviceClass *device_class = PB_DEVICE_CLASS (klass);

  G_OBJECT_CLASS (klass)->finalize = pb_usb_device_finalize;
  device_class->describe = pb_usb_device_describe;
  device_class->get_endpoint_type = pb_usb_device_get_endpoint_type;
  device_class->open = pb_usb_device_open;
  device_class->close = pb_usb_device_close;
  device_class->submit = pb_usb_device_submit;
  device_class->cancel = pb_usb_device_cancel;
}

static void
pb_usb_device_init (PbUsbDevice *self)
{
  memset (self->endpoint_types, 0xff, sizeof self->endpoint_types);
}
