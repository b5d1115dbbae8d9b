/* PbKeyboard driven through the PbDevice API as a session would: descriptors, typed reports,
 * HID class requests, LEDs, cancel, limits. */
#include <string.h>

#include "pb-test-util.h"
#include "pb-error.h"
#include "pb-keyboard.h"

typedef struct {
  PbKeyboard *keyboard;
  PbDevice *device;
  PbTestDriver driver;
  guint leds_signals;
  guint last_leds;
} Fixture;

static void
on_leds_changed (PbKeyboard *keyboard, guint leds, gpointer user_data)
{
  Fixture *f = user_data;
  f->leds_signals++;
  f->last_leds = leds;
}

static void
fixture_setup (Fixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;

  memset (f, 0, sizeof *f);
  f->keyboard = pb_keyboard_new ();
  f->device = PB_DEVICE (pb_keyboard_get_device (f->keyboard));
  pb_test_driver_init (&f->driver, f->device);
  g_signal_connect (f->keyboard, "leds-changed", G_CALLBACK (on_leds_changed), f);
  pb_device_set_address (f->device, 100, 2, "100-2");
  g_assert_true (pb_device_open (f->device, &error));
  g_assert_no_error (error);
  pb_test_driver_expect_control (&f->driver, 0x00, PB_USB_REQ_SET_CONFIGURATION, 1, 0, 0, NULL, PB_URB_OK, NULL, 0);
}

static void
fixture_teardown (Fixture *f, gconstpointer data)
{
  g_assert_cmpuint (f->driver.completed.length, ==, 0);
  pb_device_close (f->device);
  g_object_unref (f->keyboard);
}

/* Takes the interrupt IN report an URB just completed with. */
static void
expect_report (Fixture *f, PbUrb *urb, guint8 modifiers, guint8 usage)
{
  guint8 expected[8] = { modifiers, 0, usage, 0, 0, 0, 0, 0 };

  g_assert_true (g_queue_pop_head (&f->driver.completed) == urb);
  g_assert_cmpint (urb->status, ==, PB_URB_OK);
  g_assert_cmpmem (urb->buffer, urb->actual_length, expected, sizeof expected);
  pb_test_urb_free (urb);
}

/* Polls once with an 8-byte interrupt IN and checks the report. */
static void
poll_report (Fixture *f, guint8 modifiers, guint8 usage)
{
  PbUrb *urb = pb_test_driver_urb_new (&f->driver, 1, PB_USBIP_DIR_IN, 8);

  pb_device_submit (f->device, urb);
  g_assert_cmpuint (f->driver.completed.length, ==, 1);
  expect_report (f, urb, modifiers, usage);
}

static void
test_descriptors (Fixture *f, gconstpointer data)
{
  static const guint8 hid_descriptor[9] = { 9, 0x21, 0x11, 0x01, 0, 1, 0x22, 63, 0 };
  static const guint8 interface[9] = { 9, 4, 0, 0, 1, 3, 1, 1, 0 };
  static const guint8 endpoint[7] = { 7, 5, 0x81, 3, 8, 0, 10 };
  /* HID 1.11 appendix E.6, byte for byte. */
  static const guint8 report_descriptor[63] = {
    0x05, 0x01, 0x09, 0x06, 0xa1, 0x01, 0x05, 0x07, 0x19, 0xe0, 0x29, 0xe7, 0x15, 0x00, 0x25, 0x01,
    0x75, 0x01, 0x95, 0x08, 0x81, 0x02, 0x95, 0x01, 0x75, 0x08, 0x81, 0x01, 0x95, 0x05, 0x75, 0x01,
    0x05, 0x08, 0x19, 0x01, 0x29, 0x05, 0x91, 0x02, 0x95, 0x01, 0x75, 0x03, 0x91, 0x01, 0x95, 0x06,
    0x75, 0x08, 0x15, 0x00, 0x25, 0x65, 0x05, 0x07, 0x19, 0x00, 0x29, 0x65, 0x81, 0x00, 0xc0,
  };
  PbUsbipDeviceRecord record;
  PbUrb *urb;

  urb = pb_test_driver_control (&f->driver, 0x80, PB_USB_REQ_GET_DESCRIPTOR, 0x0100, 0, 18, NULL);
  g_assert_cmpint (urb->status, ==, PB_URB_OK);
  g_assert_cmpuint (urb->actual_length, ==, 18);
  g_assert_cmpuint (urb->buffer[2] | (urb->buffer[3] << 8), ==, 0x0200); /* bcdUSB */
  g_assert_cmpuint (urb->buffer[4], ==, 0);                              /* class per interface */
  g_assert_cmpuint (urb->buffer[7], ==, 64);                             /* bMaxPacketSize0 */
  g_assert_cmpuint (urb->buffer[17], ==, 1);
  pb_test_urb_free (urb);

  urb = pb_test_driver_control (&f->driver, 0x80, PB_USB_REQ_GET_DESCRIPTOR, 0x0200, 0, 255, NULL);
  g_assert_cmpint (urb->status, ==, PB_URB_OK);
  g_assert_cmpuint (urb->actual_length, ==, 9 + 9 + 9 + 7);
  g_assert_cmpuint (urb->buffer[2], ==, 34);
  g_assert_cmpuint (urb->buffer[4], ==, 1);
  g_assert_cmpmem (urb->buffer + 9, 9, interface, 9);
  g_assert_cmpmem (urb->buffer + 18, 9, hid_descriptor, 9);
  g_assert_cmpmem (urb->buffer + 27, 7, endpoint, 7);
  pb_test_urb_free (urb);

  /* Class descriptors with interface recipient, as usbhid asks for them. */
  pb_test_driver_expect_control (&f->driver, 0x81, PB_USB_REQ_GET_DESCRIPTOR, 0x2100, 0, 9, NULL, PB_URB_OK, hid_descriptor, 9);
  pb_test_driver_expect_control (&f->driver, 0x81, PB_USB_REQ_GET_DESCRIPTOR, 0x2200, 0, 63 + 64, NULL, PB_URB_OK, report_descriptor, sizeof report_descriptor);
  /* There is no interface 1. */
  pb_test_driver_expect_control (&f->driver, 0x81, PB_USB_REQ_GET_DESCRIPTOR, 0x2200, 1, 255, NULL, PB_URB_EPIPE, NULL, 0);

  /* Product string, UTF-16LE. */
  urb = pb_test_driver_control (&f->driver, 0x80, PB_USB_REQ_GET_DESCRIPTOR, 0x0302, 0x0409, 255, NULL);
  g_assert_cmpint (urb->status, ==, PB_URB_OK);
  {
    const char *product = "Plugboard Virtual Keyboard";
    g_assert_cmpuint (urb->buffer[0], ==, 2 + 2 * strlen (product));
    for (gsize i = 0; product[i] != '\0'; i++)
      {
        g_assert_cmpuint (urb->buffer[2 + 2 * i], ==, (guint8) product[i]);
        g_assert_cmpuint (urb->buffer[3 + 2 * i], ==, 0);
      }
  }
  pb_test_urb_free (urb);
  pb_test_driver_expect_control (&f->driver, 0x80, PB_USB_REQ_GET_DESCRIPTOR, 0x0303, 0x0409, 255, NULL, PB_URB_OK, NULL, 2 + 2 * strlen ("PBKBD0001") /* length only: the number depends on test order */);

  pb_device_describe (f->device, &record);
  g_assert_cmpuint (record.speed, ==, PB_USBIP_SPEED_FULL);
  g_assert_cmpuint (record.num_interfaces, ==, 1);
  g_assert_cmpuint (record.interfaces[0].interface_class, ==, 3);
  g_assert_cmpuint (record.interfaces[0].interface_subclass, ==, 1);
  g_assert_cmpuint (record.interfaces[0].interface_protocol, ==, 1);
  g_assert_cmpint (pb_device_get_endpoint_type (f->device, 1, PB_USBIP_DIR_IN), ==, PB_ENDPOINT_INTERRUPT);
}

static void
test_type_string (Fixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  PbUrb *early = pb_test_driver_urb_new (&f->driver, 1, PB_USBIP_DIR_IN, 8);
  PbUrb *late;

  /* With nothing typed the host's poll waits. */
  pb_device_submit (f->device, early);
  g_assert_cmpuint (f->driver.completed.length, ==, 0);
  g_assert_cmpuint (pb_keyboard_get_pending_reports (f->keyboard), ==, 0);

  g_assert_true (pb_keyboard_type_string (f->keyboard, "Hi!\n", &error));
  g_assert_no_error (error);
  /* The waiting poll took the first report at once. */
  g_assert_cmpuint (f->driver.completed.length, ==, 1);
  expect_report (f, early, 0x02, 0x0b); /* shift + h */
  g_assert_cmpuint (pb_keyboard_get_pending_reports (f->keyboard), ==, 7);

  poll_report (f, 0, 0);
  poll_report (f, 0, 0x0c);    /* i */
  poll_report (f, 0, 0);
  poll_report (f, 0x02, 0x1e); /* shift + 1 */
  poll_report (f, 0, 0);
  g_assert_cmpuint (pb_keyboard_get_pending_reports (f->keyboard), ==, 2);
  poll_report (f, 0, 0x28);    /* Enter */
  poll_report (f, 0, 0);
  g_assert_cmpuint (pb_keyboard_get_pending_reports (f->keyboard), ==, 0);

  /* GET_REPORT answers the state the host last saw: all keys up. */
  {
    static const guint8 released[8] = { 0 };
    pb_test_driver_expect_control (&f->driver, 0xa1, 0x01, 0x0100, 0, 8, NULL, PB_URB_OK, released, 8);
  }

  /* Doubled letters get their release in between. */
  g_assert_true (pb_keyboard_type_string (f->keyboard, "oo", &error));
  poll_report (f, 0, 0x12);
  {
    static const guint8 pressed[8] = { 0, 0, 0x12, 0, 0, 0, 0, 0 };
    pb_test_driver_expect_control (&f->driver, 0xa1, 0x01, 0x0100, 0, 8, NULL, PB_URB_OK, pressed, 8);
  }
  poll_report (f, 0, 0);
  poll_report (f, 0, 0x12);
  poll_report (f, 0, 0);

  /* Queued again: the next poll waits, then cancel ends it. */
  late = pb_test_driver_urb_new (&f->driver, 1, PB_USBIP_DIR_IN, 8);
  pb_device_submit (f->device, late);
  g_assert_cmpuint (f->driver.completed.length, ==, 0);
  late->cancelled = TRUE;
  pb_device_cancel (f->device, late);
  g_assert_true (g_queue_pop_head (&f->driver.completed) == late);
  g_assert_cmpint (late->status, ==, PB_URB_ECONNRESET);
  g_assert_cmpuint (late->actual_length, ==, 0);
  pb_test_urb_free (late);

  /* Nothing was consumed by the cancelled poll. */
  g_assert_true (pb_keyboard_type_string (f->keyboard, "z", &error));
  poll_report (f, 0, 0x1d);
  poll_report (f, 0, 0);
}

static void
test_layout (Fixture *f, gconstpointer data)
{
  static const struct {
    char c;
    guint8 modifiers;
    guint8 usage;
  } keys[] = {
    { 'a', 0, 0x04 }, { 'z', 0, 0x1d }, { 'A', 2, 0x04 }, { 'Z', 2, 0x1d }, { '1', 0, 0x1e },
    { '9', 0, 0x26 }, { '0', 0, 0x27 }, { '!', 2, 0x1e }, { '@', 2, 0x1f }, { '#', 2, 0x20 },
    { '$', 2, 0x21 }, { '%', 2, 0x22 }, { '^', 2, 0x23 }, { '&', 2, 0x24 }, { '*', 2, 0x25 },
    { '(', 2, 0x26 }, { ')', 2, 0x27 }, { '\n', 0, 0x28 }, { '\t', 0, 0x2b }, { ' ', 0, 0x2c },
    { '-', 0, 0x2d }, { '_', 2, 0x2d }, { '=', 0, 0x2e }, { '+', 2, 0x2e }, { '[', 0, 0x2f },
    { '{', 2, 0x2f }, { ']', 0, 0x30 }, { '}', 2, 0x30 }, { '\\', 0, 0x31 }, { '|', 2, 0x31 },
    { ';', 0, 0x33 }, { ':', 2, 0x33 }, { '\'', 0, 0x34 }, { '"', 2, 0x34 }, { '`', 0, 0x35 },
    { '~', 2, 0x35 }, { ',', 0, 0x36 }, { '<', 2, 0x36 }, { '.', 0, 0x37 }, { '>', 2, 0x37 },
    { '/', 0, 0x38 }, { '?', 2, 0x38 },
  };
  g_autoptr(GError) error = NULL;
  char all[128];
  gsize n = 0;

  for (gsize i = 0; i < G_N_ELEMENTS (keys); i++)
    {
      char text[2] = { keys[i].c, '\0' };
      g_assert_true (pb_keyboard_type_string (f->keyboard, text, &error));
      g_assert_no_error (error);
      poll_report (f, keys[i].modifiers, keys[i].usage);
      poll_report (f, 0, 0);
    }

  /* Every printable ASCII character is typeable. */
  for (int c = 0x20; c < 0x7f; c++)
    all[n++] = (char) c;
  all[n] = '\0';
  g_assert_true (pb_keyboard_type_string (f->keyboard, all, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (pb_keyboard_get_pending_reports (f->keyboard), ==, 2 * n);
}

static void
test_rejects (Fixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *big = NULL;
  PbUrb *urb;

  g_assert_false (pb_keyboard_type_string (f->keyboard, "ab\rc", &error));
  g_assert_error (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT);
  g_clear_error (&error);
  g_assert_false (pb_keyboard_type_string (f->keyboard, "caf\xc3\xa9", &error));
  g_assert_error (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT);
  g_clear_error (&error);
  g_assert_false (pb_keyboard_type_string (f->keyboard, "\x7f", &error));
  g_assert_error (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT);
  g_clear_error (&error);
  g_assert_cmpuint (pb_keyboard_get_pending_reports (f->keyboard), ==, 0);

  /* Nothing was queued: a poll still waits. */
  urb = pb_test_driver_urb_new (&f->driver, 1, PB_USBIP_DIR_IN, 8);
  pb_device_submit (f->device, urb);
  g_assert_cmpuint (f->driver.completed.length, ==, 0);
  urb->cancelled = TRUE;
  pb_device_cancel (f->device, urb);
  g_assert_true (g_queue_pop_head (&f->driver.completed) == urb);
  pb_test_urb_free (urb);

  /* The queue holds at most 64 KiB of text; beyond that nothing is added. */
  big = g_strnfill (64 * 1024 - 1, 'x');
  g_assert_true (pb_keyboard_type_string (f->keyboard, big, &error));
  g_assert_no_error (error);
  g_assert_false (pb_keyboard_type_string (f->keyboard, "yy", &error));
  g_assert_error (error, PB_ERROR, PB_ERROR_TOO_LARGE);
  g_clear_error (&error);
  g_assert_cmpuint (pb_keyboard_get_pending_reports (f->keyboard), ==, 2 * (64 * 1024 - 1));
  g_assert_true (pb_keyboard_type_string (f->keyboard, "y", &error));
  g_assert_no_error (error);

  /* Taking reports makes room again. */
  poll_report (f, 0, 0x1b);
  poll_report (f, 0, 0);
  g_assert_true (pb_keyboard_type_string (f->keyboard, "y", &error));
  g_assert_no_error (error);

  /* A buffer shorter than a report is babble; the report stays queued. */
  urb = pb_test_driver_urb_new (&f->driver, 1, PB_USBIP_DIR_IN, 4);
  pb_device_submit (f->device, urb);
  g_assert_true (g_queue_pop_head (&f->driver.completed) == urb);
  g_assert_cmpint (urb->status, ==, PB_URB_EOVERFLOW);
  pb_test_urb_free (urb);
  g_assert_cmpuint (pb_keyboard_get_pending_reports (f->keyboard), ==, 2 * 64 * 1024);
}

static void
test_leds (Fixture *f, gconstpointer data)
{
  static const guint8 caps = PB_KEYBOARD_LED_CAPS_LOCK;
  static const guint8 num_scroll = PB_KEYBOARD_LED_NUM_LOCK | PB_KEYBOARD_LED_SCROLL_LOCK;
  static const guint8 none = 0;

  g_assert_cmpuint (pb_keyboard_get_leds (f->keyboard), ==, 0);
  pb_test_driver_expect_control (&f->driver, 0x21, 0x09, 0x0200, 0, 1, &caps, PB_URB_OK, NULL, 1);
  g_assert_cmpuint (f->leds_signals, ==, 1);
  g_assert_cmpuint (f->last_leds, ==, PB_KEYBOARD_LED_CAPS_LOCK);
  g_assert_cmpuint (pb_keyboard_get_leds (f->keyboard), ==, PB_KEYBOARD_LED_CAPS_LOCK);
  pb_test_driver_expect_control (&f->driver, 0xa1, 0x01, 0x0200, 0, 1, NULL, PB_URB_OK, &caps, 1);

  /* The same state again is no change. */
  pb_test_driver_expect_control (&f->driver, 0x21, 0x09, 0x0200, 0, 1, &caps, PB_URB_OK, NULL, 1);
  g_assert_cmpuint (f->leds_signals, ==, 1);

  pb_test_driver_expect_control (&f->driver, 0x21, 0x09, 0x0200, 0, 1, &num_scroll, PB_URB_OK, NULL, 1);
  g_assert_cmpuint (f->leds_signals, ==, 2);
  g_assert_cmpuint (pb_keyboard_get_leds (f->keyboard), ==, 0x05);

  /* Input and feature reports cannot be set; report IDs do not exist; other interfaces neither. */
  pb_test_driver_expect_control (&f->driver, 0x21, 0x09, 0x0100, 0, 1, &caps, PB_URB_EPIPE, NULL, 0);
  pb_test_driver_expect_control (&f->driver, 0x21, 0x09, 0x0300, 0, 1, &caps, PB_URB_EPIPE, NULL, 0);
  pb_test_driver_expect_control (&f->driver, 0x21, 0x09, 0x0201, 0, 1, &caps, PB_URB_EPIPE, NULL, 0);
  pb_test_driver_expect_control (&f->driver, 0x21, 0x09, 0x0200, 1, 1, &caps, PB_URB_EPIPE, NULL, 0);
  g_assert_cmpuint (pb_keyboard_get_leds (f->keyboard), ==, 0x05);

  pb_test_driver_expect_control (&f->driver, 0x21, 0x09, 0x0200, 0, 1, &none, PB_URB_OK, NULL, 1);
  g_assert_cmpuint (f->leds_signals, ==, 3);
  g_assert_cmpuint (f->last_leds, ==, 0);
}

static void
test_idle_and_protocol (Fixture *f, gconstpointer data)
{
  static const guint8 default_idle = 125, zero = 0, one = 1, idle_48 = 12;

  /* HID defaults: 500 ms idle, report protocol. */
  pb_test_driver_expect_control (&f->driver, 0xa1, 0x02, 0, 0, 1, NULL, PB_URB_OK, &default_idle, 1);
  pb_test_driver_expect_control (&f->driver, 0xa1, 0x03, 0, 0, 1, NULL, PB_URB_OK, &one, 1);

  pb_test_driver_expect_control (&f->driver, 0x21, 0x0a, 0x0000, 0, 0, NULL, PB_URB_OK, NULL, 0);
  pb_test_driver_expect_control (&f->driver, 0xa1, 0x02, 0, 0, 1, NULL, PB_URB_OK, &zero, 1);
  pb_test_driver_expect_control (&f->driver, 0x21, 0x0a, 12 << 8, 0, 0, NULL, PB_URB_OK, NULL, 0);
  pb_test_driver_expect_control (&f->driver, 0xa1, 0x02, 0, 0, 1, NULL, PB_URB_OK, &idle_48, 1);
  /* Report ID 3 does not exist. */
  pb_test_driver_expect_control (&f->driver, 0x21, 0x0a, (5 << 8) | 3, 0, 0, NULL, PB_URB_EPIPE, NULL, 0);
  pb_test_driver_expect_control (&f->driver, 0xa1, 0x02, 0, 0, 1, NULL, PB_URB_OK, &idle_48, 1);

  pb_test_driver_expect_control (&f->driver, 0x21, 0x0b, 0, 0, 0, NULL, PB_URB_OK, NULL, 0);
  pb_test_driver_expect_control (&f->driver, 0xa1, 0x03, 0, 0, 1, NULL, PB_URB_OK, &zero, 1);
  pb_test_driver_expect_control (&f->driver, 0x21, 0x0b, 2, 0, 0, NULL, PB_URB_EPIPE, NULL, 0);
  pb_test_driver_expect_control (&f->driver, 0xa1, 0x03, 0, 0, 1, NULL, PB_URB_OK, &zero, 1);

  /* Boot protocol: the same 8-byte report. */
  {
    g_autoptr(GError) error = NULL;
    g_assert_true (pb_keyboard_type_string (f->keyboard, "Q", &error));
    poll_report (f, 0x02, 0x14);
    poll_report (f, 0, 0);
  }

  /* Unknown class request and a vendor request stall. */
  pb_test_driver_expect_control (&f->driver, 0xa1, 0x07, 0, 0, 1, NULL, PB_URB_EPIPE, NULL, 0);
  pb_test_driver_expect_control (&f->driver, 0xc0, 0x01, 0, 0, 1, NULL, PB_URB_EPIPE, NULL, 0);

  /* A port reset returns to the defaults. */
  pb_test_driver_expect_control (&f->driver, 0x23, PB_USB_REQ_SET_FEATURE, 4, 1, 0, NULL, PB_URB_OK, NULL, 0);
  pb_test_driver_expect_control (&f->driver, 0xa1, 0x03, 0, 0, 1, NULL, PB_URB_OK, &one, 1);
  pb_test_driver_expect_control (&f->driver, 0xa1, 0x02, 0, 0, 1, NULL, PB_URB_OK, &default_idle, 1);
}

static void
test_close_and_reopen (Fixture *f, gconstpointer data)
{
  static const guint8 caps = PB_KEYBOARD_LED_CAPS_LOCK;
  g_autoptr(GError) error = NULL;

  pb_test_driver_expect_control (&f->driver, 0x21, 0x09, 0x0200, 0, 1, &caps, PB_URB_OK, NULL, 1);
  g_assert_true (pb_keyboard_type_string (f->keyboard, "abc", &error));
  poll_report (f, 0, 0x04);

  /* Unplugged: queued text and LEDs are gone. */
  pb_device_close (f->device);
  g_assert_cmpuint (pb_keyboard_get_pending_reports (f->keyboard), ==, 0);
  g_assert_cmpuint (pb_keyboard_get_leds (f->keyboard), ==, 0);
  g_assert_cmpuint (f->leds_signals, ==, 2);

  /* Typed before the next import: waits for the host. */
  g_assert_true (pb_keyboard_type_string (f->keyboard, "d", &error));
  g_assert_true (pb_device_open (f->device, &error));
  g_assert_no_error (error);
  pb_test_driver_expect_control (&f->driver, 0x00, PB_USB_REQ_SET_CONFIGURATION, 1, 0, 0, NULL, PB_URB_OK, NULL, 0);
  {
    static const guint8 released[8] = { 0 };
    pb_test_driver_expect_control (&f->driver, 0xa1, 0x01, 0x0100, 0, 8, NULL, PB_URB_OK, released, 8);
  }
  poll_report (f, 0, 0x07);
  poll_report (f, 0, 0);
}

/* The device may outlive its keyboard (a server still holds it): held URBs end, nothing crashes. */
static void
test_device_outlives_keyboard (void)
{
  Fixture fixture = { 0 }, *f = &fixture;
  g_autoptr(GError) error = NULL;
  PbVirtualDevice *device;
  PbUrb *urb;

  f->keyboard = pb_keyboard_new ();
  device = g_object_ref (pb_keyboard_get_device (f->keyboard));
  f->device = PB_DEVICE (device);
  pb_test_driver_init (&f->driver, f->device);
  g_assert_true (pb_device_open (f->device, &error));
  pb_test_driver_expect_control (&f->driver, 0x00, PB_USB_REQ_SET_CONFIGURATION, 1, 0, 0, NULL, PB_URB_OK, NULL, 0);
  urb = pb_test_driver_urb_new (&f->driver, 1, PB_USBIP_DIR_IN, 8);
  pb_device_submit (f->device, urb);
  g_assert_cmpuint (f->driver.completed.length, ==, 0);

  g_clear_object (&f->keyboard);
  g_assert_true (g_queue_pop_head (&f->driver.completed) == urb);
  g_assert_cmpint (urb->status, ==, PB_URB_ESHUTDOWN);
  pb_test_urb_free (urb);

  urb = pb_test_driver_urb_new (&f->driver, 1, PB_USBIP_DIR_IN, 8);
  pb_device_submit (f->device, urb);
  g_assert_true (g_queue_pop_head (&f->driver.completed) == urb);
  g_assert_cmpint (urb->status, ==, PB_URB_ESHUTDOWN);
  pb_test_urb_free (urb);
  pb_test_driver_expect_control (&f->driver, 0xa1, 0x03, 0, 0, 1, NULL, PB_URB_EPIPE, NULL, 0);
  /* Standard requests are still the framework's. */
  pb_test_driver_expect_control (&f->driver, 0x81, PB_USB_REQ_GET_DESCRIPTOR, 0x2200, 0, 255, NULL, PB_URB_OK, NULL, 63);

  pb_device_close (f->device);
  g_object_unref (device);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);

  g_test_add ("/keyboard/descriptors", Fixture, NULL, fixture_setup, test_descriptors, fixture_teardown);
  g_test_add ("/keyboard/type-string", Fixture, NULL, fixture_setup, test_type_string, fixture_teardown);
  g_test_add ("/keyboard/layout", Fixture, NULL, fixture_setup, test_layout, fixture_teardown);
  g_test_add ("/keyboard/rejects", Fixture, NULL, fixture_setup, test_rejects, fixture_teardown);
  g_test_add ("/keyboard/leds", Fixture, NULL, fixture_setup, test_leds, fixture_teardown);
  g_test_add ("/keyboard/idle-and-protocol", Fixture, NULL, fixture_setup, test_idle_and_protocol, fixture_teardown);
  g_test_add ("/keyboard/close-and-reopen", Fixture, NULL, fixture_setup, test_close_and_reopen, fixture_teardown);
  g_test_add_func ("/keyboard/device-outlives-keyboard", test_device_outlives_keyboard);
  return g_test_run ();
}
