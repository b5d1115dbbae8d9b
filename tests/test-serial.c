/* PbSerial driven through the PbDevice API as a session would: descriptors, CDC-ACM class
 * requests, echo mode with back-pressure, the pty bridge both ways, cancel. */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "pb-test-util.h"
#include "pb-error.h"
#include "pb-serial.h"

typedef struct {
  PbSerial *serial;
  PbDevice *device;
  PbTestDriver driver;
  int slave_fd; /* the test's own fd on the pty, as a local program would open it */
} Fixture;

static PbUrb *
submit_out (Fixture *f, const void *data, guint32 length)
{
  PbUrb *urb = pb_test_driver_urb_new (&f->driver, 2, PB_USBIP_DIR_OUT, length);

  memcpy (urb->buffer, data, length);
  pb_device_submit (f->device, urb);
  return urb;
}

static PbUrb *
submit_in (Fixture *f, guint32 length)
{
  PbUrb *urb = pb_test_driver_urb_new (&f->driver, 1, PB_USBIP_DIR_IN, length);

  pb_device_submit (f->device, urb);
  return urb;
}

static void
fixture_setup (Fixture *f, gconstpointer data)
{
  PbSerialMode mode = GPOINTER_TO_INT (data);
  g_autoptr(GError) error = NULL;

  memset (f, 0, sizeof *f);
  f->slave_fd = -1;
  f->serial = pb_serial_new (mode, &error);
  g_assert_no_error (error);
  g_assert_nonnull (f->serial);
  f->device = PB_DEVICE (pb_serial_get_device (f->serial));
  pb_test_driver_init (&f->driver, f->device);
  pb_device_set_address (f->device, 100, 3, "100-3");
  g_assert_true (pb_device_open (f->device, &error));
  g_assert_no_error (error);
  pb_test_driver_expect_control (&f->driver, 0x00, PB_USB_REQ_SET_CONFIGURATION, 1, 0, 0, NULL, PB_URB_OK, NULL, 0);

  if (mode == PB_SERIAL_MODE_PTY)
    {
      g_assert_nonnull (pb_serial_get_pty_path (f->serial));
      f->slave_fd = open (pb_serial_get_pty_path (f->serial), O_RDWR | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
      g_assert_cmpint (f->slave_fd, >=, 0);
    }
  else
    g_assert_null (pb_serial_get_pty_path (f->serial));
}

static void
fixture_teardown (Fixture *f, gconstpointer data)
{
  g_assert_cmpuint (f->driver.completed.length, ==, 0);
  if (f->slave_fd >= 0)
    close (f->slave_fd);
  pb_device_close (f->device);
  g_object_unref (f->serial);
  /* Nothing of ours may stay attached to the main context. */
  while (g_main_context_iteration (NULL, FALSE))
    ;
}

/* Runs the main context until urb completes (or fails the test after 5 s). */
static void
wait_for (Fixture *f, PbUrb *urb)
{
  gint64 deadline = g_get_monotonic_time () + 5 * G_USEC_PER_SEC;

  while (g_queue_find (&f->driver.completed, urb) == NULL)
    {
      g_assert_cmpint (g_get_monotonic_time (), <, deadline);
      if (!g_main_context_iteration (NULL, FALSE))
        g_usleep (1000);
    }
  g_queue_remove (&f->driver.completed, urb);
}

/* Lets the main context run for a moment and checks nothing completed. */
static void
expect_nothing_for_a_while (Fixture *f)
{
  gint64 until = g_get_monotonic_time () + 50 * 1000;

  while (g_get_monotonic_time () < until)
    if (!g_main_context_iteration (NULL, FALSE))
      g_usleep (1000);
  g_assert_cmpuint (f->driver.completed.length, ==, 0);
}

static void
cancel (Fixture *f, PbUrb *urb, guint32 expected_length)
{
  urb->cancelled = TRUE;
  pb_device_cancel (f->device, urb);
  g_assert_true (g_queue_pop_head (&f->driver.completed) == urb);
  g_assert_cmpint (urb->status, ==, PB_URB_ECONNRESET);
  g_assert_cmpuint (urb->actual_length, ==, expected_length);
  pb_test_urb_free (urb);
}

static void
test_descriptors (Fixture *f, gconstpointer data)
{
  static const guint8 expected_functional[] = {
    9, 4, 0, 0, 1, 0x02, 0x02, 0x01, 0,
    5, 0x24, 0x00, 0x10, 0x01,
    5, 0x24, 0x01, 0x00, 1,
    4, 0x24, 0x02, 0x02,
    5, 0x24, 0x06, 0, 1,
    7, 5, 0x83, 3, 16, 0, 8,
    9, 4, 1, 0, 2, 0x0a, 0, 0, 0,
    7, 5, 0x81, 2, 0x00, 0x02, 0,
    7, 5, 0x02, 2, 0x00, 0x02, 0,
  };
  PbUsbipDeviceRecord record;
  PbUrb *urb;

  urb = pb_test_driver_control (&f->driver, 0x80, PB_USB_REQ_GET_DESCRIPTOR, 0x0100, 0, 18, NULL);
  g_assert_cmpint (urb->status, ==, PB_URB_OK);
  g_assert_cmpuint (urb->actual_length, ==, 18);
  g_assert_cmpuint (urb->buffer[4], ==, 0x02); /* bDeviceClass: communications */
  pb_test_urb_free (urb);

  urb = pb_test_driver_control (&f->driver, 0x80, PB_USB_REQ_GET_DESCRIPTOR, 0x0200, 0, 512, NULL);
  g_assert_cmpint (urb->status, ==, PB_URB_OK);
  g_assert_cmpuint (urb->actual_length, ==, 9 + sizeof expected_functional);
  g_assert_cmpuint (urb->buffer[2], ==, 9 + sizeof expected_functional);
  g_assert_cmpuint (urb->buffer[4], ==, 2);
  g_assert_cmpmem (urb->buffer + 9, urb->actual_length - 9, expected_functional, sizeof expected_functional);
  pb_test_urb_free (urb);

  urb = pb_test_driver_control (&f->driver, 0x80, PB_USB_REQ_GET_DESCRIPTOR, 0x0302, 0x0409, 255, NULL);
  g_assert_cmpuint (urb->buffer[0], ==, 2 + 2 * strlen ("Plugboard Virtual Serial"));
  g_assert_cmpuint (urb->buffer[2], ==, 'P');
  g_assert_cmpuint (urb->buffer[2 + 2 * 18], ==, 'S');
  pb_test_urb_free (urb);

  pb_device_describe (f->device, &record);
  g_assert_cmpuint (record.speed, ==, PB_USBIP_SPEED_HIGH);
  g_assert_cmpuint (record.device_class, ==, 0x02);
  g_assert_cmpuint (record.num_interfaces, ==, 2);
  g_assert_cmpuint (record.interfaces[0].interface_class, ==, 0x02);
  g_assert_cmpuint (record.interfaces[0].interface_subclass, ==, 0x02);
  g_assert_cmpuint (record.interfaces[1].interface_class, ==, 0x0a);
  g_assert_cmpint (pb_device_get_endpoint_type (f->device, 1, PB_USBIP_DIR_IN), ==, PB_ENDPOINT_BULK);
  g_assert_cmpint (pb_device_get_endpoint_type (f->device, 2, PB_USBIP_DIR_OUT), ==, PB_ENDPOINT_BULK);
  g_assert_cmpint (pb_device_get_endpoint_type (f->device, 3, PB_USBIP_DIR_IN), ==, PB_ENDPOINT_INTERRUPT);
}

static void
test_line_coding (Fixture *f, gconstpointer data)
{
  static const guint8 default_coding[7] = { 0x80, 0x25, 0, 0, 0, 0, 8 };      /* 9600 8N1 */
  static const guint8 fast_even[7] = { 0x00, 0xc2, 0x01, 0x00, 2, 2, 7 };     /* 115200 7E2 */
  static const guint8 nine_bits[7] = { 0x00, 0xc2, 0x01, 0x00, 0, 0, 9 };
  static const guint8 zero_rate[7] = { 0, 0, 0, 0, 0, 0, 8 };
  guint32 rate;
  guint8 stop_bits, parity, data_bits;

  pb_test_driver_expect_control (&f->driver, 0xa1, 0x21, 0, 0, 7, NULL, PB_URB_OK, default_coding, 7);
  pb_test_driver_expect_control (&f->driver, 0x21, 0x20, 0, 0, 7, fast_even, PB_URB_OK, NULL, 7);
  pb_test_driver_expect_control (&f->driver, 0xa1, 0x21, 0, 0, 7, NULL, PB_URB_OK, fast_even, 7);
  pb_serial_get_line_coding (f->serial, &rate, &stop_bits, &parity, &data_bits);
  g_assert_cmpuint (rate, ==, 115200);
  g_assert_cmpuint (stop_bits, ==, 2);
  g_assert_cmpuint (parity, ==, 2);
  g_assert_cmpuint (data_bits, ==, 7);

  /* Out-of-range values and short data stall and change nothing. */
  pb_test_driver_expect_control (&f->driver, 0x21, 0x20, 0, 0, 7, nine_bits, PB_URB_EPIPE, NULL, 0);
  pb_test_driver_expect_control (&f->driver, 0x21, 0x20, 0, 0, 7, zero_rate, PB_URB_EPIPE, NULL, 0);
  pb_test_driver_expect_control (&f->driver, 0x21, 0x20, 0, 0, 6, fast_even, PB_URB_EPIPE, NULL, 0);
  /* To the data interface instead of the communications one. */
  pb_test_driver_expect_control (&f->driver, 0x21, 0x20, 0, 1, 7, default_coding, PB_URB_EPIPE, NULL, 0);
  pb_test_driver_expect_control (&f->driver, 0xa1, 0x21, 0, 0, 7, NULL, PB_URB_OK, fast_even, 7);
  /* A short read gets a prefix. */
  pb_test_driver_expect_control (&f->driver, 0xa1, 0x21, 0, 0, 4, NULL, PB_URB_OK, fast_even, 4);

  /* A new import starts from the defaults. */
  pb_device_close (f->device);
  g_assert_true (pb_device_open (f->device, NULL));
  pb_test_driver_expect_control (&f->driver, 0xa1, 0x21, 0, 0, 7, NULL, PB_URB_OK, default_coding, 7);
}

static void
test_control_lines (Fixture *f, gconstpointer data)
{
  g_assert_cmpuint (pb_serial_get_control_lines (f->serial), ==, 0);
  pb_test_driver_expect_control (&f->driver, 0x21, 0x22, 0x0003, 0, 0, NULL, PB_URB_OK, NULL, 0);
  g_assert_cmpuint (pb_serial_get_control_lines (f->serial), ==, 3);
  pb_test_driver_expect_control (&f->driver, 0x21, 0x22, 0x0002, 0, 0, NULL, PB_URB_OK, NULL, 0);
  g_assert_cmpuint (pb_serial_get_control_lines (f->serial), ==, 2);
  pb_test_driver_expect_control (&f->driver, 0x21, 0x22, 0x0001, 1, 0, NULL, PB_URB_EPIPE, NULL, 0);
  g_assert_cmpuint (pb_serial_get_control_lines (f->serial), ==, 2);
  pb_test_driver_expect_control (&f->driver, 0x21, 0x23, 250, 0, 0, NULL, PB_URB_OK, NULL, 0);
  /* Encapsulated commands are not offered, nor vendor requests. */
  pb_test_driver_expect_control (&f->driver, 0x21, 0x00, 0, 0, 4, (const guint8 *) "ATZ\r", PB_URB_EPIPE, NULL, 0);
  pb_test_driver_expect_control (&f->driver, 0xc0, 0x01, 0, 0, 1, NULL, PB_URB_EPIPE, NULL, 0);
}

static void
test_echo (Fixture *f, gconstpointer data)
{
  PbUrb *in, *out, *notify;

  /* Nothing to read yet: the IN waits until the host writes. */
  in = submit_in (f, 512);
  notify = pb_test_driver_urb_new (&f->driver, 3, PB_USBIP_DIR_IN, 16);
  pb_device_submit (f->device, notify);
  g_assert_cmpuint (f->driver.completed.length, ==, 0);

  out = submit_out (f, "hello\n", 6);
  g_assert_cmpuint (f->driver.completed.length, ==, 2);
  g_assert_true (g_queue_pop_head (&f->driver.completed) == out);
  g_assert_cmpint (out->status, ==, PB_URB_OK);
  g_assert_cmpuint (out->actual_length, ==, 6);
  g_assert_true (g_queue_pop_head (&f->driver.completed) == in);
  g_assert_cmpint (in->status, ==, PB_URB_OK);
  g_assert_cmpmem (in->buffer, in->actual_length, "hello\n", 6);
  pb_test_urb_free (in);
  pb_test_urb_free (out);

  /* Written first, read later in smaller pieces, in order. */
  out = submit_out (f, "0123456789", 10);
  g_assert_true (g_queue_pop_head (&f->driver.completed) == out);
  pb_test_urb_free (out);
  in = submit_in (f, 4);
  g_assert_true (g_queue_pop_head (&f->driver.completed) == in);
  g_assert_cmpmem (in->buffer, in->actual_length, "0123", 4);
  pb_test_urb_free (in);
  in = submit_in (f, 512);
  g_assert_true (g_queue_pop_head (&f->driver.completed) == in);
  g_assert_cmpmem (in->buffer, in->actual_length, "456789", 6);
  pb_test_urb_free (in);

  /* The notification endpoint has nothing to say; it waits until cancelled. */
  g_assert_cmpuint (f->driver.completed.length, ==, 0);
  cancel (f, notify, 0);
}

/* More than the echo buffer holds: the OUT waits until the host reads, and every byte comes
 * back in order. */
static void
test_echo_back_pressure (Fixture *f, gconstpointer data)
{
  const guint32 total = 100 * 1024;
  g_autofree guint8 *pattern = g_malloc (total);
  g_autoptr(GByteArray) received = g_byte_array_new ();
  PbUrb *out, *second, *in;

  for (guint32 i = 0; i < total; i++)
    pattern[i] = (guint8) (i * 7 + (i >> 8));

  out = submit_out (f, pattern, total);
  second = submit_out (f, "tail", 4);
  g_assert_cmpuint (f->driver.completed.length, ==, 0);

  while (received->len < total + 4)
    {
      in = submit_in (f, 16 * 1024);
      g_assert_true (g_queue_pop_head (&f->driver.completed) == in);
      g_assert_cmpint (in->status, ==, PB_URB_OK);
      g_assert_cmpuint (in->actual_length, >, 0);
      g_byte_array_append (received, in->buffer, in->actual_length);
      pb_test_urb_free (in);
      /* The big OUT finishes once the rest of it fits; the second follows it. */
      if (received->len + 64 * 1024 >= total && out != NULL)
        {
          g_assert_true (g_queue_pop_head (&f->driver.completed) == out);
          g_assert_cmpint (out->status, ==, PB_URB_OK);
          g_assert_cmpuint (out->actual_length, ==, total);
          pb_test_urb_free (out);
          out = NULL;
          g_assert_true (g_queue_pop_head (&f->driver.completed) == second);
          pb_test_urb_free (second);
        }
      g_assert_cmpuint (f->driver.completed.length, ==, 0);
    }
  g_assert_null (out);
  g_assert_cmpmem (received->data, total, pattern, total);
  g_assert_cmpmem (received->data + total, 4, "tail", 4);

  /* A held OUT cancelled halfway reports what went in; that part still comes back. */
  out = submit_out (f, pattern, total);
  cancel (f, out, 64 * 1024);
  in = submit_in (f, 128 * 1024);
  g_assert_true (g_queue_pop_head (&f->driver.completed) == in);
  g_assert_cmpmem (in->buffer, in->actual_length, pattern, 64 * 1024);
  pb_test_urb_free (in);

  /* Cancelling a waiting IN. */
  in = submit_in (f, 512);
  g_assert_cmpuint (f->driver.completed.length, ==, 0);
  cancel (f, in, 0);
}

static void
write_slave (Fixture *f, const void *data, gsize len)
{
  g_assert_cmpint (write (f->slave_fd, data, len), ==, (gssize) len);
}

static void
test_pty_to_host (Fixture *f, gconstpointer data)
{
  static const guint8 bytes[] = { 'a', 'b', 'c', '\n', '\r', 0x00, 0x03, 0x04, 0x11, 0x13, 0x7f, 0xff };
  PbUrb *in;

  /* The host polls before the program writes: the IN completes only with the data. */
  in = submit_in (f, 512);
  expect_nothing_for_a_while (f);
  write_slave (f, bytes, sizeof bytes);
  wait_for (f, in);
  g_assert_cmpint (in->status, ==, PB_URB_OK);
  /* Raw mode: control characters and CR/LF pass unchanged. */
  g_assert_cmpmem (in->buffer, in->actual_length, bytes, sizeof bytes);
  pb_test_urb_free (in);

  /* Written while no IN waits: buffered and delivered on the next one. */
  write_slave (f, "later", 5);
  expect_nothing_for_a_while (f);
  in = submit_in (f, 512);
  g_assert_true (g_queue_pop_head (&f->driver.completed) == in);
  g_assert_cmpmem (in->buffer, in->actual_length, "later", 5);
  pb_test_urb_free (in);

  /* The program closing its side does not break the port (no EIO on the master). */
  close (f->slave_fd);
  f->slave_fd = -1;
  in = submit_in (f, 512);
  expect_nothing_for_a_while (f);
  f->slave_fd = open (pb_serial_get_pty_path (f->serial), O_RDWR | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
  g_assert_cmpint (f->slave_fd, >=, 0);
  write_slave (f, "again", 5);
  wait_for (f, in);
  g_assert_cmpmem (in->buffer, in->actual_length, "again", 5);
  pb_test_urb_free (in);

  in = submit_in (f, 512);
  expect_nothing_for_a_while (f);
  cancel (f, in, 0);
}

/* Reads what the slave has, without blocking. */
static gsize
read_slave (Fixture *f, GByteArray *into)
{
  guint8 buffer[16 * 1024];
  gssize n = read (f->slave_fd, buffer, sizeof buffer);

  if (n < 0)
    {
      g_assert_true (errno == EAGAIN || errno == EWOULDBLOCK);
      return 0;
    }
  g_byte_array_append (into, buffer, (guint) n);
  return (gsize) n;
}

static void
test_host_to_pty (Fixture *f, gconstpointer data)
{
  static const guint8 bytes[] = { 'x', 'y', '\r', '\n', 0x00, 0x03, 0x1a, 0xff };
  const guint32 total = 256 * 1024;
  g_autofree guint8 *pattern = g_malloc (total);
  g_autoptr(GByteArray) received = g_byte_array_new ();
  gint64 deadline;
  PbUrb *out, *second;
  gboolean held = FALSE;

  out = submit_out (f, bytes, sizeof bytes);
  g_assert_true (g_queue_pop_head (&f->driver.completed) == out);
  g_assert_cmpint (out->status, ==, PB_URB_OK);
  g_assert_cmpuint (out->actual_length, ==, sizeof bytes);
  pb_test_urb_free (out);
  deadline = g_get_monotonic_time () + 5 * G_USEC_PER_SEC;
  while (received->len < sizeof bytes)
    {
      g_assert_cmpint (g_get_monotonic_time (), <, deadline);
      if (read_slave (f, received) == 0)
        g_usleep (1000);
    }
  g_assert_cmpmem (received->data, received->len, bytes, sizeof bytes);
  g_byte_array_set_size (received, 0);

  /* Far more than the pty holds: the OUT is held (never blocking us) and finishes as the
   * program reads; the OUT behind it keeps its place. */
  for (guint32 i = 0; i < total; i++)
    pattern[i] = (guint8) (i * 13 + (i >> 10));
  out = submit_out (f, pattern, total);
  second = submit_out (f, "end", 3);
  if (f->driver.completed.length == 0)
    held = TRUE;
  deadline = g_get_monotonic_time () + 10 * G_USEC_PER_SEC;
  while (received->len < total + 3)
    {
      gboolean progress = FALSE;

      g_assert_cmpint (g_get_monotonic_time (), <, deadline);
      if (read_slave (f, received) > 0)
        progress = TRUE;
      if (g_main_context_iteration (NULL, FALSE))
        progress = TRUE;
      if (!progress)
        g_usleep (500);
    }
  g_assert_true (held);
  g_assert_cmpuint (received->len, ==, total + 3);
  g_assert_cmpmem (received->data, total, pattern, total);
  g_assert_cmpmem (received->data + total, 3, "end", 3);
  /* Both OUTs finished, in order. */
  while (f->driver.completed.length < 2)
    {
      g_assert_cmpint (g_get_monotonic_time (), <, deadline);
      if (!g_main_context_iteration (NULL, FALSE))
        g_usleep (500);
    }
  g_assert_true (g_queue_pop_head (&f->driver.completed) == out);
  g_assert_cmpint (out->status, ==, PB_URB_OK);
  g_assert_cmpuint (out->actual_length, ==, total);
  g_assert_true (g_queue_pop_head (&f->driver.completed) == second);
  g_assert_cmpuint (second->actual_length, ==, 3);
  pb_test_urb_free (out);
  pb_test_urb_free (second);

  /* A held OUT cancelled while the program does not read: part went to the pty, the rest not. */
  out = submit_out (f, pattern, total);
  expect_nothing_for_a_while (f);
  out->cancelled = TRUE;
  pb_device_cancel (f->device, out);
  g_assert_true (g_queue_pop_head (&f->driver.completed) == out);
  g_assert_cmpint (out->status, ==, PB_URB_ECONNRESET);
  g_assert_cmpuint (out->actual_length, >, 0);
  g_assert_cmpuint (out->actual_length, <, total);
  {
    guint32 went = out->actual_length;
    g_byte_array_set_size (received, 0);
    deadline = g_get_monotonic_time () + 5 * G_USEC_PER_SEC;
    while (received->len < went)
      {
        g_assert_cmpint (g_get_monotonic_time (), <, deadline);
        if (read_slave (f, received) == 0)
          g_usleep (1000);
      }
    expect_nothing_for_a_while (f);
    read_slave (f, received);
    g_assert_cmpuint (received->len, ==, went);
    g_assert_cmpmem (received->data, went, pattern, went);
  }
  pb_test_urb_free (out);
}

/* The pty and the host both busy at once, as a terminal session would be. */
static void
test_pty_both_ways (Fixture *f, gconstpointer data)
{
  g_autoptr(GByteArray) from_host = g_byte_array_new ();
  g_autoptr(GByteArray) to_host = g_byte_array_new ();
  const gsize total = 200 * 1024;
  gsize written = 0, sent = 0;
  gint64 deadline = g_get_monotonic_time () + 10 * G_USEC_PER_SEC;
  PbUrb *in = NULL, *out = NULL;

  while (to_host->len < total || from_host->len < total)
    {
      g_assert_cmpint (g_get_monotonic_time (), <, deadline);

      /* The program writes what it can, without blocking. */
      if (written < total)
        {
          guint8 chunk[4096];
          gsize n = MIN (sizeof chunk, total - written);
          gssize w;

          for (gsize i = 0; i < n; i++)
            chunk[i] = (guint8) ((written + i) % 251);
          w = write (f->slave_fd, chunk, n);
          if (w > 0)
            written += (gsize) w;
          else
            g_assert_true (errno == EAGAIN || errno == EWOULDBLOCK);
        }
      read_slave (f, from_host);

      if (in == NULL)
        in = submit_in (f, 1024);
      if (out == NULL && sent < total)
        {
          guint8 chunk[8192];
          gsize n = MIN (sizeof chunk, total - sent);

          for (gsize i = 0; i < n; i++)
            chunk[i] = (guint8) ((sent + i) % 241);
          out = submit_out (f, chunk, (guint32) n);
        }

      if (!g_main_context_iteration (NULL, FALSE))
        g_usleep (200);
      while (f->driver.completed.length > 0)
        {
          PbUrb *done = g_queue_pop_head (&f->driver.completed);

          g_assert_cmpint (done->status, ==, PB_URB_OK);
          if (done == in)
            {
              g_byte_array_append (to_host, done->buffer, done->actual_length);
              in = NULL;
            }
          else
            {
              g_assert_true (done == out);
              g_assert_cmpuint (done->actual_length, ==, done->length);
              sent += done->length;
              out = NULL;
            }
          pb_test_urb_free (done);
        }
    }
  g_assert_cmpuint (to_host->len, ==, total);
  g_assert_cmpuint (from_host->len, ==, total);
  for (gsize i = 0; i < total; i++)
    {
      if (to_host->data[i] != (guint8) (i % 251))
        g_assert_cmpuint (to_host->data[i], ==, (guint8) (i % 251));
      if (from_host->data[i] != (guint8) (i % 241))
        g_assert_cmpuint (from_host->data[i], ==, (guint8) (i % 241));
    }
  if (in != NULL)
    cancel (f, in, 0);
}

/* Closing a session stops watching the pty; a new import picks up what was written meanwhile. */
static void
test_pty_reopen (Fixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  PbUrb *in;

  pb_device_close (f->device);
  write_slave (f, "between", 7);
  /* Nothing of the device is polled while closed. */
  g_assert_false (g_main_context_iteration (NULL, FALSE));

  g_assert_true (pb_device_open (f->device, &error));
  g_assert_no_error (error);
  pb_test_driver_expect_control (&f->driver, 0x00, PB_USB_REQ_SET_CONFIGURATION, 1, 0, 0, NULL, PB_URB_OK, NULL, 0);
  in = submit_in (f, 512);
  wait_for (f, in);
  g_assert_cmpmem (in->buffer, in->actual_length, "between", 7);
  pb_test_urb_free (in);
}

/* The device may outlive its PbSerial (a server still holds it): held URBs end, nothing crashes. */
static void
test_device_outlives_serial (void)
{
  Fixture fixture = { 0 }, *f = &fixture;
  g_autoptr(GError) error = NULL;
  PbVirtualDevice *device;
  PbUrb *in;

  f->serial = pb_serial_new (PB_SERIAL_MODE_PTY, &error);
  g_assert_no_error (error);
  device = g_object_ref (pb_serial_get_device (f->serial));
  f->device = PB_DEVICE (device);
  pb_test_driver_init (&f->driver, f->device);
  g_assert_true (pb_device_open (f->device, &error));
  pb_test_driver_expect_control (&f->driver, 0x00, PB_USB_REQ_SET_CONFIGURATION, 1, 0, 0, NULL, PB_URB_OK, NULL, 0);
  in = submit_in (f, 512);
  g_assert_cmpuint (f->driver.completed.length, ==, 0);

  g_clear_object (&f->serial);
  g_assert_true (g_queue_pop_head (&f->driver.completed) == in);
  g_assert_cmpint (in->status, ==, PB_URB_ESHUTDOWN);
  pb_test_urb_free (in);
  /* Its pty watch is gone with it. */
  g_assert_false (g_main_context_iteration (NULL, FALSE));

  in = submit_out (f, "x", 1);
  g_assert_true (g_queue_pop_head (&f->driver.completed) == in);
  g_assert_cmpint (in->status, ==, PB_URB_ESHUTDOWN);
  pb_test_urb_free (in);
  pb_test_driver_expect_control (&f->driver, 0xa1, 0x21, 0, 0, 7, NULL, PB_URB_EPIPE, NULL, 0);

  pb_device_close (f->device);
  g_object_unref (device);
}

int
main (int argc, char **argv)
{
  gconstpointer echo = GINT_TO_POINTER (PB_SERIAL_MODE_ECHO);
  gconstpointer pty = GINT_TO_POINTER (PB_SERIAL_MODE_PTY);

  g_test_init (&argc, &argv, NULL);

  g_test_add ("/serial/descriptors", Fixture, echo, fixture_setup, test_descriptors, fixture_teardown);
  g_test_add ("/serial/line-coding", Fixture, echo, fixture_setup, test_line_coding, fixture_teardown);
  g_test_add ("/serial/control-lines", Fixture, pty, fixture_setup, test_control_lines, fixture_teardown);
  g_test_add ("/serial/echo", Fixture, echo, fixture_setup, test_echo, fixture_teardown);
  g_test_add ("/serial/echo-back-pressure", Fixture, echo, fixture_setup, test_echo_back_pressure, fixture_teardown);
  g_test_add ("/serial/pty-to-host", Fixture, pty, fixture_setup, test_pty_to_host, fixture_teardown);
  g_test_add ("/serial/host-to-pty", Fixture, pty, fixture_setup, test_host_to_pty, fixture_teardown);
  g_test_add ("/serial/pty-both-ways", Fixture, pty, fixture_setup, test_pty_both_ways, fixture_teardown);
  g_test_add ("/serial/pty-reopen", Fixture, pty, fixture_setup, test_pty_reopen, fixture_teardown);
  g_test_add_func ("/serial/device-outlives-serial", test_device_outlives_serial);
  return g_test_run ();
}
