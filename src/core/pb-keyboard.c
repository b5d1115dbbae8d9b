/* PbKeyboard: a HID boot keyboard on the public PbVirtualDevice API. */
#define G_LOG_DOMAIN "plugboard"

#include "pb-keyboard.h"

#include <string.h>

#include "pb-error.h"

#define REPORT_SIZE 8
#define INTERRUPT_IN_ADDRESS 0x81
/* At most this many characters wait to be typed: each becomes two reports. */
#define MAX_PENDING_CHARS (64 * 1024)
#define LEFT_SHIFT 0x02

/* HID class requests (HID 1.11, 7.2). */
enum {
  HID_GET_REPORT = 0x01,
  HID_GET_IDLE = 0x02,
  HID_GET_PROTOCOL = 0x03,
  HID_SET_REPORT = 0x09,
  HID_SET_IDLE = 0x0a,
  HID_SET_PROTOCOL = 0x0b,
};
enum {
  HID_REPORT_INPUT = 1,
  HID_REPORT_OUTPUT = 2,
};
/* HID 1.11, 7.2.4: 500 ms (in 4 ms units) is the recommended initial idle rate of keyboards. */
#define DEFAULT_IDLE_RATE 125

/* The boot keyboard report descriptor (HID 1.11, appendix B.1 and E.6). */
static const guint8 report_descriptor[] = {
  0x05, 0x01,       /* Usage Page (Generic Desktop) */
  0x09, 0x06,       /* Usage (Keyboard) */
  0xa1, 0x01,       /* Collection (Application) */
  0x05, 0x07,       /*   Usage Page (Keyboard/Keypad) */
  0x19, 0xe0,       /*   Usage Minimum (Left Control) */
  0x29, 0xe7,       /*   Usage Maximum (Right GUI) */
  0x15, 0x00,       /*   Logical Minimum (0) */
  0x25, 0x01,       /*   Logical Maximum (1) */
  0x75, 0x01,       /*   Report Size (1) */
  0x95, 0x08,       /*   Report Count (8) */
  0x81, 0x02,       /*   Input (Data, Variable, Absolute): modifiers */
  0x95, 0x01,       /*   Report Count (1) */
  0x75, 0x08,       /*   Report Size (8) */
  0x81, 0x01,       /*   Input (Constant): reserved byte */
  0x95, 0x05,       /*   Report Count (5) */
  0x75, 0x01,       /*   Report Size (1) */
  0x05, 0x08,       /*   Usage Page (LEDs) */
  0x19, 0x01,       /*   Usage Minimum (Num Lock) */
  0x29, 0x05,       /*   Usage Maximum (Kana) */
  0x91, 0x02,       /*   Output (Data, Variable, Absolute): LEDs */
  0x95, 0x01,       /*   Report Count (1) */
  0x75, 0x03,       /*   Report Size (3) */
  0x91, 0x01,       /*   Output (Constant): padding */
  0x95, 0x06,       /*   Report Count (6) */
  0x75, 0x08,       /*   Report Size (8) */
  0x15, 0x00,       /*   Logical Minimum (0) */
  0x25, 0x65,       /*   Logical Maximum (101) */
  0x05, 0x07,       /*   Usage Page (Keyboard/Keypad) */
  0x19, 0x00,       /*   Usage Minimum (0) */
  0x29, 0x65,       /*   Usage Maximum (101) */
  0x81, 0x00,       /*   Input (Data, Array): key array */
  0xc0,             /* End Collection */
};

static const guint8 device_descriptor[18] = {
  18, PB_USB_DT_DEVICE,
  0x00, 0x02,       /* bcdUSB 2.00 */
  0x00, 0x00, 0x00, /* class per interface */
  64,               /* bMaxPacketSize0 */
  0x09, 0x12,       /* idVendor 0x1209 (pid.codes) */
  0x02, 0x00,       /* idProduct 0x0002 */
  0x00, 0x01,       /* bcdDevice 1.00 */
  1, 2, 3,          /* iManufacturer, iProduct, iSerialNumber */
  1,                /* bNumConfigurations */
};

#define HID_DESCRIPTOR_OFFSET (9 + 9)
#define CONFIGURATION_LENGTH (9 + 9 + 9 + 7)

static const guint8 configuration[CONFIGURATION_LENGTH] = {
  /* configuration */
  9, PB_USB_DT_CONFIG, CONFIGURATION_LENGTH, 0, 1, 1, 0, 0x80, 50,
  /* interface 0: HID, boot subclass, keyboard protocol */
  9, PB_USB_DT_INTERFACE, 0, 0, 1, 0x03, 0x01, 0x01, 0,
  /* HID 1.11, country code 0, one report descriptor */
  9, PB_USB_DT_HID, 0x11, 0x01, 0, 1, PB_USB_DT_HID_REPORT, sizeof report_descriptor, 0,
  /* interrupt IN 0x81, 8 bytes, every 10 ms */
  7, PB_USB_DT_ENDPOINT, INTERRUPT_IN_ADDRESS, 0x03, REPORT_SIZE, 0, 10,
};

struct _PbKeyboard {
  GObject parent_instance;

  PbVirtualDevice *device;
  /* The device's user_data: points back here until dispose, so a device that outlives its
   * keyboard (still held by a server) finds NULL instead of freed memory. */

  /* Characters waiting to be typed, as (modifiers, usage) pairs from pending_offset on. */
  GByteArray *pending;
  guint pending_offset;
  gboolean press_sent;    /* the head character's press went out; its release is next */

  GQueue waiting_in;      /* interrupt IN URBs held until a report is pending */
  guint8 current_report[REPORT_SIZE]; /* the last report the host received */
  guint8 leds;
  guint8 idle_rate;
  guint8 protocol;        /* 0 boot, 1 report */
};

G_DEFINE_FINAL_TYPE (PbKeyboard, pb_keyboard, G_TYPE_OBJECT)

enum {
  SIGNAL_LEDS_CHANGED,
  N_SIGNALS
};
static guint signals[N_SIGNALS];

/* US layout: HID usage (and whether shift is needed) for a character; FALSE if untypeable. */
static gboolean
ascii_to_key (char c, guint8 *modifiers, guint8 *usage)
{
  static const char unshifted[] = "-=[]\\;'`,./";
  static const char shifted[] = "_+{}|:\"~<>?";
  static const guint8 punctuation_usages[] = { 0x2d, 0x2e, 0x2f, 0x30, 0x31, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38 };
  static const char shifted_digits[] = "!@#$%^&*()";
  const char *p;

  *modifiers = 0;
  if (c >= 'a' && c <= 'z')
    *usage = (guint8) (0x04 + (c - 'a'));
  else if (c >= 'A' && c <= 'Z')
    {
      *modifiers = LEFT_SHIFT;
      *usage = (guint8) (0x04 + (c - 'A'));
    }
  else if (c >= '1' && c <= '9')
    *usage = (guint8) (0x1e + (c - '1'));
  else if (c == '0')
    *usage = 0x27;
  else if (c == '\n')
    *usage = 0x28;
  else if (c == '\t')
    *usage = 0x2b;
  else if (c == ' ')
    *usage = 0x2c;
  else if (c != '\0' && (p = strchr (unshifted, c)) != NULL)
    *usage = punctuation_usages[p - unshifted];
  else if (c != '\0' && (p = strchr (shifted, c)) != NULL)
    {
      *modifiers = LEFT_SHIFT;
      *usage = punctuation_usages[p - shifted];
    }
  else if (c != '\0' && (p = strchr (shifted_digits, c)) != NULL)
    {
      /* "!@#$%^&*()" sit on 1..9, 0: usages 0x1e..0x27 in the same order. */
      *modifiers = LEFT_SHIFT;
      *usage = (guint8) (0x1e + (p - shifted_digits));
    }
  else
    return FALSE;
  return TRUE;
}

static guint
pending_chars (PbKeyboard *self)
{
  return (self->pending->len - self->pending_offset) / 2;
}

/* Takes the next report off the queue into report. FALSE when none is pending. */
static gboolean
pop_report (PbKeyboard *self, guint8 report[REPORT_SIZE])
{
  memset (report, 0, REPORT_SIZE);
  if (pending_chars (self) == 0)
    return FALSE;

  if (!self->press_sent)
    {
      report[0] = self->pending->data[self->pending_offset];
      report[2] = self->pending->data[self->pending_offset + 1];
      self->press_sent = TRUE;
      return TRUE;
    }

  /* The release: all zeros. */
  self->press_sent = FALSE;
  self->pending_offset += 2;
  if (self->pending_offset == self->pending->len)
    {
      g_byte_array_set_size (self->pending, 0);
      self->pending_offset = 0;
    }
  else if (self->pending_offset >= 4096 && self->pending_offset * 2 >= self->pending->len)
    {
      /* Reclaim the consumed head now and then rather than on every report. */
      g_byte_array_remove_range (self->pending, 0, self->pending_offset);
      self->pending_offset = 0;
    }
  return TRUE;
}

static void
clear_pending (PbKeyboard *self)
{
  g_byte_array_set_size (self->pending, 0);
  self->pending_offset = 0;
  self->press_sent = FALSE;
}

static void
hold_urb (PbKeyboard *self, PbUrb *urb)
{
  urb->device_data = self;
  urb->device_link.data = urb;
  g_queue_push_tail_link (&self->waiting_in, &urb->device_link);
}

static PbUrb *
pop_held_urb (PbKeyboard *self)
{
  GList *link = g_queue_pop_head_link (&self->waiting_in);
  PbUrb *urb;

  if (link == NULL)
    return NULL;
  urb = link->data;
  urb->device_data = NULL;
  return urb;
}

/* Hands pending reports to waiting interrupt IN URBs. */
static void
flush (PbKeyboard *self)
{
  while (self->waiting_in.length > 0 && pending_chars (self) > 0)
    {
      PbUrb *urb = pop_held_urb (self);

      /* A buffer smaller than the report is babble on a real bus; the report stays queued
       * for a proper request rather than being lost. */
      if (urb->length < REPORT_SIZE)
        {
          pb_urb_complete (urb, PB_URB_EOVERFLOW, 0);
          continue;
        }
      pop_report (self, self->current_report);
      pb_urb_complete_with_data (urb, self->current_report, REPORT_SIZE);
    }
}

static void
complete_all_held (PbKeyboard *self, gint32 status)
{
  PbUrb *urb;

  while ((urb = pop_held_urb (self)) != NULL)
    pb_urb_complete (urb, status, 0);
}

static void
reset_hid_state (PbKeyboard *self)
{
  /* HID 1.11, 7.2.5/7.2.6: devices come up in report protocol with their default idle rate. */
  self->idle_rate = DEFAULT_IDLE_RATE;
  self->protocol = 1;
}

static void
set_leds (PbKeyboard *self, guint8 leds)
{
  leds &= 0x1f; /* five LED bits; the rest is padding */
  if (leds == self->leds)
    return;
  self->leds = leds;
  g_signal_emit (self, signals[SIGNAL_LEDS_CHANGED], 0, (guint) leds);
}

/* ---- PbVirtualDevice callbacks ---- */

/* Returns FALSE to stall. *leds_out is set (>= 0) when a SET_REPORT carried new LEDs; the signal
 * goes out after the URB completes so a handler sees a finished request. */
static gboolean
handle_class_request (PbKeyboard *self, PbUrb *urb, gint *leds_out)
{
  guint8 request_type = pb_urb_setup_request_type (urb);
  gboolean in = (request_type & PB_USB_DIR_IN) != 0;
  guint16 value = pb_urb_setup_value (urb);
  guint8 report_type = value >> 8;
  guint8 report_id = value & 0xff;

  if ((request_type & PB_USB_TYPE_MASK) != PB_USB_TYPE_CLASS ||
      (request_type & PB_USB_RECIP_MASK) != PB_USB_RECIP_INTERFACE || pb_urb_setup_index (urb) != 0)
    return FALSE;

  switch (pb_urb_setup_request (urb))
    {
    case HID_GET_REPORT:
      /* No report IDs in our descriptor: only ID 0 exists. */
      if (!in || report_id != 0)
        return FALSE;
      if (report_type == HID_REPORT_INPUT)
        pb_urb_complete_with_data (urb, self->current_report, MIN (REPORT_SIZE, pb_urb_setup_length (urb)));
      else if (report_type == HID_REPORT_OUTPUT)
        pb_urb_complete_with_data (urb, &self->leds, MIN (1, pb_urb_setup_length (urb)));
      else
        return FALSE;
      return TRUE;

    case HID_SET_REPORT:
      if (in || report_id != 0 || report_type != HID_REPORT_OUTPUT || urb->length < 1)
        return FALSE;
      *leds_out = urb->buffer[0];
      pb_urb_complete (urb, PB_URB_OK, urb->length);
      return TRUE;

    case HID_GET_IDLE:
      if (!in || report_id != 0)
        return FALSE;
      pb_urb_complete_with_data (urb, &self->idle_rate, MIN (1, pb_urb_setup_length (urb)));
      return TRUE;

    case HID_SET_IDLE:
      /* Report ID 0 means all reports, which is our only one. */
      if (in || report_id != 0)
        return FALSE;
      self->idle_rate = value >> 8;
      pb_urb_complete (urb, PB_URB_OK, 0);
      return TRUE;

    case HID_GET_PROTOCOL:
      if (!in)
        return FALSE;
      pb_urb_complete_with_data (urb, &self->protocol, MIN (1, pb_urb_setup_length (urb)));
      return TRUE;

    case HID_SET_PROTOCOL:
      /* A boot keyboard's report is the boot report: only the recorded value changes. */
      if (in || value > 1)
        return FALSE;
      self->protocol = (guint8) value;
      pb_urb_complete (urb, PB_URB_OK, 0);
      return TRUE;

    default:
      return FALSE;
    }
}

static gboolean
keyboard_control (PbVirtualDevice *device, PbUrb *urb, gpointer user_data)
{
  PbKeyboard *self = user_data;
  gint leds = -1;

  if (!handle_class_request (self, urb, &leds))
    return FALSE;
  if (leds >= 0)
    {
      g_autoptr(PbKeyboard) hold = g_object_ref (self);
      set_leds (hold, (guint8) leds);
    }
  return TRUE;
}

static void
keyboard_transfer (PbVirtualDevice *device, PbUrb *urb, gpointer user_data)
{
  PbKeyboard *self = user_data;

  if (urb->ep != (INTERRUPT_IN_ADDRESS & 0x0f) || urb->direction != PB_USBIP_DIR_IN)
    {
      pb_urb_complete (urb, PB_URB_EPIPE, 0);
      return;
    }
  /* With no report pending, the endpoint NAKs: the URB waits for the next key. */
  hold_urb (self, urb);
  flush (self);
}

static void
keyboard_cancel (PbVirtualDevice *device, PbUrb *urb, gpointer user_data)
{
  PbKeyboard *self = user_data;

  if (urb->device_data != self)
    return;
  g_queue_unlink (&self->waiting_in, &urb->device_link);
  urb->device_data = NULL;
  pb_urb_complete (urb, PB_URB_ECONNRESET, 0);
}

static void
keyboard_opened (PbVirtualDevice *device, gpointer user_data)
{
  PbKeyboard *self = user_data;

  /* Text typed before the import stays queued: the host takes it once it polls. */
  reset_hid_state (self);
  memset (self->current_report, 0, REPORT_SIZE);
}

static void
keyboard_closed (PbVirtualDevice *device, gpointer user_data)
{
  PbKeyboard *self = user_data;

  /* The framework completes every request before closing; this only guards that promise. */
  complete_all_held (self, PB_URB_ESHUTDOWN);
  /* Unplugged: what the host did not take is gone, and the LEDs go dark. */
  clear_pending (self);
  memset (self->current_report, 0, REPORT_SIZE);
  reset_hid_state (self);
  {
    g_autoptr(PbKeyboard) hold = g_object_ref (self);
    set_leds (hold, 0);
  }
}

static void
keyboard_reset (PbVirtualDevice *device, gpointer user_data)
{
  PbKeyboard *self = user_data;

  /* A port reset returns the HID state to its defaults; queued text is the user's and stays. */
  reset_hid_state (self);
}

static const PbVirtualDeviceOps keyboard_ops = {
  .control = keyboard_control,
  .transfer = keyboard_transfer,
  .cancel = keyboard_cancel,
  .opened = keyboard_opened,
  .closed = keyboard_closed,
  .reset = keyboard_reset,
};

/* ---- public ---- */

PbKeyboard *
pb_keyboard_new (void)
{
  return g_object_new (PB_TYPE_KEYBOARD, NULL);
}

PbVirtualDevice *
pb_keyboard_get_device (PbKeyboard *self)
{
  g_return_val_if_fail (PB_IS_KEYBOARD (self), NULL);
  return self->device;
}

gboolean
pb_keyboard_type_string (PbKeyboard *self, const char *text, GError **error)
{
  gsize n;

  g_return_val_if_fail (PB_IS_KEYBOARD (self), FALSE);
  g_return_val_if_fail (text != NULL, FALSE);
  g_return_val_if_fail (error == NULL || *error == NULL, FALSE);

  /* Check everything first so that a bad character queues nothing. */
  n = strlen (text);
  for (gsize i = 0; i < n; i++)
    {
      guint8 modifiers, usage;
      if (!ascii_to_key (text[i], &modifiers, &usage))
        {
          g_set_error (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT,
                       "character 0x%02x at offset %" G_GSIZE_FORMAT " cannot be typed on a US keyboard",
                       (guint8) text[i], i);
          return FALSE;
        }
    }
  if (n > MAX_PENDING_CHARS - pending_chars (self))
    {
      g_set_error (error, PB_ERROR, PB_ERROR_TOO_LARGE,
                   "%" G_GSIZE_FORMAT " characters would exceed the %u waiting to be typed", n,
                   MAX_PENDING_CHARS);
      return FALSE;
    }

  for (gsize i = 0; i < n; i++)
    {
      guint8 key[2];
      ascii_to_key (text[i], &key[0], &key[1]);
      g_byte_array_append (self->pending, key, 2);
    }
  flush (self);
  return TRUE;
}

guint
pb_keyboard_get_pending_reports (PbKeyboard *self)
{
  g_return_val_if_fail (PB_IS_KEYBOARD (self), 0);
  return pending_chars (self) * 2 - (self->press_sent ? 1 : 0);
}

guint8
pb_keyboard_get_leds (PbKeyboard *self)
{
  g_return_val_if_fail (PB_IS_KEYBOARD (self), 0);
  return self->leds;
}

static void
pb_keyboard_dispose (GObject *object)
{
  PbKeyboard *self = PB_KEYBOARD (object);

  /* Held URBs still belong to a session: finish them before the device loses its program. */
  complete_all_held (self, PB_URB_ESHUTDOWN);
  /* A server or session may keep the device: it must never call into us again. */
  if (self->device != NULL)
    pb_virtual_device_detach (self->device);
  g_clear_object (&self->device);
  G_OBJECT_CLASS (pb_keyboard_parent_class)->dispose (object);
}

static void
pb_keyboard_finalize (GObject *object)
{
  PbKeyboard *self = PB_KEYBOARD (object);

  g_byte_array_unref (self->pending);
  G_OBJECT_CLASS (pb_keyboard_parent_class)->finalize (object);
}

static void
pb_keyboard_class_init (PbKeyboardClass *klass)
{
  GObjectClass *object_class = G_OBJECT_CLASS (klass);

  object_class->dispose = pb_keyboard_dispose;
  object_class->finalize = pb_keyboard_finalize;

  /* leds-changed (guint leds): the host set a new LED state (PB_KEYBOARD_LED_* bits). */
  signals[SIGNAL_LEDS_CHANGED] = g_signal_new ("leds-changed", G_TYPE_FROM_CLASS (klass), G_SIGNAL_RUN_LAST, 0,
                                               NULL, NULL, NULL, G_TYPE_NONE, 1, G_TYPE_UINT);
}

static void
pb_keyboard_init (PbKeyboard *self)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *serial = NULL;
  static gint instances;

  self->pending = g_byte_array_new ();
  reset_hid_state (self);

  self->device = pb_virtual_device_new (&keyboard_ops, self, NULL);
  /* Our own constant descriptors: failing here is a programming error. */
  if (!pb_virtual_device_set_descriptors (self->device, PB_USBIP_SPEED_FULL, device_descriptor,
                                          sizeof device_descriptor, configuration, sizeof configuration, &error))
    g_critical ("keyboard descriptors rejected: %s", error->message);

  pb_virtual_device_set_string (self->device, 1, "Plugboard");
  pb_virtual_device_set_string (self->device, 2, "Plugboard Virtual Keyboard");
  /* Distinct serials keep udev's by-id links apart when one process serves several. */
  serial = g_strdup_printf ("PBKBD%04d", g_atomic_int_add (&instances, 1) + 1);
  pb_virtual_device_set_string (self->device, 3, serial);
  pb_virtual_device_add_descriptor (self->device, PB_USB_DT_HID, 0, 0, configuration + HID_DESCRIPTOR_OFFSET, 9);
  pb_virtual_device_add_descriptor (self->device, PB_USB_DT_HID_REPORT, 0, 0, report_descriptor,
                                    sizeof report_descriptor);
  pb_device_set_description (PB_DEVICE (self->device), "Plugboard virtual keyboard");
}
