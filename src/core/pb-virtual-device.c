#define G_LOG_DOMAIN "plugboard"

#include "pb-virtual-device.h"

#include <string.h>

#define MAX_INTERFACES 32
#define MAX_ENDPOINT_DESCRIPTORS 128

typedef struct {
  guint8 interface;
  guint8 alternate;
  guint8 address;    /* direction bit included */
  guint8 attributes; /* low two bits: transfer type */
} EndpointInfo;

typedef struct {
  guint8 type;
  guint8 index;
  guint16 w_index;
  GBytes *data;
} ExtraDescriptor;

typedef struct {
  /* URBs submitted and not yet given back, in arrival order: completions reach the host in
   * this order even when the program finishes them out of order. */
  GQueue order;
  gboolean halted;
} EndpointState;

struct _PbVirtualDevice {
  PbDevice parent_instance;

  const PbVirtualDeviceOps *ops;
  gpointer user_data;
  GDestroyNotify user_data_free;

  PbUsbipSpeed speed;
  guint8 device_descriptor[18];
  GBytes *configuration;
  guint8 configuration_value_declared; /* bConfigurationValue of our one configuration */
  guint8 num_interfaces;
  PbUsbipInterfaceRecord interface_classes[MAX_INTERFACES];
  EndpointInfo endpoints[MAX_ENDPOINT_DESCRIPTORS];
  guint n_endpoints;
  char *strings[256];
  GArray *extra_descriptors; /* ExtraDescriptor */

  gboolean detached; /* the program is gone: ops and user_data are no longer valid */

  /* Host-visible state. */
  gboolean open;
  guint8 configuration_value; /* 0: unconfigured */
  guint8 alternate[MAX_INTERFACES];
  gboolean remote_wakeup;
  EndpointState ep_in[16];
  EndpointState ep_out[16];
};

G_DEFINE_FINAL_TYPE (PbVirtualDevice, pb_virtual_device, PB_TYPE_DEVICE)

static EndpointState *
endpoint_state (PbVirtualDevice *self, guint8 address)
{
  guint number = address & 0x0f;
  return (address & PB_USB_DIR_IN) ? &self->ep_in[number] : &self->ep_out[number];
}

static EndpointState *
endpoint_state_for_urb (PbVirtualDevice *self, PbUrb *urb)
{
  guint8 address = (guint8) (urb->ep & 0x0f);
  /* Control requests share one pipe whatever their direction. */
  if (urb->ep != 0 && urb->direction == PB_USBIP_DIR_IN)
    address |= PB_USB_DIR_IN;
  return endpoint_state (self, address);
}

/* Takes urb out of its endpoint's order and hands it to its owner. */
static void
give_back_now (EndpointState *state, PbUrb *urb)
{
  g_queue_unlink (&state->order, &urb->order_link);
  urb->order_done = FALSE;
  urb->intercept_func = NULL;
  urb->intercept_data = NULL;
  pb_urb_give_back (urb);
}

static void
flush_in_order (PbVirtualDevice *self, EndpointState *state)
{
  while (state->order.head != NULL && ((PbUrb *) state->order.head->data)->order_done)
    give_back_now (state, state->order.head->data);
}

/* An unlinked URB is answered with a RET_UNLINK, which carries no data, so it leaves at once,
 * ahead of older requests on its endpoint. Holding it back deadlocks with Linux: cdc-acm's close
 * unlinks its read URBs one by one, waiting for each, and an older one may never complete (the
 * QEMU suite's A-serial scenario hung in usb_poison_urb exactly so). */
static void
give_back_unlinked (PbVirtualDevice *self, EndpointState *state, PbUrb *urb)
{
  give_back_now (state, urb);
  flush_in_order (self, state);
}

static void
on_program_completed (PbUrb *urb, gpointer user_data)
{
  PbVirtualDevice *self = user_data;
  EndpointState *state = endpoint_state_for_urb (self, urb);

  /* A stall on a data endpoint halts it until the host clears the halt; on ep0 it is a
   * protocol stall that ends with the request. */
  if (urb->status == PB_URB_EPIPE && urb->ep != 0)
    state->halted = TRUE;
  if (urb->cancelled)
    {
      give_back_unlinked (self, state, urb);
      return;
    }
  urb->order_done = TRUE;
  flush_in_order (self, state);
}

/* ---- descriptors ---- */

static gboolean
max_packet_fits_speed (PbUsbipSpeed speed, guint8 attributes, guint16 max_packet, GError **error)
{
  guint type = attributes & 0x03;
  guint size = max_packet & 0x7ff;

  if (type == PB_ENDPOINT_BULK)
    {
      if ((speed == PB_USBIP_SPEED_HIGH && size != 512) ||
          (speed == PB_USBIP_SPEED_FULL && size != 8 && size != 16 && size != 32 && size != 64) ||
          (speed >= PB_USBIP_SPEED_SUPER && size != 1024) ||
          speed == PB_USBIP_SPEED_LOW)
        {
          g_set_error (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT,
                       "bulk endpoint max packet %u is not valid at %s speed", size,
                       pb_usbip_speed_to_string (speed));
          return FALSE;
        }
    }
  else if (size == 0 && type != PB_ENDPOINT_ISOCHRONOUS)
    {
      g_set_error_literal (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT, "endpoint max packet size is 0");
      return FALSE;
    }
  return TRUE;
}

gboolean
pb_virtual_device_set_descriptors (PbVirtualDevice *self, PbUsbipSpeed speed,
                                   const guint8 *device_descriptor, gsize device_descriptor_len,
                                   const guint8 *configuration, gsize configuration_len,
                                   GError **error)
{
  guint8 current_interface = 0, current_alternate = 0;
  guint n_endpoints = 0;
  guint8 num_interfaces;
  PbUsbipInterfaceRecord classes[MAX_INTERFACES] = { 0 };
  EndpointInfo endpoints[MAX_ENDPOINT_DESCRIPTORS];
  gboolean seen_interface = FALSE;

  g_return_val_if_fail (PB_IS_VIRTUAL_DEVICE (self), FALSE);
  g_return_val_if_fail (!self->open, FALSE);

  if (speed < PB_USBIP_SPEED_LOW || speed > PB_USBIP_SPEED_SUPER_PLUS || speed == PB_USBIP_SPEED_WIRELESS)
    {
      g_set_error (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT, "unsupported speed %d", speed);
      return FALSE;
    }
  if (device_descriptor_len != 18 || device_descriptor[0] != 18 || device_descriptor[1] != PB_USB_DT_DEVICE)
    {
      g_set_error_literal (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT,
                           "device descriptor must be 18 bytes with bLength 18 and type 1");
      return FALSE;
    }
  if (device_descriptor[17] != 1)
    {
      g_set_error (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT,
                   "virtual devices have exactly one configuration (bNumConfigurations is %u)",
                   device_descriptor[17]);
      return FALSE;
    }
  if (configuration_len < 9 || configuration[0] < 9 || configuration[1] != PB_USB_DT_CONFIG ||
      (gsize) (configuration[2] | (configuration[3] << 8)) != configuration_len)
    {
      g_set_error_literal (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT,
                           "configuration descriptor must have type 2 and wTotalLength equal to its length");
      return FALSE;
    }
  num_interfaces = configuration[4];
  if (num_interfaces == 0 || num_interfaces > MAX_INTERFACES)
    {
      g_set_error (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT,
                   "configuration declares %u interfaces (1..%u supported)", num_interfaces, MAX_INTERFACES);
      return FALSE;
    }
  if (configuration[5] == 0)
    {
      g_set_error_literal (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT, "bConfigurationValue must not be 0");
      return FALSE;
    }

  for (gsize offset = configuration[0]; offset < configuration_len;)
    {
      const guint8 *d = configuration + offset;
      guint8 length = d[0];

      if (length < 2 || offset + length > configuration_len)
        {
          g_set_error (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT,
                       "descriptor at offset %" G_GSIZE_FORMAT " has a bad length %u", offset, length);
          return FALSE;
        }
      if (d[1] == PB_USB_DT_INTERFACE)
        {
          if (length < 9 || d[2] >= num_interfaces)
            {
              g_set_error (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT,
                           "interface descriptor at offset %" G_GSIZE_FORMAT " is malformed or numbered "
                           "beyond bNumInterfaces", offset);
              return FALSE;
            }
          current_interface = d[2];
          current_alternate = d[3];
          seen_interface = TRUE;
          if (current_alternate == 0)
            {
              classes[current_interface].interface_class = d[5];
              classes[current_interface].interface_subclass = d[6];
              classes[current_interface].interface_protocol = d[7];
            }
        }
      else if (d[1] == PB_USB_DT_ENDPOINT)
        {
          guint16 max_packet;

          if (length < 7 || !seen_interface || (d[2] & 0x0f) == 0 || (d[2] & 0x70) != 0)
            {
              g_set_error (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT,
                           "endpoint descriptor at offset %" G_GSIZE_FORMAT " is malformed", offset);
              return FALSE;
            }
          if (n_endpoints == MAX_ENDPOINT_DESCRIPTORS)
            {
              g_set_error_literal (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT, "too many endpoint descriptors");
              return FALSE;
            }
          max_packet = (guint16) (d[4] | (d[5] << 8));
          if (!max_packet_fits_speed (speed, d[3], max_packet, error))
            return FALSE;
          endpoints[n_endpoints++] = (EndpointInfo) {
            .interface = current_interface, .alternate = current_alternate,
            .address = d[2], .attributes = d[3],
          };
        }
      offset += length;
    }

  self->speed = speed;
  memcpy (self->device_descriptor, device_descriptor, 18);
  g_clear_pointer (&self->configuration, g_bytes_unref);
  self->configuration = g_bytes_new (configuration, configuration_len);
  self->configuration_value_declared = configuration[5];
  self->num_interfaces = num_interfaces;
  memcpy (self->interface_classes, classes, sizeof classes);
  memcpy (self->endpoints, endpoints, n_endpoints * sizeof endpoints[0]);
  self->n_endpoints = n_endpoints;
  return TRUE;
}

void
pb_virtual_device_set_string (PbVirtualDevice *self, guint8 index, const char *utf8)
{
  g_return_if_fail (PB_IS_VIRTUAL_DEVICE (self));
  g_return_if_fail (index != 0);
  g_return_if_fail (utf8 == NULL || g_utf8_validate (utf8, -1, NULL));

  g_free (self->strings[index]);
  self->strings[index] = g_strdup (utf8);
}

void
pb_virtual_device_add_descriptor (PbVirtualDevice *self, guint8 type, guint8 index, guint16 w_index,
                                  const guint8 *data, gsize len)
{
  ExtraDescriptor extra = { type, index, w_index, g_bytes_new (data, len) };

  g_return_if_fail (PB_IS_VIRTUAL_DEVICE (self));
  g_return_if_fail (len <= G_MAXUINT16);

  for (guint i = 0; i < self->extra_descriptors->len; i++)
    {
      ExtraDescriptor *old = &g_array_index (self->extra_descriptors, ExtraDescriptor, i);
      if (old->type == type && old->index == index && old->w_index == w_index)
        {
          g_bytes_unref (old->data);
          *old = extra;
          return;
        }
    }
  g_array_append_val (self->extra_descriptors, extra);
}

static GBytes *
find_extra_descriptor (PbVirtualDevice *self, guint8 type, guint8 index, guint16 w_index)
{
  for (guint i = 0; i < self->extra_descriptors->len; i++)
    {
      ExtraDescriptor *extra = &g_array_index (self->extra_descriptors, ExtraDescriptor, i);
      if (extra->type == type && extra->index == index && extra->w_index == w_index)
        return extra->data;
    }
  return NULL;
}

/* ---- standard requests ---- */

static gboolean
interface_has_alternate (PbVirtualDevice *self, guint8 interface, guint8 alternate)
{
  const guint8 *config;
  gsize len;

  config = g_bytes_get_data (self->configuration, &len);
  for (gsize offset = config[0]; offset + 1 < len; offset += config[offset])
    if (config[offset + 1] == PB_USB_DT_INTERFACE && config[offset + 2] == interface &&
        config[offset + 3] == alternate)
      return TRUE;
  return FALSE;
}

static void
clear_halts_of_interface (PbVirtualDevice *self, guint8 interface)
{
  for (guint i = 0; i < self->n_endpoints; i++)
    if (self->endpoints[i].interface == interface)
      endpoint_state (self, self->endpoints[i].address)->halted = FALSE;
}

static const EndpointInfo *
find_active_endpoint (PbVirtualDevice *self, guint8 address)
{
  if (self->configuration_value == 0)
    return NULL;
  for (guint i = 0; i < self->n_endpoints; i++)
    {
      const EndpointInfo *info = &self->endpoints[i];
      if (info->address == address && self->alternate[info->interface] == info->alternate)
        return info;
    }
  return NULL;
}

static void
complete_string (PbUrb *urb, const char *utf8)
{
  guint8 descriptor[2 + 126 * 2];
  glong n_units = 0;
  g_autofree gunichar2 *utf16 = g_utf8_to_utf16 (utf8, -1, NULL, &n_units, NULL);
  gsize n;

  if (utf16 == NULL)
    {
      pb_urb_complete (urb, PB_URB_EPIPE, 0);
      return;
    }
  n = MIN ((gsize) n_units, 126);
  descriptor[0] = (guint8) (2 + 2 * n);
  descriptor[1] = PB_USB_DT_STRING;
  for (gsize i = 0; i < n; i++)
    {
      descriptor[2 + 2 * i] = utf16[i] & 0xff;
      descriptor[3 + 2 * i] = utf16[i] >> 8;
    }
  pb_urb_complete_with_data (urb, descriptor, MIN (descriptor[0], pb_urb_setup_length (urb)));
}

static void
complete_bytes (PbUrb *urb, const void *data, gsize len)
{
  pb_urb_complete_with_data (urb, data, MIN (len, pb_urb_setup_length (urb)));
}

static gboolean
pass_to_program (PbVirtualDevice *self, PbUrb *urb)
{
  return self->ops->control != NULL && self->ops->control (self, urb, self->user_data);
}

static gboolean
handle_get_descriptor (PbVirtualDevice *self, PbUrb *urb)
{
  guint8 type = pb_urb_setup_value (urb) >> 8;
  guint8 index = pb_urb_setup_value (urb) & 0xff;
  guint8 recipient = pb_urb_setup_request_type (urb) & PB_USB_RECIP_MASK;
  GBytes *extra;

  if (recipient == PB_USB_RECIP_DEVICE)
    switch (type)
      {
      case PB_USB_DT_DEVICE:
        complete_bytes (urb, self->device_descriptor, sizeof self->device_descriptor);
        return TRUE;
      case PB_USB_DT_CONFIG:
        if (index != 0)
          return FALSE;
        complete_bytes (urb, g_bytes_get_data (self->configuration, NULL), g_bytes_get_size (self->configuration));
        return TRUE;
      case PB_USB_DT_STRING:
        if (index == 0)
          {
            static const guint8 languages[] = { 4, PB_USB_DT_STRING, 0x09, 0x04 }; /* en-US */
            complete_bytes (urb, languages, sizeof languages);
            return TRUE;
          }
        if (self->strings[index] == NULL)
          return FALSE;
        complete_string (urb, self->strings[index]);
        return TRUE;
      default:
        break;
      }

  extra = find_extra_descriptor (self, type, index, recipient == PB_USB_RECIP_DEVICE ? 0 : pb_urb_setup_index (urb));
  if (extra == NULL)
    return FALSE;
  complete_bytes (urb, g_bytes_get_data (extra, NULL), g_bytes_get_size (extra));
  return TRUE;
}

static gboolean
is_port_reset (PbUrb *urb)
{
  /* USB_RT_PORT (class, other) SET_FEATURE(USB_PORT_FEAT_RESET = 4), as usbip-host recognises it. */
  return pb_urb_setup_request_type (urb) == 0x23 && pb_urb_setup_request (urb) == PB_USB_REQ_SET_FEATURE &&
         pb_urb_setup_value (urb) == 4;
}

static void
reset_device_state (PbVirtualDevice *self)
{
  for (guint i = 0; i < 16; i++)
    self->ep_in[i].halted = self->ep_out[i].halted = FALSE;
  self->remote_wakeup = FALSE;
  if (self->ops->reset != NULL)
    self->ops->reset (self, self->user_data);
}

/* Returns FALSE when the request must stall. */
static gboolean
handle_standard_request (PbVirtualDevice *self, PbUrb *urb)
{
  guint8 request_type = pb_urb_setup_request_type (urb);
  guint8 recipient = request_type & PB_USB_RECIP_MASK;
  guint16 value = pb_urb_setup_value (urb);
  guint16 index = pb_urb_setup_index (urb);

  switch (pb_urb_setup_request (urb))
    {
    case PB_USB_REQ_GET_DESCRIPTOR:
      if (handle_get_descriptor (self, urb))
        return TRUE;
      return pass_to_program (self, urb);

    case PB_USB_REQ_GET_CONFIGURATION:
      complete_bytes (urb, &self->configuration_value, 1);
      return TRUE;

    case PB_USB_REQ_SET_CONFIGURATION:
      if (value != 0 && value != self->configuration_value_declared)
        return FALSE;
      self->configuration_value = (guint8) value;
      memset (self->alternate, 0, sizeof self->alternate);
      for (guint i = 0; i < 16; i++)
        self->ep_in[i].halted = self->ep_out[i].halted = FALSE;
      if (self->ops->set_configuration != NULL)
        self->ops->set_configuration (self, (guint8) value, self->user_data);
      pb_urb_complete (urb, PB_URB_OK, 0);
      return TRUE;

    case PB_USB_REQ_GET_INTERFACE:
      if (self->configuration_value == 0 || index >= self->num_interfaces)
        return FALSE;
      complete_bytes (urb, &self->alternate[index], 1);
      return TRUE;

    case PB_USB_REQ_SET_INTERFACE:
      if (self->configuration_value == 0 || index >= self->num_interfaces ||
          value > 0xff || !interface_has_alternate (self, (guint8) index, (guint8) value))
        return FALSE;
      self->alternate[index] = (guint8) value;
      clear_halts_of_interface (self, (guint8) index);
      if (self->ops->set_interface != NULL)
        self->ops->set_interface (self, (guint8) index, (guint8) value, self->user_data);
      pb_urb_complete (urb, PB_URB_OK, 0);
      return TRUE;

    case PB_USB_REQ_GET_STATUS:
      {
        guint8 status[2] = { 0, 0 };
        const guint8 *config = g_bytes_get_data (self->configuration, NULL);

        if (recipient == PB_USB_RECIP_DEVICE)
          status[0] = ((config[7] & 0x40) ? 0x01 : 0) | (self->remote_wakeup ? 0x02 : 0);
        else if (recipient == PB_USB_RECIP_ENDPOINT)
          {
            if ((index & 0x0f) != 0 && find_active_endpoint (self, index & 0x8f) == NULL)
              return FALSE;
            status[0] = endpoint_state (self, index & 0x8f)->halted ? 1 : 0;
          }
        else if (recipient != PB_USB_RECIP_INTERFACE || index >= self->num_interfaces)
          return FALSE;
        complete_bytes (urb, status, sizeof status);
        return TRUE;
      }

    case PB_USB_REQ_CLEAR_FEATURE:
    case PB_USB_REQ_SET_FEATURE:
      {
        gboolean set = pb_urb_setup_request (urb) == PB_USB_REQ_SET_FEATURE;

        if (recipient == PB_USB_RECIP_ENDPOINT && value == PB_USB_FEATURE_ENDPOINT_HALT)
          {
            guint8 address = index & 0x8f;
            if ((address & 0x0f) != 0 && find_active_endpoint (self, address) == NULL)
              return FALSE;
            if ((address & 0x0f) != 0)
              endpoint_state (self, address)->halted = set;
            if (!set && self->ops->clear_halt != NULL)
              self->ops->clear_halt (self, address, self->user_data);
            pb_urb_complete (urb, PB_URB_OK, 0);
            return TRUE;
          }
        if (recipient == PB_USB_RECIP_DEVICE && value == PB_USB_FEATURE_REMOTE_WAKEUP)
          {
            self->remote_wakeup = set;
            pb_urb_complete (urb, PB_URB_OK, 0);
            return TRUE;
          }
        return pass_to_program (self, urb);
      }

    case PB_USB_REQ_SET_ADDRESS:
      /* vhci completes SET_ADDRESS itself; accept it from other clients. */
      pb_urb_complete (urb, PB_URB_OK, 0);
      return TRUE;

    default:
      return pass_to_program (self, urb);
    }
}

static void
handle_control (PbVirtualDevice *self, PbUrb *urb)
{
  gboolean taken;

  if (is_port_reset (urb))
    {
      reset_device_state (self);
      pb_urb_complete (urb, PB_URB_OK, 0);
      return;
    }
  if ((pb_urb_setup_request_type (urb) & PB_USB_TYPE_MASK) == PB_USB_TYPE_STANDARD)
    taken = handle_standard_request (self, urb);
  else
    taken = pass_to_program (self, urb);
  if (!taken)
    pb_urb_complete (urb, PB_URB_EPIPE, 0);
}

/* ---- PbDevice ---- */

static void
pb_virtual_device_describe (PbDevice *device, PbUsbipDeviceRecord *record)
{
  PbVirtualDevice *self = PB_VIRTUAL_DEVICE (device);
  const guint8 *d = self->device_descriptor;

  record->speed = self->speed;
  record->id_vendor = (guint16) (d[8] | (d[9] << 8));
  record->id_product = (guint16) (d[10] | (d[11] << 8));
  record->bcd_device = (guint16) (d[12] | (d[13] << 8));
  record->device_class = d[4];
  record->device_subclass = d[5];
  record->device_protocol = d[6];
  record->configuration_value = self->configuration_value;
  record->num_configurations = d[17];
  record->num_interfaces = self->num_interfaces;
  memcpy (record->interfaces, self->interface_classes, self->num_interfaces * sizeof self->interface_classes[0]);
}

static PbEndpointType
pb_virtual_device_get_endpoint_type (PbDevice *device, guint ep, PbUsbipDirection direction)
{
  PbVirtualDevice *self = PB_VIRTUAL_DEVICE (device);
  guint8 address = (guint8) ep | (direction == PB_USBIP_DIR_IN ? PB_USB_DIR_IN : 0);
  const EndpointInfo *info = find_active_endpoint (self, address);

  /* Before SET_CONFIGURATION the host cannot use data endpoints, but framing an iso request
   * still needs the type: fall back to any alternate setting that has the endpoint. */
  if (info == NULL)
    for (guint i = 0; i < self->n_endpoints && info == NULL; i++)
      if (self->endpoints[i].address == address)
        info = &self->endpoints[i];
  return info != NULL ? (PbEndpointType) (info->attributes & 0x03) : PB_ENDPOINT_UNKNOWN;
}

static gboolean
pb_virtual_device_open (PbDevice *device, GError **error)
{
  PbVirtualDevice *self = PB_VIRTUAL_DEVICE (device);

  if (self->configuration == NULL)
    {
      g_set_error_literal (error, PB_ERROR, PB_ERROR_DEVICE, "virtual device has no descriptors");
      return FALSE;
    }
  if (self->detached)
    {
      g_set_error_literal (error, PB_ERROR, PB_ERROR_DEVICE, "the program behind this virtual device has gone");
      return FALSE;
    }
  /* Each import starts from a freshly plugged device. */
  self->configuration_value = 0;
  memset (self->alternate, 0, sizeof self->alternate);
  self->remote_wakeup = FALSE;
  for (guint i = 0; i < 16; i++)
    self->ep_in[i].halted = self->ep_out[i].halted = FALSE;
  self->open = TRUE;
  if (self->ops->opened != NULL)
    self->ops->opened (self, self->user_data);
  return TRUE;
}

static void
pb_virtual_device_close (PbDevice *device)
{
  PbVirtualDevice *self = PB_VIRTUAL_DEVICE (device);

  self->open = FALSE;
  self->configuration_value = 0;
  if (!self->detached && self->ops->closed != NULL)
    self->ops->closed (self, self->user_data);
}

static void
pb_virtual_device_submit (PbDevice *device, PbUrb *urb)
{
  PbVirtualDevice *self = PB_VIRTUAL_DEVICE (device);
  EndpointState *state = endpoint_state_for_urb (self, urb);

  urb->intercept_func = on_program_completed;
  urb->intercept_data = self;
  urb->order_done = FALSE;
  urb->order_link.data = urb;
  g_queue_push_tail_link (&state->order, &urb->order_link);

  /* No program any more: data transfers end as on an unplugged device; ep0 still gets the
   * framework's standard answers, and requests for the program stall. */
  if (self->detached && urb->ep != 0)
    {
      pb_urb_complete (urb, PB_URB_ESHUTDOWN, 0);
      return;
    }

  if (urb->ep == 0)
    {
      handle_control (self, urb);
      return;
    }
  if (state->halted || urb->type == PB_ENDPOINT_UNKNOWN || urb->type == PB_ENDPOINT_CONTROL ||
      self->ops->transfer == NULL)
    {
      pb_urb_complete (urb, PB_URB_EPIPE, 0);
      return;
    }
  self->ops->transfer (self, urb, self->user_data);
}

static void
pb_virtual_device_cancel (PbDevice *device, PbUrb *urb)
{
  PbVirtualDevice *self = PB_VIRTUAL_DEVICE (device);

  /* Finished by the program and only waiting for its turn behind older requests: the unlink
   * wins, and the answer need not wait (see give_back_unlinked). */
  if (urb->order_done && urb->cancelled)
    {
      give_back_unlinked (self, endpoint_state_for_urb (self, urb), urb);
      return;
    }
  if (urb->order_done || self->detached)
    return;
  if (self->ops->cancel != NULL)
    self->ops->cancel (self, urb, self->user_data);
}

/* ---- public ---- */

PbVirtualDevice *
pb_virtual_device_new (const PbVirtualDeviceOps *ops, gpointer user_data, GDestroyNotify user_data_free)
{
  PbVirtualDevice *self;

  g_return_val_if_fail (ops != NULL, NULL);

  self = g_object_new (PB_TYPE_VIRTUAL_DEVICE, NULL);
  self->ops = ops;
  self->user_data = user_data;
  self->user_data_free = user_data_free;
  return self;
}

guint8
pb_virtual_device_get_configuration (PbVirtualDevice *self)
{
  g_return_val_if_fail (PB_IS_VIRTUAL_DEVICE (self), 0);
  return self->configuration_value;
}

guint8
pb_virtual_device_get_alternate_setting (PbVirtualDevice *self, guint8 interface)
{
  g_return_val_if_fail (PB_IS_VIRTUAL_DEVICE (self), 0);
  return interface < MAX_INTERFACES ? self->alternate[interface] : 0;
}

void
pb_virtual_device_set_halt (PbVirtualDevice *self, guint8 endpoint_address, gboolean halted)
{
  g_return_if_fail (PB_IS_VIRTUAL_DEVICE (self));
  if ((endpoint_address & 0x0f) != 0)
    endpoint_state (self, endpoint_address & 0x8f)->halted = halted;
}

gboolean
pb_virtual_device_get_halt (PbVirtualDevice *self, guint8 endpoint_address)
{
  g_return_val_if_fail (PB_IS_VIRTUAL_DEVICE (self), FALSE);
  return endpoint_state (self, endpoint_address & 0x8f)->halted;
}

void
pb_virtual_device_detach (PbVirtualDevice *self)
{
  static const PbVirtualDeviceOps no_program = { 0 };

  g_return_if_fail (PB_IS_VIRTUAL_DEVICE (self));
  if (self->detached)
    return;
  self->detached = TRUE;
  self->ops = &no_program;
  if (self->user_data_free != NULL)
    self->user_data_free (self->user_data);
  self->user_data_free = NULL;
  self->user_data = NULL;
}

gboolean
pb_virtual_device_is_open (PbVirtualDevice *self)
{
  g_return_val_if_fail (PB_IS_VIRTUAL_DEVICE (self), FALSE);
  return self->open;
}

static void
pb_virtual_device_finalize (GObject *object)
{
  PbVirtualDevice *self = PB_VIRTUAL_DEVICE (object);

  if (self->user_data_free != NULL)
    self->user_data_free (self->user_data);
  g_clear_pointer (&self->configuration, g_bytes_unref);
  for (guint i = 0; i < G_N_ELEMENTS (self->strings); i++)
    g_free (self->strings[i]);
  for (guint i = 0; i < self->extra_descriptors->len; i++)
    g_bytes_unref (g_array_index (self->extra_descriptors, ExtraDescriptor, i).data);
  g_array_unref (self->extra_descriptors);
  G_OBJECT_CLASS (pb_virtual_device_parent_class)->finalize (object);
}

static void
pb_virtual_device_class_init (PbVirtualDeviceClass *klass)
{
  PbDeviceClass *device_class = PB_DEVICE_CLASS (klass);

  G_OBJECT_CLASS (klass)->finalize = pb_virtual_device_finalize;
  device_class->describe = pb_virtual_device_describe;
  device_class->get_endpoint_type = pb_virtual_device_get_endpoint_type;
  device_class->open = pb_virtual_device_open;
  device_class->close = pb_virtual_device_close;
  device_class->submit = pb_virtual_device_submit;
  device_class->cancel = pb_virtual_device_cancel;
}

static void
pb_virtual_device_init (PbVirtualDevice *self)
{
  self->extra_descriptors = g_array_new (FALSE, FALSE, sizeof (ExtraDescriptor));
}
