/* PbMonitor and PbUsbDevice (the libusb backend) against a fake USB device.
 *
 * umockdev stands in for hardware here: the host that runs these tests has no USB devices (the
 * QEMU suite in tests/vm covers the real kernel: usbfs, usbip-host, vhci-hcd). umockdev's testbed
 * fakes sysfs and udev (/sys/devices/usb1/1-1 with the descriptors below) and the node
 * /dev/bus/usb/001/002 for this process, through its preload library (main() re-executes the test
 * with it, after ASan's runtime when that is a shared library). Every usbdevfs ioctl libusb 1.0.26
 * issues on that node (GET_CAPABILITIES, GETDRIVER, IOCTL(DISCONNECT/CONNECT), CLAIMINTERFACE,
 * RELEASEINTERFACE, SETCONFIGURATION, CLEAR_HALT, SUBMITURB, REAPURBNDELAY, DISCARDURB) comes to
 * FakeDevice below, which answers it on umockdev's worker thread as the kernel would.
 *
 * What umockdev 0.17 cannot do with libusb 1.0.26, and what the tests do instead:
 * - The fake node is a regular file, so poll() always reports it writable and libusb's event
 *   thread reaps in a loop. FakeDevice answers a REAPURBNDELAY that finds nothing after a
 *   millisecond, so that loop costs little.
 * - A regular file never reports POLLERR, which is how usbfs tells libusb that the device is
 *   gone (libusb then fails what is left with LIBUSB_TRANSFER_NO_DEVICE). Hot-unplug is played
 *   as usbfs does it short of that: URBs in flight end with -ESHUTDOWN and stay reapable
 *   (USBDEVFS_CAP_REAP_AFTER_DISCONNECT), every later ioctl fails with ENODEV, and the testbed
 *   sends the "remove" uevent and drops the device from sysfs.
 *
 * The server runs on its own thread (its own main context, as in plugboardd) because PbRemote's
 * list and import block; PbRemoteDevice runs on the main thread. */
#include <dlfcn.h>
#include <errno.h>
#include <link.h>
#include <linux/usbdevice_fs.h>
#include <stddef.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <umockdev.h>

#include "pb-error.h"
#include "pb-monitor.h"
#include "pb-remote.h"
#include "pb-server.h"
#include "pb-test-util.h"
#include "pb-usb-device.h"
#include "pb-virtual-device.h"

#define WAIT_MS 10000
#define TRANSFER_TIMEOUT_MS 10000

/* ---- the fake device's descriptors ---- */

#define FAKE_BUSID "1-1"
#define FAKE_IDS "1209:a0b1"
#define FAKE_VID 0x1209
#define FAKE_PID 0xa0b1
#define FAKE_BCD 0x0123
#define FAKE_SYSPATH_IN_DEVICES "/devices/usb1/1-1"
#define FAKE_SYSPATH "/sys" FAKE_SYSPATH_IN_DEVICES
#define FAKE_NODE "/dev/bus/usb/001/002"

#define EP_BULK_IN 0x81
#define EP_BULK_OUT 0x02
#define EP_INT_IN 0x83

/* Vendor-class device, one configuration: interface 0 (vendor, bulk IN, bulk OUT, interrupt
 * IN, with a kernel driver bound), interface 1 (application-specific, no endpoints). */
static const guint8 device_descriptor[18] = {
  18, 1, 0x00, 0x02, 0xff, 0x11, 0x22, 64, 0x09, 0x12, 0xb1, 0xa0, 0x23, 0x01, 0, 0, 0, 1,
};
static const guint8 config_descriptor[] = {
  9, 2, 48, 0, 2, 1, 0, 0x80, 50,
  9, 4, 0, 0, 3, 0xff, 0x5a, 0x01, 0,
  7, 5, EP_BULK_IN, 2, 0x00, 0x02, 0,
  7, 5, EP_BULK_OUT, 2, 0x00, 0x02, 0,
  7, 5, EP_INT_IN, 3, 0x08, 0x00, 4,
  9, 4, 1, 0, 0, 0xfe, 0x01, 0x02, 0,
};
static const guint8 hub_device_descriptor[18] = {
  18, 1, 0x00, 0x02, 0x09, 0, 1, 64, 0x6b, 0x1d, 0x02, 0x00, 0x01, 0x06, 0, 0, 0, 1,
};
static const guint8 hub_config_descriptor[] = {
  9, 2, 25, 0, 1, 1, 0, 0xe0, 0,
  9, 4, 0, 0, 1, 0x09, 0, 0, 0,
  7, 5, 0x81, 3, 0x04, 0x00, 12,
};

/* Vendor requests the fake device knows. */
#define VENDOR_IN_REQUEST 0x01
#define VENDOR_IN_VALUE 0x1234
#define VENDOR_IN_INDEX 0x0005
#define VENDOR_OUT_REQUEST 0x02
#define VENDOR_OUT_VALUE 0xbeef
#define VENDOR_OUT_INDEX 0x0007
static const char vendor_in_answer[] = "hello, plugs"; /* without its NUL */

/* ---- the fake device: usbdevfs answered on umockdev's worker thread ---- */

typedef struct {
  UMockdevIoctlData *urb_data;    /* struct usbdevfs_urb, as umockdev copied it */
  UMockdevIoctlData *buffer_data; /* its buffer; NULL when empty */
} FakeUrb;

typedef struct {
  GMutex lock;                    /* everything below; the worker thread and the test share it */
  GList *held;                    /* FakeUrb *, submitted, waiting for the test */
  GQueue done;                    /* FakeUrb *, finished, for REAPURBNDELAY */
  GQueue bulk_in_data;            /* GBytes *, what EP_BULK_IN answers next */
  GByteArray *bulk_out;           /* everything EP_BULK_OUT received */
  GByteArray *control_out;        /* the data of the last vendor OUT request */
  guint8 last_setup[8];
  gboolean gone;                  /* unplugged: ioctls fail with ENODEV */
  gboolean bulk_in_halted;        /* EP_BULK_IN stalls until CLEAR_HALT */
  gboolean complete_on_discard;   /* a DISCARDURB finds the URB finished just now */
  guint claimed;                  /* interfaces claimed through usbfs, a bit each */
  guint driver_bound;             /* interfaces with a kernel driver, a bit each */
  guint configuration;
  guint n_open;
  guint n_submitted, n_reaped, n_discarded, n_discard_missed;
  guint n_set_configuration, n_clear_halt, n_disconnect, n_connect, n_release, n_claim;
  guint set_configuration_value, clear_halt_endpoint;
  gboolean set_configuration_busy; /* SETCONFIGURATION came with interfaces still claimed */
} FakeDevice;

static FakeUrb *
fake_urb_take (GList **list, GList *link)
{
  FakeUrb *fu = link->data;

  *list = g_list_delete_link (*list, link);
  return fu;
}

static void
fake_urb_free (FakeUrb *fu)
{
  g_clear_object (&fu->urb_data);
  g_clear_object (&fu->buffer_data);
  g_free (fu);
}

static struct usbdevfs_urb *
fake_urb_get (FakeUrb *fu)
{
  return (struct usbdevfs_urb *) fu->urb_data->data;
}

static guint8 *
fake_urb_buffer (FakeUrb *fu)
{
  return fu->buffer_data != NULL ? fu->buffer_data->data : NULL;
}

/* Locked: the URB is finished and waits for a reap. */
static void
fake_finish (FakeDevice *fake, FakeUrb *fu, int status, const void *data, gsize len)
{
  struct usbdevfs_urb *urb = fake_urb_get (fu);

  len = MIN (len, (gsize) urb->buffer_length);
  if (len > 0)
    memcpy (fake_urb_buffer (fu), data, len);
  urb->status = status;
  urb->actual_length = (int) len;
  g_queue_push_tail (&fake->done, fu);
}

/* Locked: a control URB, answered at once as the device would. */
static void
fake_control (FakeDevice *fake, FakeUrb *fu)
{
  struct usbdevfs_urb *urb = fake_urb_get (fu);
  guint8 *setup = fake_urb_buffer (fu);
  guint16 value, index, length;

  if (urb->buffer_length < 8 || setup == NULL)
    {
      fake_finish (fake, fu, -EINVAL, NULL, 0);
      return;
    }
  memcpy (fake->last_setup, setup, 8);
  value = (guint16) (setup[2] | setup[3] << 8);
  index = (guint16) (setup[4] | setup[5] << 8);
  length = (guint16) (setup[6] | setup[7] << 8);
  if (setup[0] == 0xc0 && setup[1] == VENDOR_IN_REQUEST && value == VENDOR_IN_VALUE && index == VENDOR_IN_INDEX &&
      (guint) urb->buffer_length == 8u + length)
    {
      gsize n = MIN (length, strlen (vendor_in_answer));
      memcpy (setup + 8, vendor_in_answer, n);
      urb->status = 0;
      urb->actual_length = (int) n; /* usbfs counts the data stage only */
      g_queue_push_tail (&fake->done, fu);
    }
  else if (setup[0] == 0x40 && setup[1] == VENDOR_OUT_REQUEST && value == VENDOR_OUT_VALUE &&
           index == VENDOR_OUT_INDEX && (guint) urb->buffer_length == 8u + length)
    {
      g_byte_array_set_size (fake->control_out, 0);
      g_byte_array_append (fake->control_out, setup + 8, length);
      urb->status = 0;
      urb->actual_length = length;
      g_queue_push_tail (&fake->done, fu);
    }
  else
    fake_finish (fake, fu, -EPIPE, NULL, 0); /* a request it does not know: stall */
}

/* Locked: SUBMITURB. Returns the errno the ioctl fails with, or 0. */
static int
fake_submit (FakeDevice *fake, UMockdevIoctlData *urb_data)
{
  struct usbdevfs_urb *urb = (struct usbdevfs_urb *) urb_data->data;
  g_autoptr(GError) error = NULL;
  FakeUrb *fu;

  if (fake->gone)
    return ENODEV;
  if ((urb->type == USBDEVFS_URB_TYPE_BULK || urb->type == USBDEVFS_URB_TYPE_INTERRUPT) && !(fake->claimed & 1))
    return EINVAL; /* usbfs checks that the endpoint's interface is claimed */
  fu = g_new0 (FakeUrb, 1);
  fu->urb_data = g_object_ref (urb_data);
  if (urb->buffer_length > 0)
    {
      fu->buffer_data = umockdev_ioctl_data_resolve (urb_data, offsetof (struct usbdevfs_urb, buffer),
                                                     (gsize) urb->buffer_length, &error);
      g_assert_no_error (error);
      g_assert_nonnull (fu->buffer_data);
    }
  fake->n_submitted++;

  if (urb->type == USBDEVFS_URB_TYPE_CONTROL && urb->endpoint == 0)
    fake_control (fake, fu);
  else if (urb->type == USBDEVFS_URB_TYPE_BULK && urb->endpoint == EP_BULK_OUT)
    {
      g_byte_array_append (fake->bulk_out, fake_urb_buffer (fu), (guint) urb->buffer_length);
      urb->status = 0;
      urb->actual_length = urb->buffer_length;
      g_queue_push_tail (&fake->done, fu);
    }
  else if (urb->type == USBDEVFS_URB_TYPE_BULK && urb->endpoint == EP_BULK_IN)
    {
      g_autoptr(GBytes) next = NULL;

      if (fake->bulk_in_halted)
        fake_finish (fake, fu, -EPIPE, NULL, 0);
      else if ((next = g_queue_pop_head (&fake->bulk_in_data)) != NULL)
        fake_finish (fake, fu, 0, g_bytes_get_data (next, NULL), g_bytes_get_size (next));
      else
        fake->held = g_list_append (fake->held, fu);
    }
  else if (urb->type == USBDEVFS_URB_TYPE_INTERRUPT && urb->endpoint == EP_INT_IN)
    fake->held = g_list_append (fake->held, fu); /* nothing to report until the test says */
  else
    {
      fake->n_submitted--;
      fake_urb_free (fu);
      return ENOENT; /* no such endpoint in the configuration */
    }
  return 0;
}

/* Locked: DISCARDURB of the URB at client address addr. */
static int
fake_discard (FakeDevice *fake, gulong addr)
{
  static const char late[] = "late";

  for (GList *l = fake->held; l != NULL; l = l->next)
    {
      FakeUrb *fu = l->data;

      if (fu->urb_data->client_addr != addr)
        continue;
      fake_urb_take (&fake->held, l);
      if (fake->complete_on_discard)
        {
          /* The device finished it just before the discard: usbfs says EINVAL and the URB
           * is reaped with its data. */
          fake->n_discard_missed++;
          fake_finish (fake, fu, 0, late, strlen (late));
          return EINVAL;
        }
      fake->n_discarded++;
      fake_finish (fake, fu, -ENOENT, NULL, 0); /* usb_kill_urb's status */
      return 0;
    }
  fake->n_discard_missed++;
  return fake->gone ? ENODEV : EINVAL;
}

static gboolean
complete_later (gpointer user_data)
{
  UMockdevIoctlClient *client = user_data;

  umockdev_ioctl_client_complete (client, -1, GPOINTER_TO_INT (g_object_get_data (G_OBJECT (client), "pb-errno")));
  return G_SOURCE_REMOVE;
}

/* Fails the ioctl with err after a millisecond (see the header: libusb reaps in a loop). */
static void
fail_after_a_while (UMockdevIoctlClient *client, int err)
{
  GMainContext *worker = g_main_context_get_thread_default ();
  GSource *source;

  if (worker == NULL)
    {
      g_usleep (1000);
      umockdev_ioctl_client_complete (client, -1, err);
      return;
    }
  g_object_set_data (G_OBJECT (client), "pb-errno", GINT_TO_POINTER (err));
  source = g_timeout_source_new (1);
  g_source_set_callback (source, complete_later, g_object_ref (client), g_object_unref);
  g_source_attach (source, worker);
  g_source_unref (source);
}

static gboolean
on_handle_ioctl (UMockdevIoctlBase *handler, UMockdevIoctlClient *client, gpointer user_data)
{
  FakeDevice *fake = user_data;
  gulong request = umockdev_ioctl_client_get_request (client);
  UMockdevIoctlData *arg = umockdev_ioctl_client_get_arg (client);
  gsize size = _IOC_SIZE (request);
  g_autoptr(UMockdevIoctlData) data = NULL;
  g_autoptr(GError) error = NULL;
  int err = 0;

  /* DISCARDURB and RESET take their argument by value; everything else points to a struct. */
  if (size > 0)
    {
      data = umockdev_ioctl_data_resolve (arg, 0, size, &error);
      g_assert_no_error (error);
      g_assert_nonnull (data);
    }

  g_mutex_lock (&fake->lock);
  if (fake->gone && request != USBDEVFS_REAPURBNDELAY && request != USBDEVFS_DISCARDURB)
    err = ENODEV;
  else
    switch (request)
      {
      case USBDEVFS_GET_CAPABILITIES:
        *(guint32 *) data->data = USBDEVFS_CAP_ZERO_PACKET | USBDEVFS_CAP_BULK_SCATTER_GATHER |
                                  USBDEVFS_CAP_NO_PACKET_SIZE_LIM | USBDEVFS_CAP_REAP_AFTER_DISCONNECT;
        break;
      case USBDEVFS_GETDRIVER:
        {
          struct usbdevfs_getdriver *getdriver = (struct usbdevfs_getdriver *) data->data;
          if (getdriver->interface < 2 && (fake->driver_bound & (1u << getdriver->interface)))
            g_strlcpy (getdriver->driver, "fakedrv", sizeof getdriver->driver);
          else if (getdriver->interface < 2 && (fake->claimed & (1u << getdriver->interface)))
            g_strlcpy (getdriver->driver, "usbfs", sizeof getdriver->driver);
          else
            err = ENODATA;
          break;
        }
      case USBDEVFS_IOCTL:
        {
          struct usbdevfs_ioctl *command = (struct usbdevfs_ioctl *) data->data;
          guint bit = command->ifno >= 0 && command->ifno < 2 ? 1u << command->ifno : 0;

          if (bit == 0)
            err = EINVAL;
          else if (command->ioctl_code == (int) USBDEVFS_DISCONNECT)
            {
              if (fake->driver_bound & bit)
                {
                  fake->driver_bound &= ~bit;
                  fake->n_disconnect++;
                }
              else
                err = ENODATA;
            }
          else if (command->ioctl_code == (int) USBDEVFS_CONNECT)
            {
              if (fake->claimed & bit)
                err = EBUSY;
              else
                {
                  fake->driver_bound |= bit;
                  fake->n_connect++;
                }
            }
          else
            err = ENOTTY;
          break;
        }
      case USBDEVFS_CLAIMINTERFACE:
      case USBDEVFS_RELEASEINTERFACE:
        {
          guint interface = *(guint *) data->data;
          guint bit = interface < 2 ? 1u << interface : 0;

          if (bit == 0)
            err = ENOENT;
          else if (request == USBDEVFS_CLAIMINTERFACE)
            {
              if (fake->driver_bound & bit)
                err = EBUSY; /* the kernel driver has it */
              else
                {
                  fake->claimed |= bit;
                  fake->n_claim++;
                }
            }
          else if (!(fake->claimed & bit))
            err = EINVAL;
          else
            {
              fake->claimed &= ~bit;
              fake->n_release++;
            }
          break;
        }
      case USBDEVFS_SETCONFIGURATION:
        fake->n_set_configuration++;
        fake->set_configuration_value = *(guint *) data->data;
        if (fake->claimed != 0)
          {
            fake->set_configuration_busy = TRUE;
            err = EBUSY; /* usbfs refuses while an interface is claimed, even by the caller */
          }
        else if (fake->set_configuration_value != 1)
          err = EINVAL;
        else
          fake->configuration = 1;
        break;
      case USBDEVFS_CLEAR_HALT:
        fake->n_clear_halt++;
        fake->clear_halt_endpoint = *(guint *) data->data;
        if (fake->clear_halt_endpoint == EP_BULK_IN)
          fake->bulk_in_halted = FALSE;
        break;
      case USBDEVFS_SUBMITURB:
        err = fake_submit (fake, data);
        break;
      case USBDEVFS_DISCARDURB:
        err = fake_discard (fake, *(gulong *) arg->data);
        break;
      case USBDEVFS_REAPURBNDELAY:
        {
          FakeUrb *fu = g_queue_pop_head (&fake->done);

          if (fu == NULL)
            {
              g_mutex_unlock (&fake->lock);
              fail_after_a_while (client, fake->gone ? ENODEV : EAGAIN);
              return TRUE;
            }
          /* Hand the client its own URB back: umockdev writes our copy (status, length, data)
           * into its memory and the pointer into *arg. */
          g_assert_true (umockdev_ioctl_data_set_ptr (data, 0, fu->urb_data));
          fake->n_reaped++;
          fake_urb_free (fu);
          break;
        }
      default:
        g_test_message ("fake device: unexpected ioctl 0x%lx", request);
        err = ENOTTY;
        break;
      }
  g_mutex_unlock (&fake->lock);
  umockdev_ioctl_client_complete (client, err != 0 ? -1 : 0, err);
  return TRUE;
}

static void
on_client_connected (UMockdevIoctlBase *handler, UMockdevIoctlClient *client, gpointer user_data)
{
  FakeDevice *fake = user_data;

  g_mutex_lock (&fake->lock);
  fake->n_open++;
  g_mutex_unlock (&fake->lock);
}

/* ---- the test's side of the fake device ---- */

static void
fake_feed_bulk_in (FakeDevice *fake, const void *data, gsize len)
{
  g_mutex_lock (&fake->lock);
  g_queue_push_tail (&fake->bulk_in_data, g_bytes_new (data, len));
  g_mutex_unlock (&fake->lock);
}

/* Finishes the oldest held URB of endpoint (status 0 with data); FALSE when none is held. */
static gboolean
fake_complete_held (FakeDevice *fake, guint8 endpoint, const void *data, gsize len)
{
  gboolean found = FALSE;

  g_mutex_lock (&fake->lock);
  for (GList *l = fake->held; l != NULL; l = l->next)
    if (fake_urb_get (l->data)->endpoint == endpoint)
      {
        fake_finish (fake, fake_urb_take (&fake->held, l), 0, data, len);
        found = TRUE;
        break;
      }
  g_mutex_unlock (&fake->lock);
  return found;
}

static guint
fake_count_held (FakeDevice *fake, guint8 endpoint)
{
  guint n = 0;

  g_mutex_lock (&fake->lock);
  for (GList *l = fake->held; l != NULL; l = l->next)
    n += fake_urb_get (l->data)->endpoint == endpoint;
  g_mutex_unlock (&fake->lock);
  return n;
}

/* Reads a counter or a flag (guint or gboolean) under the lock. */
static guint
fake_read (FakeDevice *fake, const void *field)
{
  guint value;

  g_mutex_lock (&fake->lock);
  value = *(const guint *) field;
  g_mutex_unlock (&fake->lock);
  return value;
}

#define FAKE_GET(fake, field) fake_read ((fake), &(fake)->field)

/* ---- the testbed ---- */

/* Descriptors as a continuous upper-case hex string (umockdev's H: lines). */
static char *
hex_of (const guint8 *a, gsize a_len, const guint8 *b, gsize b_len)
{
  GString *hex = g_string_new (NULL);

  for (gsize i = 0; i < a_len; i++)
    g_string_append_printf (hex, "%02X", a[i]);
  for (gsize i = 0; i < b_len; i++)
    g_string_append_printf (hex, "%02X", b[i]);
  return g_string_free (hex, FALSE);
}

typedef struct {
  UMockdevTestbed *testbed;
  UMockdevIoctlBase *handler;
  FakeDevice fake;
  gboolean removed;
} Bed;

static void
bed_init (Bed *bed)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *hub_hex = hex_of (hub_device_descriptor, sizeof hub_device_descriptor, hub_config_descriptor,
                                     sizeof hub_config_descriptor);
  g_autofree char *device_hex = hex_of (device_descriptor, sizeof device_descriptor, config_descriptor,
                                        sizeof config_descriptor);
  g_autofree char *description = g_strdup_printf (
    "P: /devices/usb1\n"
    "N: bus/usb/001/001\n"
    "E: SUBSYSTEM=usb\nE: DEVNAME=/dev/bus/usb/001/001\nE: DEVTYPE=usb_device\nE: BUSNUM=001\nE: DEVNUM=001\n"
    "A: busnum=1\\n\nA: devnum=1\\n\nA: speed=480\\n\nA: bConfigurationValue=1\\n\nA: dev=189:0\\n\n"
    "H: descriptors=%s\n"
    "\n"
    "P: " FAKE_SYSPATH_IN_DEVICES "\n"
    "N: bus/usb/001/002\n"
    "E: SUBSYSTEM=usb\nE: DEVNAME=" FAKE_NODE "\nE: DEVTYPE=usb_device\nE: BUSNUM=001\nE: DEVNUM=002\n"
    "E: PRODUCT=1209/a0b1/123\n"
    "A: busnum=1\\n\nA: devnum=2\\n\nA: speed=480\\n\nA: bConfigurationValue=1\\n\n"
    "A: bNumConfigurations=1\\n\nA: bNumInterfaces= 2\\n\nA: idVendor=1209\\n\nA: idProduct=a0b1\\n\n"
    "A: bcdDevice=0123\\n\nA: dev=189:1\\n\n"
    "H: descriptors=%s\n",
    hub_hex, device_hex);

  memset (bed, 0, sizeof *bed);
  g_mutex_init (&bed->fake.lock);
  g_queue_init (&bed->fake.done);
  g_queue_init (&bed->fake.bulk_in_data);
  bed->fake.bulk_out = g_byte_array_new ();
  bed->fake.control_out = g_byte_array_new ();
  bed->fake.driver_bound = 1; /* "fakedrv" has interface 0, as usb-storage would */
  bed->fake.configuration = 1;

  bed->testbed = umockdev_testbed_new ();
  /* As umockdev-record would write them: the root hub, then the device with its node. */
  g_assert_true (umockdev_testbed_add_from_string (bed->testbed, description, &error));
  g_assert_no_error (error);

  bed->handler = umockdev_ioctl_base_new ();
  g_signal_connect (bed->handler, "handle-ioctl", G_CALLBACK (on_handle_ioctl), &bed->fake);
  g_signal_connect (bed->handler, "client-connected", G_CALLBACK (on_client_connected), &bed->fake);
  g_assert_true (umockdev_testbed_attach_ioctl (bed->testbed, FAKE_NODE, bed->handler, &error));
  g_assert_no_error (error);
}

/* Unplugs the device the way usbfs does (see the header). */
static void
bed_unplug (Bed *bed)
{
  FakeDevice *fake = &bed->fake;

  g_mutex_lock (&fake->lock);
  fake->gone = TRUE;
  while (fake->held != NULL)
    fake_finish (fake, fake_urb_take (&fake->held, fake->held), -ESHUTDOWN, NULL, 0);
  g_mutex_unlock (&fake->lock);
  umockdev_testbed_uevent (bed->testbed, FAKE_SYSPATH, "remove");
  umockdev_testbed_remove_device (bed->testbed, FAKE_SYSPATH);
  bed->removed = TRUE;
}

static void
bed_clear (Bed *bed)
{
  FakeDevice *fake = &bed->fake;

  /* Every URB libusb submitted was reaped: none held, none waiting. */
  g_mutex_lock (&fake->lock);
  g_assert_null (fake->held);
  g_assert_cmpuint (fake->done.length, ==, 0);
  g_assert_cmpuint (fake->n_reaped, ==, fake->n_submitted);
  g_mutex_unlock (&fake->lock);

  g_clear_object (&bed->handler);
  g_clear_object (&bed->testbed);
  g_queue_clear_full (&fake->bulk_in_data, (GDestroyNotify) g_bytes_unref);
  g_byte_array_unref (fake->bulk_out);
  g_byte_array_unref (fake->control_out);
  g_mutex_clear (&fake->lock);
}

/* ---- waiting on the main thread ---- */

typedef gboolean (*Condition) (gpointer data);

static void
wait_for (const char *what, Condition condition, gpointer data)
{
  gint64 deadline = g_get_monotonic_time () + WAIT_MS * G_TIME_SPAN_MILLISECOND;

  while (!condition (data))
    {
      if (g_get_monotonic_time () > deadline)
        g_error ("timed out waiting for %s", what);
      g_main_context_iteration (NULL, FALSE);
      g_usleep (200);
    }
}

/* Lets whatever is queued run for a while: a second completion would show up here. */
static void
settle (guint ms)
{
  gint64 until = g_get_monotonic_time () + ms * G_TIME_SPAN_MILLISECOND;

  while (g_get_monotonic_time () < until)
    {
      g_main_context_iteration (NULL, FALSE);
      g_usleep (500);
    }
}

/* ---- the server, on its own thread ---- */

typedef struct {
  GThread *thread;
  GMainContext *context;
  GMainLoop *loop;
  GMutex lock;
  GCond cond;
  gboolean ready;
  guint16 port;
  char *failure;
  gboolean leaked;  /* the monitor outlived the server: a transfer never came back */
} ServerThread;

static gpointer
server_thread_main (gpointer data)
{
  ServerThread *st = data;
  g_autoptr(GError) error = NULL;
  PbMonitor *monitor = NULL;
  PbUsbDevice *device = NULL;
  PbServer *server = NULL;
  libusb_device *usb = NULL;
  gint64 deadline;

  g_main_context_push_thread_default (st->context);
  monitor = pb_monitor_new (&error);
  if (monitor != NULL)
    usb = pb_monitor_find_device (monitor, FAKE_BUSID, &error);
  if (usb != NULL)
    device = pb_usb_device_new (monitor, usb, &error);
  if (device != NULL)
    {
      server = pb_server_new ();
      if (!pb_server_add_device (server, PB_DEVICE (device), &error) ||
          !pb_server_listen (server, "127.0.0.1", 0, &error))
        g_clear_object (&server);
    }
  g_clear_pointer (&usb, libusb_unref_device);

  g_mutex_lock (&st->lock);
  st->ready = TRUE;
  if (server != NULL)
    st->port = pb_server_get_port (server);
  else
    st->failure = g_strdup (error != NULL ? error->message : "no server");
  g_cond_signal (&st->cond);
  g_mutex_unlock (&st->lock);

  if (server != NULL)
    g_main_loop_run (st->loop);

  if (server != NULL)
    pb_server_stop (server);
  g_clear_object (&server);
  g_clear_object (&device);
  /* Transfers still in flight hold the device and the monitor; they come back here. */
  if (monitor != NULL)
    g_object_add_weak_pointer (G_OBJECT (monitor), (gpointer *) &monitor);
  g_clear_object (&monitor);
  deadline = g_get_monotonic_time () + WAIT_MS * G_TIME_SPAN_MILLISECOND;
  while (monitor != NULL && g_get_monotonic_time () < deadline)
    {
      g_main_context_iteration (st->context, FALSE);
      g_usleep (500);
    }
  st->leaked = monitor != NULL;
  g_main_context_pop_thread_default (st->context);
  return NULL;
}

static ServerThread *
server_thread_start (void)
{
  ServerThread *st = g_new0 (ServerThread, 1);

  g_mutex_init (&st->lock);
  g_cond_init (&st->cond);
  st->context = g_main_context_new ();
  st->loop = g_main_loop_new (st->context, FALSE);
  st->thread = g_thread_new ("usb-server", server_thread_main, st);
  g_mutex_lock (&st->lock);
  while (!st->ready)
    g_cond_wait (&st->cond, &st->lock);
  g_mutex_unlock (&st->lock);
  if (st->failure != NULL)
    g_error ("server thread: %s", st->failure);
  return st;
}

static void
server_thread_stop (ServerThread *st)
{
  g_main_loop_quit (st->loop);
  g_thread_join (st->thread);
  g_assert_false (st->leaked);
  g_main_loop_unref (st->loop);
  g_main_context_unref (st->context);
  g_mutex_clear (&st->lock);
  g_cond_clear (&st->cond);
  g_free (st->failure);
  g_free (st);
}

/* ---- fixture: testbed, server thread, device imported by PbRemoteDevice ---- */

typedef struct {
  Bed bed;
  ServerThread *server;
  PbRemoteDevice *remote;
} Fixture;

static void
fixture_setup (Fixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;

  bed_init (&f->bed);
  f->server = server_thread_start ();
  f->remote = pb_remote_import ("127.0.0.1", f->server->port, FAKE_BUSID, NULL, &error);
  g_assert_no_error (error);
  g_assert_nonnull (f->remote);
  g_assert_cmpstr (pb_remote_device_get_record (f->remote)->busid, ==, FAKE_BUSID);
}

static gboolean
device_closed (gpointer data)
{
  Fixture *f = data;
  /* PbUsbDevice released its interfaces and gave interface 0 back to its kernel driver. */
  return FAKE_GET (&f->bed.fake, claimed) == 0 && FAKE_GET (&f->bed.fake, driver_bound) == 1;
}

static void
fixture_teardown (Fixture *f, gconstpointer data)
{
  if (f->remote != NULL)
    {
      pb_remote_device_close (f->remote);
      g_clear_object (&f->remote);
    }
  if (!f->bed.removed)
    wait_for ("the device to be closed", device_closed, f);
  server_thread_stop (f->server);
  bed_clear (&f->bed);
}

/* ---- the client's side ---- */

typedef struct {
  guint calls;
  PbRemoteUrbResult result;
} Outcome;

static void
on_outcome (PbRemoteDevice *device, const PbRemoteUrbResult *result, gpointer user_data)
{
  Outcome *outcome = user_data;

  outcome->calls++;
  outcome->result = *result;
}

static gboolean
outcome_called (gpointer data)
{
  return ((Outcome *) data)->calls > 0;
}

static guint32
submit (Fixture *f, guint8 endpoint, guint8 *buffer, guint32 length, Outcome *outcome)
{
  g_autoptr(GError) error = NULL;
  PbRemoteUrbRequest request = {
    .ep = endpoint & 0x0f,
    .direction = (endpoint & 0x80) ? PB_USBIP_DIR_IN : PB_USBIP_DIR_OUT,
    .buffer = buffer,
    .length = length,
  };
  guint32 seqnum;

  memset (outcome, 0, sizeof *outcome);
  seqnum = pb_remote_device_submit (f->remote, &request, on_outcome, outcome, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (seqnum, !=, 0);
  return seqnum;
}

static guint32
submit_control (Fixture *f, guint8 request_type, guint8 request, guint16 value, guint16 index, guint8 *buffer,
                guint16 length, Outcome *outcome)
{
  g_autoptr(GError) error = NULL;
  PbRemoteUrbRequest urb = {
    .ep = 0,
    .direction = (request_type & PB_USB_DIR_IN) ? PB_USBIP_DIR_IN : PB_USBIP_DIR_OUT,
    .setup = { request_type, request, value & 0xff, value >> 8, index & 0xff, index >> 8, length & 0xff,
               length >> 8 },
    .buffer = buffer,
    .length = length,
  };
  guint32 seqnum;

  memset (outcome, 0, sizeof *outcome);
  seqnum = pb_remote_device_submit (f->remote, &urb, on_outcome, outcome, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (seqnum, !=, 0);
  return seqnum;
}

static gint32
transfer (Fixture *f, guint8 endpoint, guint8 *data, guint32 length, guint32 *actual)
{
  Outcome outcome;

  submit (f, endpoint, data, length, &outcome);
  wait_for ("a transfer", outcome_called, &outcome);
  *actual = outcome.result.actual_length;
  return outcome.result.status;
}

static gboolean
held_one_bulk_in (gpointer data)
{
  return fake_count_held (data, EP_BULK_IN) == 1;
}

/* ---- 1. the monitor finds the device; PbUsbDevice describes it ---- */

static void
test_find_and_describe (void)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(PbMonitor) monitor = NULL;
  g_autoptr(GPtrArray) devices = NULL;
  g_autoptr(PbUsbDevice) device = NULL;
  g_autofree char *busid = NULL;
  libusb_device *by_busid, *by_ids, *missing;
  PbUsbipDeviceRecord record;
  Bed bed;

  bed_init (&bed);
  monitor = pb_monitor_new (&error);
  g_assert_no_error (error);

  /* The root hub is not listed. */
  devices = pb_monitor_list_devices (monitor, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (devices->len, ==, 1);
  busid = pb_monitor_device_busid (devices->pdata[0]);
  g_assert_cmpstr (busid, ==, FAKE_BUSID);

  by_busid = pb_monitor_find_device (monitor, FAKE_BUSID, &error);
  g_assert_no_error (error);
  g_assert_nonnull (by_busid);
  by_ids = pb_monitor_find_device (monitor, FAKE_IDS, &error);
  g_assert_no_error (error);
  g_assert_true (by_ids == by_busid);
  g_assert_cmpuint (libusb_get_bus_number (by_busid), ==, 1);
  g_assert_cmpuint (libusb_get_device_address (by_busid), ==, 2);
  for (guint i = 0; i < 3; i++)
    {
      static const char *const absent[] = { "1-2", "1209:a0b2", "2-1" };
      missing = pb_monitor_find_device (monitor, absent[i], &error);
      g_assert_error (error, PB_ERROR, PB_ERROR_NOT_FOUND);
      g_assert_null (missing);
      g_clear_error (&error);
    }

  device = pb_usb_device_new (monitor, by_busid, &error);
  g_assert_no_error (error);
  libusb_unref_device (by_busid);
  libusb_unref_device (by_ids);
  g_assert_cmpstr (pb_usb_device_get_sysfs_path (device), ==, FAKE_SYSPATH);

  memset (&record, 0, sizeof record);
  pb_device_describe (PB_DEVICE (device), &record);
  g_assert_cmpstr (record.busid, ==, FAKE_BUSID);
  g_assert_cmpstr (record.path, ==, FAKE_SYSPATH);
  g_assert_cmpuint (record.busnum, ==, 1);
  g_assert_cmpuint (record.devnum, ==, 2);
  g_assert_cmpuint (pb_device_get_devid (PB_DEVICE (device)), ==, 1 << 16 | 2);
  g_assert_cmpuint (record.speed, ==, PB_USBIP_SPEED_HIGH);
  g_assert_cmphex (record.id_vendor, ==, FAKE_VID);
  g_assert_cmphex (record.id_product, ==, FAKE_PID);
  g_assert_cmphex (record.bcd_device, ==, FAKE_BCD);
  g_assert_cmphex (record.device_class, ==, 0xff);
  g_assert_cmphex (record.device_subclass, ==, 0x11);
  g_assert_cmphex (record.device_protocol, ==, 0x22);
  g_assert_cmpuint (record.configuration_value, ==, 1);
  g_assert_cmpuint (record.num_configurations, ==, 1);
  g_assert_cmpuint (record.num_interfaces, ==, 2);
  g_assert_cmphex (record.interfaces[0].interface_class, ==, 0xff);
  g_assert_cmphex (record.interfaces[0].interface_subclass, ==, 0x5a);
  g_assert_cmphex (record.interfaces[0].interface_protocol, ==, 0x01);
  g_assert_cmphex (record.interfaces[1].interface_class, ==, 0xfe);
  g_assert_cmphex (record.interfaces[1].interface_subclass, ==, 0x01);
  g_assert_cmphex (record.interfaces[1].interface_protocol, ==, 0x02);
  /* Describing opened nothing. */
  g_assert_cmpuint (FAKE_GET (&bed.fake, n_open), ==, 0);

  g_clear_object (&device);
  g_clear_object (&monitor);
  bed_clear (&bed);
}

/* Opening takes every interface (interface 0 from its kernel driver); closing gives them back. */
static void
test_open_close (void)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(PbMonitor) monitor = NULL;
  g_autoptr(PbUsbDevice) device = NULL;
  libusb_device *usb;
  Bed bed;

  bed_init (&bed);
  monitor = pb_monitor_new (&error);
  g_assert_no_error (error);
  usb = pb_monitor_find_device (monitor, FAKE_BUSID, &error);
  g_assert_no_error (error);
  device = pb_usb_device_new (monitor, usb, &error);
  g_assert_no_error (error);
  libusb_unref_device (usb);

  pb_device_open (PB_DEVICE (device), &error);
  g_assert_no_error (error);
  g_assert_cmpuint (FAKE_GET (&bed.fake, n_open), ==, 1);
  g_assert_cmpuint (FAKE_GET (&bed.fake, n_disconnect), ==, 1);
  g_assert_cmpuint (FAKE_GET (&bed.fake, driver_bound), ==, 0);
  g_assert_cmpuint (FAKE_GET (&bed.fake, claimed), ==, 3);
  g_assert_cmpint (pb_device_get_endpoint_type (PB_DEVICE (device), 0, PB_USBIP_DIR_OUT), ==, PB_ENDPOINT_CONTROL);
  g_assert_cmpint (pb_device_get_endpoint_type (PB_DEVICE (device), 1, PB_USBIP_DIR_IN), ==, PB_ENDPOINT_BULK);
  g_assert_cmpint (pb_device_get_endpoint_type (PB_DEVICE (device), 2, PB_USBIP_DIR_OUT), ==, PB_ENDPOINT_BULK);
  g_assert_cmpint (pb_device_get_endpoint_type (PB_DEVICE (device), 3, PB_USBIP_DIR_IN), ==, PB_ENDPOINT_INTERRUPT);
  g_assert_cmpint (pb_device_get_endpoint_type (PB_DEVICE (device), 1, PB_USBIP_DIR_OUT), ==, PB_ENDPOINT_UNKNOWN);
  g_assert_cmpint (pb_device_get_endpoint_type (PB_DEVICE (device), 2, PB_USBIP_DIR_IN), ==, PB_ENDPOINT_UNKNOWN);

  pb_device_close (PB_DEVICE (device));
  g_assert_cmpuint (FAKE_GET (&bed.fake, claimed), ==, 0);
  g_assert_cmpuint (FAKE_GET (&bed.fake, n_release), ==, 2);
  g_assert_cmpuint (FAKE_GET (&bed.fake, n_connect), ==, 1);
  g_assert_cmpuint (FAKE_GET (&bed.fake, driver_bound), ==, 1);

  g_clear_object (&device);
  g_clear_object (&monitor);
  bed_clear (&bed);
}

/* ---- 2. through a real PbServer: devlist, control, bulk ---- */

static void
test_devlist_and_control (Fixture *f, gconstpointer data)
{
  g_autoptr(GPtrArray) devices = NULL;
  g_autoptr(GError) error = NULL;
  const PbUsbipDeviceRecord *listed, *imported = pb_remote_device_get_record (f->remote);
  guint8 in[32];
  guint8 out[] = "payload";
  guint32 actual = 0;
  gint32 status = 1;

  /* The device is imported: the list still shows it (it is exported), as usbip-host does. */
  devices = pb_remote_list_devices ("127.0.0.1", f->server->port, NULL, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (devices->len, ==, 1);
  listed = devices->pdata[0];
  g_assert_cmpstr (listed->busid, ==, FAKE_BUSID);
  g_assert_cmpstr (listed->path, ==, FAKE_SYSPATH);
  g_assert_cmphex (listed->id_vendor, ==, FAKE_VID);
  g_assert_cmphex (listed->id_product, ==, FAKE_PID);
  g_assert_cmphex (listed->bcd_device, ==, FAKE_BCD);
  g_assert_cmpuint (listed->speed, ==, PB_USBIP_SPEED_HIGH);
  g_assert_cmpuint (listed->num_interfaces, ==, 2);
  g_assert_cmphex (listed->interfaces[1].interface_class, ==, 0xfe);
  g_assert_cmphex (imported->id_vendor, ==, FAKE_VID);
  g_assert_cmpuint (imported->devnum, ==, 2);

  /* Vendor IN: the answer is shorter than asked for. */
  memset (in, 0xaa, sizeof in);
  g_assert_true (pb_remote_device_control (f->remote, 0xc0, VENDOR_IN_REQUEST, VENDOR_IN_VALUE, VENDOR_IN_INDEX, in,
                                           16, &actual, TRANSFER_TIMEOUT_MS, &status, &error));
  g_assert_no_error (error);
  g_assert_cmpint (status, ==, 0);
  g_assert_cmpmem (in, actual, vendor_in_answer, strlen (vendor_in_answer));
  g_assert_cmphex (in[actual], ==, 0xaa);
  {
    static const guint8 expected_setup[8] = { 0xc0, VENDOR_IN_REQUEST, 0x34, 0x12, 0x05, 0x00, 16, 0 };
    g_mutex_lock (&f->bed.fake.lock);
    g_assert_cmpmem (f->bed.fake.last_setup, 8, expected_setup, 8);
    g_mutex_unlock (&f->bed.fake.lock);
  }

  /* Vendor OUT: the data reaches the device. */
  g_assert_true (pb_remote_device_control (f->remote, 0x40, VENDOR_OUT_REQUEST, VENDOR_OUT_VALUE, VENDOR_OUT_INDEX,
                                           out, 7, &actual, TRANSFER_TIMEOUT_MS, &status, &error));
  g_assert_no_error (error);
  g_assert_cmpint (status, ==, 0);
  g_assert_cmpuint (actual, ==, 7);
  g_mutex_lock (&f->bed.fake.lock);
  g_assert_cmpmem (f->bed.fake.control_out->data, f->bed.fake.control_out->len, "payload", 7);
  g_mutex_unlock (&f->bed.fake.lock);

  /* A request the device does not know stalls, and the stall comes back. */
  g_assert_false (pb_remote_device_control (f->remote, 0xc0, 0x7f, 0, 0, in, 4, &actual, TRANSFER_TIMEOUT_MS, &status,
                                            &error));
  g_assert_error (error, PB_ERROR, PB_ERROR_DEVICE);
  g_assert_cmpint (status, ==, PB_URB_EPIPE);
}

static void
test_bulk (Fixture *f, gconstpointer data)
{
  g_autofree guint8 *out = g_malloc (3000);
  guint8 in[512];
  guint32 actual = 0;

  for (guint i = 0; i < 3000; i++)
    out[i] = (guint8) (i * 7 + 1);
  g_assert_cmpint (transfer (f, EP_BULK_OUT, out, 3000, &actual), ==, 0);
  g_assert_cmpuint (actual, ==, 3000);
  g_mutex_lock (&f->bed.fake.lock);
  g_assert_cmpmem (f->bed.fake.bulk_out->data, f->bed.fake.bulk_out->len, out, 3000);
  g_mutex_unlock (&f->bed.fake.lock);

  /* Data waiting at the device, then data that comes while the URB is held. */
  fake_feed_bulk_in (&f->bed.fake, "first answer", 12);
  memset (in, 0, sizeof in);
  g_assert_cmpint (transfer (f, EP_BULK_IN, in, sizeof in, &actual), ==, 0);
  g_assert_cmpmem (in, actual, "first answer", 12);

  {
    Outcome outcome;
    memset (in, 0, sizeof in);
    submit (f, EP_BULK_IN, in, sizeof in, &outcome);
    wait_for ("the device to hold the bulk IN", held_one_bulk_in, &f->bed.fake);
    g_assert_cmpuint (outcome.calls, ==, 0);
    g_assert_true (fake_complete_held (&f->bed.fake, EP_BULK_IN, "second", 6));
    wait_for ("the bulk IN", outcome_called, &outcome);
    g_assert_cmpint (outcome.result.status, ==, 0);
    g_assert_cmpmem (in, outcome.result.actual_length, "second", 6);
    settle (20);
    g_assert_cmpuint (outcome.calls, ==, 1);
  }
}

/* ---- 3. unlink ---- */

static void
test_unlink_held (Fixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  guint8 in[64];
  guint32 seqnum, actual = 0;
  Outcome outcome;

  seqnum = submit (f, EP_BULK_IN, in, sizeof in, &outcome);
  wait_for ("the device to hold the bulk IN", held_one_bulk_in, &f->bed.fake);
  g_assert_true (pb_remote_device_unlink (f->remote, seqnum, &error));
  g_assert_no_error (error);
  wait_for ("the unlinked URB", outcome_called, &outcome);
  g_assert_cmpint (outcome.result.status, ==, PB_URB_ECONNRESET);
  g_assert_cmpuint (outcome.result.actual_length, ==, 0);
  settle (50);
  g_assert_cmpuint (outcome.calls, ==, 1);
  g_assert_cmpuint (FAKE_GET (&f->bed.fake, n_discarded), ==, 1);
  g_assert_cmpuint (FAKE_GET (&f->bed.fake, n_discard_missed), ==, 0);
  g_assert_cmpuint (fake_count_held (&f->bed.fake, EP_BULK_IN), ==, 0);

  /* The endpoint works on. */
  fake_feed_bulk_in (&f->bed.fake, "after", 5);
  g_assert_cmpint (transfer (f, EP_BULK_IN, in, sizeof in, &actual), ==, 0);
  g_assert_cmpmem (in, actual, "after", 5);
}

/* The device finishes the URB just as the discard arrives: usbfs answers the discard with
 * EINVAL and the URB is reaped with its data. Still exactly one answer for the client. */
static void
test_unlink_completed_at_discard (Fixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  guint8 in[64];
  guint32 seqnum, actual = 0;
  Outcome outcome;

  g_mutex_lock (&f->bed.fake.lock);
  f->bed.fake.complete_on_discard = TRUE;
  g_mutex_unlock (&f->bed.fake.lock);
  memset (in, 0, sizeof in);
  seqnum = submit (f, EP_BULK_IN, in, sizeof in, &outcome);
  wait_for ("the device to hold the bulk IN", held_one_bulk_in, &f->bed.fake);
  g_assert_true (pb_remote_device_unlink (f->remote, seqnum, &error));
  g_assert_no_error (error);
  wait_for ("the unlinked URB", outcome_called, &outcome);
  /* Unlinked (the session answers an unlinked URB with RET_UNLINK) or, were the completion to
   * overtake the unlink, completed with the device's data. */
  if (outcome.result.status == 0)
    g_assert_cmpmem (in, outcome.result.actual_length, "late", 4);
  else
    g_assert_cmpint (outcome.result.status, ==, PB_URB_ECONNRESET);
  settle (50);
  g_assert_cmpuint (outcome.calls, ==, 1);
  g_assert_cmpuint (FAKE_GET (&f->bed.fake, n_discard_missed), ==, 1);
  g_assert_cmpuint (FAKE_GET (&f->bed.fake, n_discarded), ==, 0);

  g_mutex_lock (&f->bed.fake.lock);
  f->bed.fake.complete_on_discard = FALSE;
  g_mutex_unlock (&f->bed.fake.lock);
  fake_feed_bulk_in (&f->bed.fake, "after", 5);
  g_assert_cmpint (transfer (f, EP_BULK_IN, in, sizeof in, &actual), ==, 0);
  g_assert_cmpmem (in, actual, "after", 5);
}

/* Completion and unlink at the same moment, from two threads: whichever wins, one answer. */
static void
test_unlink_racing (Fixture *f, gconstpointer data)
{
  guint unlinked = 0, completed = 0;

  for (guint round = 0; round < 30; round++)
    {
      g_autoptr(GError) error = NULL;
      guint8 in[64];
      guint32 seqnum;
      Outcome outcome;

      memset (in, 0, sizeof in);
      seqnum = submit (f, EP_BULK_IN, in, sizeof in, &outcome);
      wait_for ("the device to hold the bulk IN", held_one_bulk_in, &f->bed.fake);
      /* Completion just before the unlink, just after it, or none (the discard wins). */
      if (round % 3 == 0)
        g_assert_true (fake_complete_held (&f->bed.fake, EP_BULK_IN, "raced", 5));
      g_usleep (round * 100);
      g_assert_true (pb_remote_device_unlink (f->remote, seqnum, &error));
      g_assert_no_error (error);
      if (round % 3 == 1)
        fake_complete_held (&f->bed.fake, EP_BULK_IN, "raced", 5); /* FALSE when the discard won */
      wait_for ("the raced URB", outcome_called, &outcome);
      if (outcome.result.status == 0)
        {
          g_assert_cmpmem (in, outcome.result.actual_length, "raced", 5);
          completed++;
        }
      else
        {
          g_assert_cmpint (outcome.result.status, ==, PB_URB_ECONNRESET);
          unlinked++;
        }
      settle (5);
      g_assert_cmpuint (outcome.calls, ==, 1);
      g_assert_cmpuint (fake_count_held (&f->bed.fake, EP_BULK_IN), ==, 0);
    }
  g_test_message ("%u unlinked, %u completed", unlinked, completed);
  g_assert_cmpuint (unlinked + completed, ==, 30);
}

/* ---- 4. hot-unplug with transfers pending ---- */

static gboolean
held_three (gpointer data)
{
  FakeDevice *fake = data;
  return fake_count_held (fake, EP_BULK_IN) == 1 && fake_count_held (fake, EP_INT_IN) == 2;
}

typedef struct {
  Outcome *outcomes;
  guint n;
} Outcomes;

static gboolean
all_called (gpointer data)
{
  Outcomes *o = data;
  for (guint i = 0; i < o->n; i++)
    if (o->outcomes[i].calls == 0)
      return FALSE;
  return TRUE;
}

static gboolean
monitor_lost_device (gpointer data)
{
  g_autoptr(GError) error = NULL;
  libusb_device *device = pb_monitor_find_device (data, FAKE_BUSID, &error);

  g_clear_pointer (&device, libusb_unref_device);
  return error != NULL;
}

static void
test_unplug (Fixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  guint8 bulk[64], interrupt[2][8], more[8];
  Outcome pending[3], after;
  Outcomes all = { pending, 3 };

  submit (f, EP_BULK_IN, bulk, sizeof bulk, &pending[0]);
  submit (f, EP_INT_IN, interrupt[0], 8, &pending[1]);
  submit (f, EP_INT_IN, interrupt[1], 8, &pending[2]);
  wait_for ("the device to hold three URBs", held_three, &f->bed.fake);

  bed_unplug (&f->bed);
  wait_for ("every pending URB", all_called, &all);
  for (guint i = 0; i < 3; i++)
    {
      g_test_message ("pending URB %u: status %d", i, pending[i].result.status);
      g_assert_true (pending[i].result.status == PB_URB_ESHUTDOWN || pending[i].result.status == PB_URB_ENODEV);
      g_assert_cmpuint (pending[i].result.actual_length, ==, 0);
    }
  settle (50);
  for (guint i = 0; i < 3; i++)
    g_assert_cmpuint (pending[i].calls, ==, 1);

  /* What comes after fails at once, whether the server still serves the device or has
   * closed the connection because it vanished. */
  if (!pb_remote_device_is_closed (f->remote))
    {
      guint32 seqnum;
      PbRemoteUrbRequest request = { .ep = EP_INT_IN & 0x0f, .direction = PB_USBIP_DIR_IN, .buffer = more,
                                     .length = sizeof more };

      memset (&after, 0, sizeof after);
      seqnum = pb_remote_device_submit (f->remote, &request, on_outcome, &after, &error);
      if (seqnum != 0)
        {
          wait_for ("a URB after the unplug", outcome_called, &after);
          g_assert_cmpint (after.result.status, !=, 0);
          settle (20);
          g_assert_cmpuint (after.calls, ==, 1);
        }
      else
        g_assert_error (error, PB_ERROR, PB_ERROR_CLOSED);
    }

  /* The udev "remove" reaches libusb: the device is no longer listed. */
  {
    g_autoptr(PbMonitor) monitor = pb_monitor_new (&error);
    g_assert_no_error (error);
    wait_for ("libusb to forget the device", monitor_lost_device, monitor);
  }
}

/* ---- 5. requests the server carries out itself ---- */

static void
test_set_configuration (Fixture *f, gconstpointer data)
{
  guint8 in[16];
  guint32 actual = 0;
  Outcome outcome;

  submit_control (f, 0x00, PB_USB_REQ_SET_CONFIGURATION, 1, 0, NULL, 0, &outcome);
  wait_for ("SET_CONFIGURATION", outcome_called, &outcome);
  g_assert_cmpint (outcome.result.status, ==, 0);
  settle (30);
  g_assert_cmpuint (outcome.calls, ==, 1);
  g_assert_cmpuint (FAKE_GET (&f->bed.fake, n_set_configuration), ==, 1);
  g_assert_cmpuint (FAKE_GET (&f->bed.fake, set_configuration_value), ==, 1);
  g_assert_false (FAKE_GET (&f->bed.fake, set_configuration_busy));
  /* Interfaces released for the change and claimed again after it. */
  g_assert_cmpuint (FAKE_GET (&f->bed.fake, n_release), ==, 2);
  g_assert_cmpuint (FAKE_GET (&f->bed.fake, claimed), ==, 3);
  /* Not forwarded as a control transfer. */
  g_mutex_lock (&f->bed.fake.lock);
  g_assert_cmpuint (f->bed.fake.last_setup[1], !=, PB_USB_REQ_SET_CONFIGURATION);
  g_mutex_unlock (&f->bed.fake.lock);

  /* The endpoints still work. */
  fake_feed_bulk_in (&f->bed.fake, "configured", 10);
  g_assert_cmpint (transfer (f, EP_BULK_IN, in, sizeof in, &actual), ==, 0);
  g_assert_cmpmem (in, actual, "configured", 10);

  /* A configuration the device does not have fails, once. */
  submit_control (f, 0x00, PB_USB_REQ_SET_CONFIGURATION, 7, 0, NULL, 0, &outcome);
  wait_for ("SET_CONFIGURATION 7", outcome_called, &outcome);
  g_assert_cmpint (outcome.result.status, !=, 0);
  settle (30);
  g_assert_cmpuint (outcome.calls, ==, 1);
  g_assert_cmpuint (FAKE_GET (&f->bed.fake, n_set_configuration), ==, 2);
  g_assert_cmpuint (FAKE_GET (&f->bed.fake, set_configuration_value), ==, 7);
}

static void
test_clear_halt (Fixture *f, gconstpointer data)
{
  guint8 in[16];
  guint32 actual = 0;
  Outcome outcome;

  /* The endpoint stalls... */
  g_mutex_lock (&f->bed.fake.lock);
  f->bed.fake.bulk_in_halted = TRUE;
  g_mutex_unlock (&f->bed.fake.lock);
  g_assert_cmpint (transfer (f, EP_BULK_IN, in, sizeof in, &actual), ==, PB_URB_EPIPE);

  /* ...until the host clears the halt, which reaches usbfs as CLEAR_HALT, once. */
  submit_control (f, PB_USB_RECIP_ENDPOINT, PB_USB_REQ_CLEAR_FEATURE, PB_USB_FEATURE_ENDPOINT_HALT, EP_BULK_IN, NULL,
                  0, &outcome);
  wait_for ("CLEAR_FEATURE(ENDPOINT_HALT)", outcome_called, &outcome);
  g_assert_cmpint (outcome.result.status, ==, 0);
  settle (30);
  g_assert_cmpuint (outcome.calls, ==, 1);
  g_assert_cmpuint (FAKE_GET (&f->bed.fake, n_clear_halt), ==, 1);
  g_assert_cmphex (FAKE_GET (&f->bed.fake, clear_halt_endpoint), ==, EP_BULK_IN);
  g_assert_false (FAKE_GET (&f->bed.fake, bulk_in_halted));

  fake_feed_bulk_in (&f->bed.fake, "flowing", 7);
  g_assert_cmpint (transfer (f, EP_BULK_IN, in, sizeof in, &actual), ==, 0);
  g_assert_cmpmem (in, actual, "flowing", 7);
}

/* ---- running under umockdev ---- */

typedef struct {
  const char *const *names;
  const char *path;
} LibrarySearch;

static int
find_library (struct dl_phdr_info *info, size_t size, void *data)
{
  LibrarySearch *search = data;

  for (guint i = 0; info->dlpi_name != NULL && search->names[i] != NULL; i++)
    if (strstr (info->dlpi_name, search->names[i]) != NULL)
      {
        search->path = info->dlpi_name;
        return 1;
      }
  return 0;
}

/* The loaded library whose file name contains one of names, or NULL. */
static const char *
loaded_library (const char *const *names)
{
  LibrarySearch search = { names, NULL };

  dl_iterate_phdr (find_library, &search);
  return search.path;
}

/* umockdev_in_mock_environment() only answers once a testbed exists: look for the library. */
static gboolean
umockdev_preloaded (void)
{
  static const char *const names[] = { "libumockdev-preload.so", NULL };
  return loaded_library (names) != NULL;
}

/* umockdev's preload library must be in the process from the start: re-executes the test with
 * it. A shared ASan runtime must stay first in the list, so it goes in front. */
static void
reexec_under_umockdev (char **argv)
{
  static const char *const asan_names[] = { "libasan.so", "libclang_rt.asan", NULL };
  const char *asan = loaded_library (asan_names);
  const char *old = g_getenv ("LD_PRELOAD");
  g_autofree char *preload = NULL;

  if (umockdev_preloaded () || g_getenv ("PB_TEST_UMOCKDEV_REEXEC") != NULL)
    return;
  preload = g_strconcat (asan != NULL ? asan : "", asan != NULL ? ":" : "", "libumockdev-preload.so.0",
                         old != NULL && *old != '\0' ? ":" : "", old != NULL ? old : "", NULL);
  g_setenv ("LD_PRELOAD", preload, TRUE);
  g_setenv ("PB_TEST_UMOCKDEV_REEXEC", "1", TRUE);
  execv ("/proc/self/exe", argv);
  g_printerr ("cannot re-execute under umockdev: %s\n", g_strerror (errno));
}

static void
test_no_umockdev (void)
{
  g_test_skip ("umockdev's preload library is not active (run under umockdev-wrapper)");
}

#define ADD(path, func) g_test_add ("/usb-device/" path, Fixture, NULL, fixture_setup, func, fixture_teardown)

int
main (int argc, char **argv)
{
  reexec_under_umockdev (argv);
  g_test_init (&argc, &argv, NULL);

  if (!umockdev_preloaded ())
    {
      g_test_add_func ("/usb-device/no-umockdev", test_no_umockdev);
      return g_test_run ();
    }
  g_test_add_func ("/usb-device/monitor/find-and-describe", test_find_and_describe);
  g_test_add_func ("/usb-device/open-close", test_open_close);
  ADD ("server/devlist-and-control", test_devlist_and_control);
  ADD ("server/bulk", test_bulk);
  ADD ("unlink/held", test_unlink_held);
  ADD ("unlink/completed-at-discard", test_unlink_completed_at_discard);
  ADD ("unlink/racing", test_unlink_racing);
  ADD ("unplug", test_unplug);
  ADD ("standard/set-configuration", test_set_configuration);
  ADD ("standard/clear-halt", test_clear_halt);
  return g_test_run ();
}
