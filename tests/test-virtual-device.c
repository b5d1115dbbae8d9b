/* PbVirtualDevice's own answers to the standard requests, driven through the PbDevice API as a
 * session would, and its rules: halts, per-endpoint order, cancel, descriptor validation. */
#include <string.h>

#include "pb-test-util.h"
#include "pb-virtual-device.h"

typedef struct {
  GQueue held;
  guint controls;
  guint cancels;
  guint8 last_clear_halt;
  guint8 last_configuration;
  gint last_interface_alt;
  guint resets;
} Program;

static gboolean
program_control (PbVirtualDevice *device, PbUrb *urb, gpointer user_data)
{
  Program *p = user_data;
  p->controls++;
  /* A vendor request that answers its wValue back. */
  if ((pb_urb_setup_request_type (urb) & PB_USB_TYPE_MASK) == PB_USB_TYPE_VENDOR && pb_urb_setup_request (urb) == 0x42)
    {
      guint16 value = pb_urb_setup_value (urb);
      pb_urb_complete_with_data (urb, &value, sizeof value);
      return TRUE;
    }
  return FALSE;
}

static void
program_transfer (PbVirtualDevice *device, PbUrb *urb, gpointer user_data)
{
  Program *p = user_data;
  g_queue_push_tail (&p->held, urb);
}

static void
program_cancel (PbVirtualDevice *device, PbUrb *urb, gpointer user_data)
{
  Program *p = user_data;
  p->cancels++;
  g_queue_remove (&p->held, urb);
  pb_urb_complete (urb, PB_URB_ECONNRESET, 0);
}

static void
program_clear_halt (PbVirtualDevice *device, guint8 address, gpointer user_data)
{
  ((Program *) user_data)->last_clear_halt = address;
}

static void
program_set_configuration (PbVirtualDevice *device, guint8 value, gpointer user_data)
{
  ((Program *) user_data)->last_configuration = value;
}

static void
program_set_interface (PbVirtualDevice *device, guint8 interface, guint8 alt, gpointer user_data)
{
  ((Program *) user_data)->last_interface_alt = alt;
}

static void
program_reset (PbVirtualDevice *device, gpointer user_data)
{
  ((Program *) user_data)->resets++;
}

static const PbVirtualDeviceOps program_ops = {
  .control = program_control,
  .transfer = program_transfer,
  .cancel = program_cancel,
  .clear_halt = program_clear_halt,
  .set_configuration = program_set_configuration,
  .set_interface = program_set_interface,
  .reset = program_reset,
};

static const guint8 device_descriptor[18] = {
  18, 1, 0x00, 0x02, 0x00, 0, 0, 64, 0x34, 0x12, 0x78, 0x56, 0x01, 0x02, 1, 2, 0, 1,
};
/* Interface 0 with bulk 0x81/0x02; interface 1 with an alternate setting 1 adding iso 0x83. */
static const guint8 configuration[] = {
  9, 2, 9 + 9 + 7 + 7 + 9 + 9 + 7, 0, 2, 1, 0, 0xc0, 50,
  9, 4, 0, 0, 2, 0xff, 0x01, 0x02, 0,
  7, 5, 0x81, 2, 0x00, 0x02, 0,
  7, 5, 0x02, 2, 0x00, 0x02, 0,
  9, 4, 1, 0, 0, 0xfe, 0, 0, 0,
  9, 4, 1, 1, 1, 0xfe, 0, 0, 0,
  7, 5, 0x83, 1, 0x00, 0x04, 1,
};
static const guint8 report_descriptor[] = { 0x05, 0x01, 0x09, 0x06, 0xc0 };

typedef struct {
  Program program;
  PbVirtualDevice *device;
  PbTestDriver driver;
} Fixture;

static void
fixture_setup (Fixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;

  memset (f, 0, sizeof *f);
  f->program.last_interface_alt = -1;
  f->device = pb_virtual_device_new (&program_ops, &f->program, NULL);
  g_assert_true (pb_virtual_device_set_descriptors (f->device, PB_USBIP_SPEED_HIGH, device_descriptor,
                                                    sizeof device_descriptor, configuration, sizeof configuration,
                                                    &error));
  g_assert_no_error (error);
  pb_virtual_device_set_string (f->device, 1, "Plugboard");
  pb_virtual_device_set_string (f->device, 2, "Test gadget ✓");
  pb_virtual_device_add_descriptor (f->device, PB_USB_DT_HID_REPORT, 0, 0, report_descriptor, sizeof report_descriptor);
  pb_device_set_address (PB_DEVICE (f->device), 100, 7, "100-7");
  pb_test_driver_init (&f->driver, PB_DEVICE (f->device));
  g_assert_true (pb_device_open (PB_DEVICE (f->device), &error));
  g_assert_no_error (error);
}

static void
fixture_teardown (Fixture *f, gconstpointer data)
{
  g_assert_cmpuint (f->program.held.length, ==, 0);
  g_assert_cmpuint (f->driver.completed.length, ==, 0);
  pb_device_close (PB_DEVICE (f->device));
  g_object_unref (f->device);
}

static void
test_descriptors (Fixture *f, gconstpointer data)
{
  static const guint8 languages[] = { 4, 3, 0x09, 0x04 };
  static const guint8 manufacturer[] = { 20, 3, 'P', 0, 'l', 0, 'u', 0, 'g', 0, 'b', 0, 'o', 0, 'a', 0, 'r', 0, 'd', 0 };

  pb_test_driver_expect_control (&f->driver, 0x80, PB_USB_REQ_GET_DESCRIPTOR, 0x0100, 0, 64, NULL, 0, device_descriptor, 18);
  /* The host asks for 8 bytes first, as Linux does with ep0 max packet unknown. */
  pb_test_driver_expect_control (&f->driver, 0x80, PB_USB_REQ_GET_DESCRIPTOR, 0x0100, 0, 8, NULL, 0, device_descriptor, 8);
  pb_test_driver_expect_control (&f->driver, 0x80, PB_USB_REQ_GET_DESCRIPTOR, 0x0200, 0, 9, NULL, 0, configuration, 9);
  pb_test_driver_expect_control (&f->driver, 0x80, PB_USB_REQ_GET_DESCRIPTOR, 0x0200, 0, 255, NULL, 0, configuration, sizeof configuration);
  pb_test_driver_expect_control (&f->driver, 0x80, PB_USB_REQ_GET_DESCRIPTOR, 0x0300, 0, 255, NULL, 0, languages, sizeof languages);
  pb_test_driver_expect_control (&f->driver, 0x80, PB_USB_REQ_GET_DESCRIPTOR, 0x0301, 0x0409, 255, NULL, 0, manufacturer, sizeof manufacturer);
  /* A string in UTF-16LE with a non-ASCII character; length in the first byte. */
  {
    PbUrb *urb = pb_test_driver_control (&f->driver, 0x80, PB_USB_REQ_GET_DESCRIPTOR, 0x0302, 0x0409, 255, NULL);
    g_assert_cmpint (urb->status, ==, 0);
    g_assert_cmpuint (urb->buffer[0], ==, 2 + 2 * 13);
    g_assert_cmpuint (urb->buffer[2 + 2 * 12], ==, 0x13);
    g_assert_cmpuint (urb->buffer[3 + 2 * 12], ==, 0x27);
    pb_test_urb_free (urb);
  }
  /* Missing string and unknown descriptor stall, after the program was asked for each. */
  pb_test_driver_expect_control (&f->driver, 0x80, PB_USB_REQ_GET_DESCRIPTOR, 0x0309, 0x0409, 255, NULL, PB_URB_EPIPE, NULL, 0);
  pb_test_driver_expect_control (&f->driver, 0x80, PB_USB_REQ_GET_DESCRIPTOR, 0x0f00, 0, 255, NULL, PB_URB_EPIPE, NULL, 0);
  g_assert_cmpuint (f->program.controls, ==, 2);
  /* Extra descriptor by interface. */
  pb_test_driver_expect_control (&f->driver, 0x81, PB_USB_REQ_GET_DESCRIPTOR, 0x2200, 0, 255, NULL, 0, report_descriptor, sizeof report_descriptor);
  pb_test_driver_expect_control (&f->driver, 0x81, PB_USB_REQ_GET_DESCRIPTOR, 0x2200, 1, 255, NULL, PB_URB_EPIPE, NULL, 0);
}

static void
test_configuration_and_interfaces (Fixture *f, gconstpointer data)
{
  static const guint8 zero = 0, one = 1;
  static const guint8 self_powered[2] = { 1, 0 };

  pb_test_driver_expect_control (&f->driver, 0x80, PB_USB_REQ_GET_CONFIGURATION, 0, 0, 1, NULL, 0, &zero, 1);
  /* Data endpoints do not exist while unconfigured. */
  pb_test_driver_expect_control (&f->driver, 0x81, PB_USB_REQ_GET_INTERFACE, 0, 0, 1, NULL, PB_URB_EPIPE, NULL, 0);
  pb_test_driver_expect_control (&f->driver, 0x00, PB_USB_REQ_SET_CONFIGURATION, 2, 0, 0, NULL, PB_URB_EPIPE, NULL, 0);
  pb_test_driver_expect_control (&f->driver, 0x00, PB_USB_REQ_SET_CONFIGURATION, 1, 0, 0, NULL, 0, NULL, 0);
  g_assert_cmpuint (f->program.last_configuration, ==, 1);
  pb_test_driver_expect_control (&f->driver, 0x80, PB_USB_REQ_GET_CONFIGURATION, 0, 0, 1, NULL, 0, &one, 1);
  g_assert_cmpuint (pb_virtual_device_get_configuration (f->device), ==, 1);

  g_assert_cmpint (pb_device_get_endpoint_type (PB_DEVICE (f->device), 1, PB_USBIP_DIR_IN), ==, PB_ENDPOINT_BULK);
  g_assert_cmpint (pb_device_get_endpoint_type (PB_DEVICE (f->device), 3, PB_USBIP_DIR_IN), ==, PB_ENDPOINT_ISOCHRONOUS);
  g_assert_cmpint (pb_device_get_endpoint_type (PB_DEVICE (f->device), 4, PB_USBIP_DIR_IN), ==, PB_ENDPOINT_UNKNOWN);

  pb_test_driver_expect_control (&f->driver, 0x01, PB_USB_REQ_SET_INTERFACE, 2, 1, 0, NULL, PB_URB_EPIPE, NULL, 0);
  pb_test_driver_expect_control (&f->driver, 0x01, PB_USB_REQ_SET_INTERFACE, 1, 1, 0, NULL, 0, NULL, 0);
  g_assert_cmpint (f->program.last_interface_alt, ==, 1);
  pb_test_driver_expect_control (&f->driver, 0x81, PB_USB_REQ_GET_INTERFACE, 0, 1, 1, NULL, 0, &one, 1);
  g_assert_cmpuint (pb_virtual_device_get_alternate_setting (f->device, 1), ==, 1);

  pb_test_driver_expect_control (&f->driver, 0x80, PB_USB_REQ_GET_STATUS, 0, 0, 2, NULL, 0, self_powered, 2);
  pb_test_driver_expect_control (&f->driver, 0x00, PB_USB_REQ_SET_FEATURE, PB_USB_FEATURE_REMOTE_WAKEUP, 0, 0, NULL, 0, NULL, 0);
  {
    static const guint8 powered_wakeup[2] = { 3, 0 };
    pb_test_driver_expect_control (&f->driver, 0x80, PB_USB_REQ_GET_STATUS, 0, 0, 2, NULL, 0, powered_wakeup, 2);
  }

  /* The device record follows the descriptors. */
  {
    PbUsbipDeviceRecord record;
    pb_device_describe (PB_DEVICE (f->device), &record);
    g_assert_cmpstr (record.busid, ==, "100-7");
    g_assert_cmpuint (record.busnum, ==, 100);
    g_assert_cmpuint (record.devnum, ==, 7);
    g_assert_cmpuint (record.id_vendor, ==, 0x1234);
    g_assert_cmpuint (record.id_product, ==, 0x5678);
    g_assert_cmpuint (record.bcd_device, ==, 0x0201);
    g_assert_cmpuint (record.speed, ==, PB_USBIP_SPEED_HIGH);
    g_assert_cmpuint (record.configuration_value, ==, 1);
    g_assert_cmpuint (record.num_interfaces, ==, 2);
    g_assert_cmpuint (record.interfaces[0].interface_class, ==, 0xff);
    g_assert_cmpuint (record.interfaces[0].interface_subclass, ==, 0x01);
    g_assert_cmpuint (record.interfaces[0].interface_protocol, ==, 0x02);
    g_assert_cmpuint (record.interfaces[1].interface_class, ==, 0xfe);
  }
}

static void
test_halt (Fixture *f, gconstpointer data)
{
  static const guint8 halted[2] = { 1, 0 }, running[2] = { 0, 0 };
  PbUrb *urb;

  pb_test_driver_expect_control (&f->driver, 0x00, PB_USB_REQ_SET_CONFIGURATION, 1, 0, 0, NULL, 0, NULL, 0);

  /* The program stalls a transfer: the endpoint halts, later transfers stall without reaching
   * it, until CLEAR_FEATURE(ENDPOINT_HALT). */
  urb = pb_test_driver_urb_new (&f->driver, 1, PB_USBIP_DIR_IN, 512);
  pb_device_submit (PB_DEVICE (f->device), urb);
  g_assert_true (g_queue_pop_head (&f->program.held) == urb);
  pb_urb_complete (urb, PB_URB_EPIPE, 0);
  g_assert_true (g_queue_pop_head (&f->driver.completed) == urb);
  pb_test_urb_free (urb);
  g_assert_true (pb_virtual_device_get_halt (f->device, 0x81));
  pb_test_driver_expect_control (&f->driver, 0x82, PB_USB_REQ_GET_STATUS, 0, 0x81, 2, NULL, 0, halted, 2);

  urb = pb_test_driver_urb_new (&f->driver, 1, PB_USBIP_DIR_IN, 512);
  pb_device_submit (PB_DEVICE (f->device), urb);
  g_assert_cmpuint (f->program.held.length, ==, 0);
  g_assert_true (g_queue_pop_head (&f->driver.completed) == urb);
  g_assert_cmpint (urb->status, ==, PB_URB_EPIPE);
  pb_test_urb_free (urb);

  pb_test_driver_expect_control (&f->driver, 0x02, PB_USB_REQ_CLEAR_FEATURE, PB_USB_FEATURE_ENDPOINT_HALT, 0x81, 0, NULL, 0, NULL, 0);
  g_assert_cmpuint (f->program.last_clear_halt, ==, 0x81);
  pb_test_driver_expect_control (&f->driver, 0x82, PB_USB_REQ_GET_STATUS, 0, 0x81, 2, NULL, 0, running, 2);
  /* The OUT endpoint with the same number is a different endpoint. */
  pb_test_driver_expect_control (&f->driver, 0x02, PB_USB_REQ_SET_FEATURE, PB_USB_FEATURE_ENDPOINT_HALT, 0x02, 0, NULL, 0, NULL, 0);
  g_assert_true (pb_virtual_device_get_halt (f->device, 0x02));
  g_assert_false (pb_virtual_device_get_halt (f->device, 0x81));
  /* An endpoint the configuration does not have. */
  pb_test_driver_expect_control (&f->driver, 0x02, PB_USB_REQ_CLEAR_FEATURE, PB_USB_FEATURE_ENDPOINT_HALT, 0x85, 0, NULL, PB_URB_EPIPE, NULL, 0);

  /* A port reset clears halts and tells the program. */
  pb_test_driver_expect_control (&f->driver, 0x23, PB_USB_REQ_SET_FEATURE, 4, 1, 0, NULL, 0, NULL, 0);
  g_assert_cmpuint (f->program.resets, ==, 1);
  g_assert_false (pb_virtual_device_get_halt (f->device, 0x02));
  g_assert_cmpuint (pb_virtual_device_get_configuration (f->device), ==, 1);
}

static void
test_order_and_cancel (Fixture *f, gconstpointer data)
{
  PbUrb *a, *b, *c;

  pb_test_driver_expect_control (&f->driver, 0x00, PB_USB_REQ_SET_CONFIGURATION, 1, 0, 0, NULL, 0, NULL, 0);
  a = pb_test_driver_urb_new (&f->driver, 1, PB_USBIP_DIR_IN, 512);
  b = pb_test_driver_urb_new (&f->driver, 1, PB_USBIP_DIR_IN, 512);
  c = pb_test_driver_urb_new (&f->driver, 2, PB_USBIP_DIR_OUT, 512);
  pb_device_submit (PB_DEVICE (f->device), a);
  pb_device_submit (PB_DEVICE (f->device), b);
  pb_device_submit (PB_DEVICE (f->device), c);
  g_assert_cmpuint (f->program.held.length, ==, 3);

  /* b finishes first but waits for a; c on another endpoint goes at once. */
  g_queue_remove (&f->program.held, b);
  pb_urb_complete (b, PB_URB_OK, 5);
  g_assert_cmpuint (f->driver.completed.length, ==, 0);
  g_queue_remove (&f->program.held, c);
  pb_urb_complete (c, PB_URB_OK, 512);
  g_assert_true (g_queue_pop_head (&f->driver.completed) == c);

  /* Cancelling b does not reach the program, which is done with it, but gives b back at once:
   * an unlink's answer must not wait behind a (Linux unlinks one URB at a time and waits).
   * Cancelling a reaches the program. */
  b->cancelled = TRUE;
  pb_device_cancel (PB_DEVICE (f->device), b);
  g_assert_cmpuint (f->program.cancels, ==, 0);
  g_assert_true (g_queue_pop_head (&f->driver.completed) == b);
  a->cancelled = TRUE;
  pb_device_cancel (PB_DEVICE (f->device), a);
  g_assert_cmpuint (f->program.cancels, ==, 1);
  g_assert_true (g_queue_pop_head (&f->driver.completed) == a);
  g_assert_cmpint (a->status, ==, PB_URB_ECONNRESET);
  g_assert_cmpuint (f->driver.completed.length, ==, 0);
  pb_test_urb_free (a);
  pb_test_urb_free (b);
  pb_test_urb_free (c);
}

static void
test_vendor_request_and_clamp (Fixture *f, gconstpointer data)
{
  static const guint8 echoed[2] = { 0x34, 0x12 };
  PbUrb *urb;

  pb_test_driver_expect_control (&f->driver, 0xc0, 0x42, 0x1234, 0, 2, NULL, 0, echoed, 2);
  /* Unknown vendor request: the program declines, the framework stalls. */
  pb_test_driver_expect_control (&f->driver, 0xc0, 0x43, 0, 0, 2, NULL, PB_URB_EPIPE, NULL, 0);

  /* A program claiming more than the buffer holds is clamped, never sent over-long. */
  pb_test_driver_expect_control (&f->driver, 0x00, PB_USB_REQ_SET_CONFIGURATION, 1, 0, 0, NULL, 0, NULL, 0);
  urb = pb_test_driver_urb_new (&f->driver, 1, PB_USBIP_DIR_IN, 16);
  pb_device_submit (PB_DEVICE (f->device), urb);
  g_queue_remove (&f->program.held, urb);
  g_test_expect_message ("plugboard", G_LOG_LEVEL_WARNING, "*clamped*");
  pb_urb_complete (urb, PB_URB_OK, 4096);
  g_test_assert_expected_messages ();
  g_assert_true (g_queue_pop_head (&f->driver.completed) == urb);
  g_assert_cmpuint (urb->actual_length, ==, 16);
  pb_test_urb_free (urb);
}

static void
test_descriptor_validation (void)
{
  g_autoptr(PbVirtualDevice) device = pb_virtual_device_new (&program_ops, NULL, NULL);
  g_autoptr(GError) error = NULL;
  guint8 bad[sizeof configuration];

  /* wTotalLength disagrees with the length given. */
  memcpy (bad, configuration, sizeof bad);
  bad[2] = 10;
  g_assert_false (pb_virtual_device_set_descriptors (device, PB_USBIP_SPEED_HIGH, device_descriptor, 18, bad,
                                                     sizeof bad, &error));
  g_assert_error (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT);
  g_clear_error (&error);

  /* A descriptor running past the end. */
  memcpy (bad, configuration, sizeof bad);
  bad[9 + 9 + 7 + 7 + 9 + 9] = 40;
  g_assert_false (pb_virtual_device_set_descriptors (device, PB_USBIP_SPEED_HIGH, device_descriptor, 18, bad,
                                                     sizeof bad, &error));
  g_assert_error (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT);
  g_clear_error (&error);

  /* 512-byte bulk packets at full speed. */
  g_assert_false (pb_virtual_device_set_descriptors (device, PB_USBIP_SPEED_FULL, device_descriptor, 18,
                                                     configuration, sizeof configuration, &error));
  g_assert_error (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT);
  g_clear_error (&error);

  /* Opening without descriptors fails cleanly. */
  g_assert_false (pb_device_open (PB_DEVICE (device), &error));
  g_assert_error (error, PB_ERROR, PB_ERROR_DEVICE);
}

/* The program goes away while someone still holds the device: nothing calls into it again. */
static void
test_detach (Fixture *f, gconstpointer data)
{
  static const guint8 zero_status[2] = { 0, 0 };
  g_autoptr(GError) error = NULL;
  PbUrb *urb;

  pb_test_driver_expect_control (&f->driver, 0x00, PB_USB_REQ_SET_CONFIGURATION, 1, 0, 0, NULL, 0, NULL, 0);
  pb_virtual_device_detach (f->device);
  urb = pb_test_driver_urb_new (&f->driver, 1, PB_USBIP_DIR_IN, 64);
  pb_device_submit (PB_DEVICE (f->device), urb);
  pb_test_driver_take (&f->driver, urb);
  g_assert_cmpint (urb->status, ==, PB_URB_ESHUTDOWN);
  pb_test_urb_free (urb);
  /* The vendor request the program answered before now stalls without reaching it. */
  pb_test_driver_expect_control (&f->driver, 0xc0, 0x42, 0x1234, 0, 2, NULL, PB_URB_EPIPE, NULL, 0);
  g_assert_cmpuint (f->program.controls, ==, 0);
  pb_test_driver_expect_control (&f->driver, 0x80, PB_USB_REQ_GET_DESCRIPTOR, 0x0100, 0, 18, NULL, 0,
                                 device_descriptor, 18);
  pb_test_driver_expect_control (&f->driver, 0x82, PB_USB_REQ_GET_STATUS, 0, 0x81, 2, NULL, 0, zero_status, 2);
  pb_device_close (PB_DEVICE (f->device));
  g_assert_false (pb_device_open (PB_DEVICE (f->device), &error));
  g_assert_error (error, PB_ERROR, PB_ERROR_DEVICE);
  /* The fixture's teardown closes again: harmless. */
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);

  g_test_add ("/virtual-device/descriptors", Fixture, NULL, fixture_setup, test_descriptors, fixture_teardown);
  g_test_add ("/virtual-device/configuration-and-interfaces", Fixture, NULL, fixture_setup,
              test_configuration_and_interfaces, fixture_teardown);
  g_test_add ("/virtual-device/halt", Fixture, NULL, fixture_setup, test_halt, fixture_teardown);
  g_test_add ("/virtual-device/order-and-cancel", Fixture, NULL, fixture_setup, test_order_and_cancel, fixture_teardown);
  g_test_add ("/virtual-device/vendor-request-and-clamp", Fixture, NULL, fixture_setup, test_vendor_request_and_clamp,
              fixture_teardown);
  g_test_add ("/virtual-device/detach", Fixture, NULL, fixture_setup, test_detach, fixture_teardown);
  g_test_add_func ("/virtual-device/descriptor-validation", test_descriptor_validation);
  return g_test_run ();
}
