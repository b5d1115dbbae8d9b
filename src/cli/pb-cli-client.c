/* `plugboard list` and `plugboard probe`: the client verbs that talk to a USB/IP server
 * directly, without the kernel's vhci-hcd. */
#define G_LOG_DOMAIN "plugboard"

#include <stdio.h>
#include <string.h>

#include "pb-cli.h"
#include "pb-error.h"
#include "pb-monitor.h"
#include "pb-remote.h"
#include "pb-usb-ids.h"
#include "pb-virtual-device.h"

/* Each control request of `probe` gets this long before it is unlinked. */
#define PROBE_TIMEOUT_MS 5000

/* ---- names ---- */

/* Base class names as usb.ids spells them, for machines without the database (usbutils and
 * hwdata are not always installed). Subclasses and protocols need the file. */
static const struct {
  guint8 code;
  const char *name;
} builtin_classes[] = {
  { 0x00, "(Defined at Interface level)" },
  { 0x01, "Audio" },
  { 0x02, "Communications" },
  { 0x03, "Human Interface Device" },
  { 0x05, "Physical Interface Device" },
  { 0x06, "Imaging" },
  { 0x07, "Printer" },
  { 0x08, "Mass Storage" },
  { 0x09, "Hub" },
  { 0x0a, "CDC Data" },
  { 0x0b, "Chip/SmartCard" },
  { 0x0d, "Content Security" },
  { 0x0e, "Video" },
  { 0x0f, "Personal Healthcare" },
  { 0x10, "Audio/Video" },
  { 0x11, "Billboard" },
  { 0x12, "Type-C Bridge" },
  { 0xdc, "Diagnostic" },
  { 0xe0, "Wireless" },
  { 0xef, "Miscellaneous Device" },
  { 0xfe, "Application Specific Interface" },
  { 0xff, "Vendor Specific Class" },
};

static const char *
class_name (const PbUsbIds *ids, guint8 class_code)
{
  const char *name = pb_usb_ids_class (ids, class_code);

  for (gsize i = 0; name == NULL && i < G_N_ELEMENTS (builtin_classes); i++)
    if (builtin_classes[i].code == class_code)
      name = builtin_classes[i].name;
  return name;
}

/* "Class / Subclass / Protocol (cc/ss/pp)", worded as Linux's usbip tools word it. */
static char *
describe_class (const PbUsbIds *ids, guint8 class_code, guint8 subclass, guint8 protocol)
{
  const char *c, *s, *p;

  if (class_code == 0 && subclass == 0 && protocol == 0)
    return g_strdup ("(Defined at Interface level) (00/00/00)");
  c = class_name (ids, class_code);
  s = pb_usb_ids_subclass (ids, class_code, subclass);
  p = pb_usb_ids_protocol (ids, class_code, subclass, protocol);
  return g_strdup_printf ("%s / %s / %s (%02x/%02x/%02x)", c != NULL ? c : "unknown class",
                          s != NULL ? s : "unknown subclass", p != NULL ? p : "unknown protocol", class_code,
                          subclass, protocol);
}

/* Appends c unless a terminal would act on it (controls, bidi overrides): the text comes from
 * a server or a device we do not trust. */
static void
append_printable_char (GString *out, gunichar c)
{
  if (g_unichar_iscntrl (c) || g_unichar_type (c) == G_UNICODE_FORMAT)
    g_string_append_c (out, '?');
  else
    g_string_append_unichar (out, c);
}

static char *
printable (const char *text)
{
  g_autofree char *valid = g_utf8_make_valid (text, -1);
  GString *out = g_string_sized_new (strlen (valid));

  for (const char *p = valid; *p != '\0'; p = g_utf8_next_char (p))
    append_printable_char (out, g_utf8_get_char (p));
  return g_string_free (out, FALSE);
}

static gboolean
parse_port (const char *verb, gint port)
{
  if (port < 1 || port > 65535)
    {
      fprintf (stderr, "plugboard %s: port %d is out of range (1-65535)\n", verb, port);
      return FALSE;
    }
  return TRUE;
}

/* ---- list ---- */

static void
print_device_record (const PbUsbIds *ids, const PbUsbipDeviceRecord *record)
{
  const char *vendor = pb_usb_ids_vendor (ids, record->id_vendor);
  const char *product = pb_usb_ids_product (ids, record->id_vendor, record->id_product);
  g_autofree char *busid = printable (record->busid);
  g_autofree char *path = printable (record->path);
  g_autofree char *device_class = describe_class (ids, record->device_class, record->device_subclass,
                                                  record->device_protocol);

  printf ("%11s: %s : %s (%04x:%04x)\n", busid, vendor != NULL ? vendor : "unknown vendor",
          product != NULL ? product : "unknown product", record->id_vendor, record->id_product);
  printf ("%11s: %s\n", "", path);
  printf ("%11s: %s\n", "", device_class);
  for (guint i = 0; i < record->num_interfaces; i++)
    {
      const PbUsbipInterfaceRecord *interface = &record->interfaces[i];
      g_autofree char *interface_class = describe_class (ids, interface->interface_class,
                                                        interface->interface_subclass,
                                                        interface->interface_protocol);
      printf ("%11s: %2u - %s\n", "", i, interface_class);
    }
  printf ("\n");
}

/* The kernel driver bound to each interface of the device, from sysfs ("-" when none). */
static char *
local_drivers (const char *busid)
{
  static const char devices_dir[] = "/sys/bus/usb/devices";
  g_autoptr(GDir) dir = g_dir_open (devices_dir, 0, NULL);
  g_autoptr(GPtrArray) drivers = g_ptr_array_new_with_free_func (g_free);
  g_autofree char *prefix = g_strdup_printf ("%s:", busid);
  const char *name;

  while (dir != NULL && (name = g_dir_read_name (dir)) != NULL)
    {
      g_autofree char *link = NULL;
      g_autofree char *target = NULL;
      g_autofree char *driver = NULL;

      if (!g_str_has_prefix (name, prefix))
        continue;
      link = g_build_filename (devices_dir, name, "driver", NULL);
      target = g_file_read_link (link, NULL);
      driver = target != NULL ? g_path_get_basename (target) : g_strdup ("-");
      if (!g_ptr_array_find_with_equal_func (drivers, driver, g_str_equal, NULL))
        g_ptr_array_add (drivers, g_steal_pointer (&driver));
    }
  if (drivers->len == 0)
    return g_strdup ("-");
  g_ptr_array_sort (drivers, (GCompareFunc) g_strcmp0);
  g_ptr_array_add (drivers, NULL);
  return g_strjoinv (",", (char **) drivers->pdata);
}

/* `list -l`: this machine's USB devices, as `usbip list -l` prints them, plus the drivers. */
static int
list_local (void)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(PbMonitor) monitor = pb_monitor_new (&error);
  g_autoptr(GPtrArray) devices = NULL;
  g_autoptr(PbUsbIds) ids = NULL;

  if (monitor != NULL)
    devices = pb_monitor_list_devices (monitor, &error);
  if (devices == NULL)
    {
      fprintf (stderr, "plugboard list: %s\n", error->message);
      return PB_EXIT_FAILURE;
    }
  if (devices->len == 0)
    {
      printf ("no USB devices on this machine\n");
      return PB_EXIT_OK;
    }
  ids = pb_usb_ids_load_default ();
  for (guint i = 0; i < devices->len; i++)
    {
      libusb_device *device = devices->pdata[i];
      struct libusb_device_descriptor d;
      g_autofree char *busid = pb_monitor_device_busid (device);
      g_autofree char *drivers = local_drivers (busid);
      const char *vendor, *product;

      if (libusb_get_device_descriptor (device, &d) < 0)
        continue;
      vendor = pb_usb_ids_vendor (ids, d.idVendor);
      product = pb_usb_ids_product (ids, d.idVendor, d.idProduct);
      printf (" - busid %s (%04x:%04x)\n", busid, d.idVendor, d.idProduct);
      printf ("   %s : %s (%04x:%04x)\n", vendor != NULL ? vendor : "unknown vendor",
              product != NULL ? product : "unknown product", d.idVendor, d.idProduct);
      printf ("   driver: %s%s\n\n", drivers,
              pb_monitor_device_is_imported (device) ? " (imported through vhci-hcd)" : "");
    }
  return PB_EXIT_OK;
}

int
pb_cli_list (int argc, char **argv)
{
  g_autofree char *host = NULL;
  gint port = PB_USBIP_DEFAULT_PORT;
  g_autoptr(GError) error = NULL;
  g_autoptr(GOptionContext) context = NULL;
  g_autoptr(GPtrArray) devices = NULL;
  g_autoptr(PbUsbIds) ids = NULL;
  g_autofree char *shown_host = NULL;
  gboolean local = FALSE;
  GOptionEntry entries[] = {
    { "remote", 'r', 0, G_OPTION_ARG_STRING, &host, "The USB/IP server to ask (name or address)", "HOST" },
    { "port", 'p', 0, G_OPTION_ARG_INT, &port, "Its TCP port (default 3240)", "N" },
    { "local", 'l', 0, G_OPTION_ARG_NONE, &local, "This machine's USB devices, with their bus IDs and drivers", NULL },
    { NULL }
  };

  context = g_option_context_new ("— list the devices a USB/IP server exports, or this machine's");
  g_option_context_add_main_entries (context, entries, NULL);
  g_option_context_set_description (context,
    "Asks the server for its device list (OP_REQ_DEVLIST) and prints it the way\n"
    "`usbip list -r` does: per device its bus ID, vendor and product names from usb.ids,\n"
    "its sysfs path on the server, its class and the class of each interface.\n"
    "Works with any USB/IP server (Linux's usbipd, usbipd-win, plugboard serve).\n\n"
    "Examples:\n"
    "  plugboard list -r 192.168.1.20\n"
    "  plugboard list -r localhost --port 3241\n"
    "  plugboard list -l                          # this machine's devices, to share\n\n"
    "Exit status: 0 listed (also when empty), 2 bad command line, 3 server unreachable,\n"
    "6 protocol error.");
  if (!g_option_context_parse (context, &argc, &argv, &error))
    {
      fprintf (stderr, "plugboard list: %s\n", error->message);
      return PB_EXIT_USAGE;
    }
  if (argc > 1)
    {
      fprintf (stderr, "plugboard list: unexpected argument “%s”\n", argv[1]);
      return PB_EXIT_USAGE;
    }
  if (local && host != NULL)
    {
      fprintf (stderr, "plugboard list: give -r HOST or -l, not both\n");
      return PB_EXIT_USAGE;
    }
  if (local)
    return list_local ();
  if (host == NULL || host[0] == '\0')
    {
      fprintf (stderr, "plugboard list: which server? Give -r HOST or -l (see --help)\n");
      return PB_EXIT_USAGE;
    }
  if (!parse_port ("list", port))
    return PB_EXIT_USAGE;

  devices = pb_remote_list_devices (host, (guint16) port, NULL, &error);
  if (devices == NULL)
    {
      fprintf (stderr, "plugboard list: %s\n", error->message);
      return pb_cli_exit_code_for_error (error);
    }

  shown_host = printable (host);
  if (devices->len == 0)
    {
      printf ("no exportable devices found on %s\n", shown_host);
      return PB_EXIT_OK;
    }

  ids = pb_usb_ids_load_default ();
  printf ("Exportable USB devices\n");
  printf ("======================\n");
  printf (" - %s\n", shown_host);
  for (guint i = 0; i < devices->len; i++)
    print_device_record (ids, devices->pdata[i]);
  return PB_EXIT_OK;
}

/* ---- probe ---- */

typedef struct {
  PbRemoteDevice *device;
  PbUsbIds *ids;
  guint8 device_descriptor[18];
  GPtrArray *configurations;  /* GBytes: each configuration's full descriptor set, as read */
  guint16 language;           /* the first language ID; 0 when the device has no strings */
  char *strings[256];         /* by index, or a note why not; NULL when not read (or index 0) */
  gboolean string_read[256];  /* strings[i] is the device's text, not a note */
  gboolean configured;        /* SET_CONFIGURATION went out (the device has a configuration) */
  guint8 set_value;
  guint8 active_configuration;
  gboolean have_status;
  guint16 device_status;
} Probe;

static void
probe_clear (Probe *probe)
{
  g_clear_pointer (&probe->configurations, g_ptr_array_unref);
  for (guint i = 0; i < G_N_ELEMENTS (probe->strings); i++)
    g_clear_pointer (&probe->strings[i], g_free);
  g_clear_pointer (&probe->ids, pb_usb_ids_free);
  if (probe->device != NULL)
    pb_remote_device_close (probe->device);
  g_clear_object (&probe->device);
}

/* A standard request to the device. *stalled (optional) tells a stall (the device declining,
 * which probe reports and moves past) from the transport failing (which ends the probe). */
static gboolean
standard_request (Probe *probe, gboolean in, guint8 request, guint16 value, guint16 index, guint8 *data,
                  guint16 length, guint32 *actual_length, gboolean *stalled, GError **error)
{
  guint8 request_type = (in ? PB_USB_DIR_IN : 0) | PB_USB_TYPE_STANDARD | PB_USB_RECIP_DEVICE;
  gint32 status = 0;
  guint32 actual = 0;
  gboolean ok;

  ok = pb_remote_device_control (probe->device, request_type, request, value, index, data, length, &actual,
                                 PROBE_TIMEOUT_MS, &status, error);
  if (stalled != NULL)
    *stalled = !ok && status == PB_URB_EPIPE;
  if (actual_length != NULL)
    *actual_length = ok ? actual : 0;
  return ok;
}

static gboolean
read_device_descriptor (Probe *probe, GError **error)
{
  guint8 *d = probe->device_descriptor;
  guint32 actual;

  if (!standard_request (probe, TRUE, PB_USB_REQ_GET_DESCRIPTOR, PB_USB_DT_DEVICE << 8, 0, d, 18, &actual, NULL,
                         error))
    {
      g_prefix_error (error, "GET_DESCRIPTOR(device): ");
      return FALSE;
    }
  if (actual < 18 || d[0] < 18 || d[1] != PB_USB_DT_DEVICE)
    {
      g_set_error (error, PB_ERROR, PB_ERROR_PROTOCOL,
                   "GET_DESCRIPTOR(device): malformed reply (%u bytes, bLength %u, type 0x%02x)", actual, d[0],
                   d[1]);
      return FALSE;
    }
  return TRUE;
}

/* Configuration index: the 9-byte header first for wTotalLength, then the whole set. */
static GBytes *
read_configuration (Probe *probe, guint8 index, GError **error)
{
  guint8 header[9];
  g_autofree guint8 *data = NULL;
  guint32 actual;
  guint16 total;

  if (!standard_request (probe, TRUE, PB_USB_REQ_GET_DESCRIPTOR, PB_USB_DT_CONFIG << 8 | index, 0, header,
                         sizeof header, &actual, NULL, error))
    {
      g_prefix_error (error, "GET_DESCRIPTOR(configuration %u): ", index);
      return NULL;
    }
  if (actual < 9 || header[1] != PB_USB_DT_CONFIG)
    {
      g_set_error (error, PB_ERROR, PB_ERROR_PROTOCOL,
                   "GET_DESCRIPTOR(configuration %u): malformed reply (%u bytes, type 0x%02x)", index, actual,
                   actual >= 2 ? header[1] : 0);
      return NULL;
    }
  total = header[2] | header[3] << 8;
  if (total < 9)
    {
      g_set_error (error, PB_ERROR, PB_ERROR_PROTOCOL,
                   "GET_DESCRIPTOR(configuration %u): wTotalLength %u is shorter than the header", index, total);
      return NULL;
    }
  data = g_malloc (total);
  if (!standard_request (probe, TRUE, PB_USB_REQ_GET_DESCRIPTOR, PB_USB_DT_CONFIG << 8 | index, 0, data, total,
                         &actual, NULL, error))
    {
      g_prefix_error (error, "GET_DESCRIPTOR(configuration %u, %u bytes): ", index, total);
      return NULL;
    }
  if (actual < 9)
    {
      g_set_error (error, PB_ERROR, PB_ERROR_PROTOCOL,
                   "GET_DESCRIPTOR(configuration %u, %u bytes): only %u bytes came back", index, total, actual);
      return NULL;
    }
  /* Shown as far as it came; the dump notes a short read against wTotalLength. */
  return g_bytes_new_take (g_steal_pointer (&data), actual);
}

/* Steps through the descriptors of a configuration set after its header. FALSE at the end or
 * at a descriptor whose bLength is impossible (*offset then points at it). */
static gboolean
next_descriptor (const guint8 *data, gsize len, gsize *offset, guint8 *length, guint8 *type)
{
  if (*offset + 2 > len || data[*offset] < 2 || *offset + data[*offset] > len)
    return FALSE;
  *length = data[*offset];
  *type = data[*offset + 1];
  return TRUE;
}

static gsize
first_descriptor_offset (const guint8 *data, gsize len)
{
  return data[0] >= 9 && data[0] <= len ? data[0] : 9;
}

/* Text of a string descriptor (UTF-16LE), printable; unpaired surrogates become U+FFFD. */
static char *
decode_string_descriptor (const guint8 *data, gsize len)
{
  GString *out = g_string_new (NULL);
  gsize n_units = (len - 2) / 2;

  for (gsize i = 0; i < n_units; i++)
    {
      gunichar unit = data[2 + 2 * i] | data[3 + 2 * i] << 8;

      if (unit >= 0xd800 && unit < 0xdc00 && i + 1 < n_units)
        {
          gunichar low = data[4 + 2 * i] | data[5 + 2 * i] << 8;
          if (low >= 0xdc00 && low < 0xe000)
            {
              append_printable_char (out, 0x10000 + ((unit - 0xd800) << 10) + (low - 0xdc00));
              i++;
              continue;
            }
        }
      append_printable_char (out, unit >= 0xd800 && unit < 0xe000 ? 0xfffd : unit);
    }
  return g_string_free (out, FALSE);
}

static gboolean
read_string (Probe *probe, guint8 index, GError **error)
{
  guint8 buffer[255];
  guint32 actual;
  gboolean stalled;
  g_autoptr(GError) local_error = NULL;

  if (index == 0 || probe->strings[index] != NULL)
    return TRUE;
  if (!standard_request (probe, TRUE, PB_USB_REQ_GET_DESCRIPTOR, PB_USB_DT_STRING << 8 | index, probe->language,
                         buffer, sizeof buffer, &actual, &stalled, &local_error))
    {
      if (!stalled)
        {
          g_propagate_prefixed_error (error, g_steal_pointer (&local_error), "GET_DESCRIPTOR(string %u): ", index);
          return FALSE;
        }
      probe->strings[index] = g_strdup ("(not available: the device stalls the request)");
      return TRUE;
    }
  if (actual < 2 || buffer[1] != PB_USB_DT_STRING || buffer[0] < 2)
    probe->strings[index] = g_strdup_printf ("(malformed string descriptor, %u bytes)", actual);
  else
    {
      probe->strings[index] = decode_string_descriptor (buffer, MIN (actual, buffer[0]));
      probe->string_read[index] = TRUE;
    }
  return TRUE;
}

static gboolean
read_strings (Probe *probe, GError **error)
{
  const guint8 *d = probe->device_descriptor;
  guint8 buffer[255];
  guint32 actual;
  gboolean stalled;
  g_autoptr(GError) local_error = NULL;

  if (d[14] == 0 && d[15] == 0 && d[16] == 0)
    {
      /* Maybe a configuration or an interface still names one. */
      gboolean any = FALSE;
      for (guint i = 0; i < probe->configurations->len && !any; i++)
        {
          gsize len;
          const guint8 *c = g_bytes_get_data (probe->configurations->pdata[i], &len);
          gsize offset = first_descriptor_offset (c, len);
          guint8 dlen, type;

          any = c[6] != 0;
          for (; !any && next_descriptor (c, len, &offset, &dlen, &type); offset += dlen)
            any = type == PB_USB_DT_INTERFACE && dlen >= 9 && c[offset + 8] != 0;
        }
      if (!any)
        return TRUE;
    }

  /* String 0 lists the languages; every other string is read in the first. */
  if (!standard_request (probe, TRUE, PB_USB_REQ_GET_DESCRIPTOR, PB_USB_DT_STRING << 8, 0, buffer, sizeof buffer,
                         &actual, &stalled, &local_error))
    {
      if (stalled)
        return TRUE;
      g_propagate_prefixed_error (error, g_steal_pointer (&local_error), "GET_DESCRIPTOR(languages): ");
      return FALSE;
    }
  if (actual < 4 || buffer[0] < 4 || buffer[1] != PB_USB_DT_STRING)
    return TRUE;
  probe->language = buffer[2] | buffer[3] << 8;

  for (guint i = 14; i <= 16; i++)
    if (!read_string (probe, d[i], error))
      return FALSE;
  for (guint i = 0; i < probe->configurations->len; i++)
    {
      gsize len;
      const guint8 *c = g_bytes_get_data (probe->configurations->pdata[i], &len);
      gsize offset = first_descriptor_offset (c, len);
      guint8 dlen, type;

      if (!read_string (probe, c[6], error))
        return FALSE;
      for (; next_descriptor (c, len, &offset, &dlen, &type); offset += dlen)
        if (type == PB_USB_DT_INTERFACE && dlen >= 9 && !read_string (probe, c[offset + 8], error))
          return FALSE;
    }
  return TRUE;
}

static gboolean
run_probe (Probe *probe, GError **error)
{
  guint8 n_configurations;
  guint8 value;
  guint32 actual;
  gboolean stalled;
  guint8 status[2];
  g_autoptr(GError) local_error = NULL;

  if (!read_device_descriptor (probe, error))
    return FALSE;

  n_configurations = probe->device_descriptor[17];
  probe->configurations = g_ptr_array_new_with_free_func ((GDestroyNotify) g_bytes_unref);
  for (guint i = 0; i < n_configurations; i++)
    {
      GBytes *configuration = read_configuration (probe, i, error);
      if (configuration == NULL)
        return FALSE;
      g_ptr_array_add (probe->configurations, configuration);
    }

  if (!read_strings (probe, error))
    return FALSE;

  if (probe->configurations->len > 0)
    {
      probe->set_value = ((const guint8 *) g_bytes_get_data (probe->configurations->pdata[0], NULL))[5];
      if (!standard_request (probe, FALSE, PB_USB_REQ_SET_CONFIGURATION, probe->set_value, 0, NULL, 0, NULL, NULL,
                             error))
        {
          g_prefix_error (error, "SET_CONFIGURATION(%u): ", probe->set_value);
          return FALSE;
        }
      probe->configured = TRUE;
    }

  if (!standard_request (probe, TRUE, PB_USB_REQ_GET_CONFIGURATION, 0, 0, &value, 1, &actual, NULL, error))
    {
      g_prefix_error (error, "GET_CONFIGURATION: ");
      return FALSE;
    }
  if (actual != 1)
    {
      g_set_error (error, PB_ERROR, PB_ERROR_PROTOCOL, "GET_CONFIGURATION: %u bytes came back instead of 1", actual);
      return FALSE;
    }
  probe->active_configuration = value;

  /* lsusb -v shows it too; a stall only leaves it out. */
  if (standard_request (probe, TRUE, PB_USB_REQ_GET_STATUS, 0, 0, status, 2, &actual, &stalled, &local_error))
    {
      probe->have_status = actual == 2;
      probe->device_status = status[0] | status[1] << 8;
    }
  else if (!stalled)
    {
      g_propagate_prefixed_error (error, g_steal_pointer (&local_error), "GET_STATUS: ");
      return FALSE;
    }
  return TRUE;
}

/* ---- probe output ---- */

static void
field (GString *out, guint indent, const char *name, const char *value, const char *comment)
{
  g_string_append_printf (out, "%*s%-19s %6s%s%s\n", indent, "", name, value,
                          comment != NULL && comment[0] != '\0' ? " " : "", comment != NULL ? comment : "");
}

static void
field_uint (GString *out, guint indent, const char *name, guint value, const char *comment)
{
  char text[16];

  g_snprintf (text, sizeof text, "%u", value);
  field (out, indent, name, text, comment);
}

static void
field_hex (GString *out, guint indent, const char *name, guint value, guint digits, const char *comment)
{
  char text[16];

  g_snprintf (text, sizeof text, "0x%0*x", digits, value);
  field (out, indent, name, text, comment);
}

static void
field_bcd (GString *out, guint indent, const char *name, guint16 value)
{
  char text[16];

  g_snprintf (text, sizeof text, "%x.%02x", value >> 8, value & 0xff);
  field (out, indent, name, text, NULL);
}

static void
field_string (GString *out, Probe *probe, guint indent, const char *name, guint8 index)
{
  field_uint (out, indent, name, index, index != 0 ? probe->strings[index] : NULL);
}

static void
append_hex (GString *out, guint indent, const guint8 *data, gsize len)
{
  for (gsize i = 0; i < len; i += 16)
    {
      g_string_append_printf (out, "%*s", indent, "");
      for (gsize j = i; j < len && j < i + 16; j++)
        g_string_append_printf (out, j > i ? " %02x" : "%02x", data[j]);
      g_string_append_c (out, '\n');
    }
}

static void
dump_interface (GString *out, Probe *probe, const guint8 *d, guint8 len)
{
  const char *c = class_name (probe->ids, d[5]);
  const char *s = pb_usb_ids_subclass (probe->ids, d[5], d[6]);
  const char *p = pb_usb_ids_protocol (probe->ids, d[5], d[6], d[7]);

  g_string_append (out, "    Interface Descriptor:\n");
  field_uint (out, 6, "bLength", d[0], NULL);
  field_uint (out, 6, "bDescriptorType", d[1], NULL);
  field_uint (out, 6, "bInterfaceNumber", d[2], NULL);
  field_uint (out, 6, "bAlternateSetting", d[3], NULL);
  field_uint (out, 6, "bNumEndpoints", d[4], NULL);
  field_uint (out, 6, "bInterfaceClass", d[5], c);
  field_uint (out, 6, "bInterfaceSubClass", d[6], s);
  field_uint (out, 6, "bInterfaceProtocol", d[7], p);
  field_string (out, probe, 6, "iInterface", d[8]);
  if (len > 9)
    {
      g_string_append_printf (out, "      (%u more bytes)\n", len - 9);
      append_hex (out, 8, d + 9, len - 9);
    }
}

static void
dump_endpoint (GString *out, const guint8 *d, guint8 len)
{
  static const char *const types[] = { "Control", "Isochronous", "Bulk", "Interrupt" };
  static const char *const syncs[] = { "None", "Asynchronous", "Adaptive", "Synchronous" };
  static const char *const usages[] = { "Data", "Feedback", "Implicit feedback Data", "Reserved" };
  guint16 max_packet = d[4] | d[5] << 8;
  char address[32], sizes[32];

  g_snprintf (address, sizeof address, "EP %u %s", d[2] & 0x0f, (d[2] & PB_USB_DIR_IN) ? "IN" : "OUT");
  g_snprintf (sizes, sizeof sizes, "%ux %u bytes", ((max_packet >> 11) & 3) + 1, max_packet & 0x7ff);

  g_string_append (out, "      Endpoint Descriptor:\n");
  field_uint (out, 8, "bLength", d[0], NULL);
  field_uint (out, 8, "bDescriptorType", d[1], NULL);
  field_hex (out, 8, "bEndpointAddress", d[2], 2, address);
  field_uint (out, 8, "bmAttributes", d[3], NULL);
  g_string_append_printf (out, "          Transfer Type            %s\n", types[d[3] & 3]);
  g_string_append_printf (out, "          Synch Type               %s\n", syncs[(d[3] >> 2) & 3]);
  g_string_append_printf (out, "          Usage Type               %s\n", usages[(d[3] >> 4) & 3]);
  field_hex (out, 8, "wMaxPacketSize", max_packet, 4, sizes);
  field_uint (out, 8, "bInterval", d[6], NULL);
  /* Audio 1.0 endpoints carry two more fields. */
  if (len >= 9)
    {
      field_uint (out, 8, "bRefresh", d[7], NULL);
      field_hex (out, 8, "bSynchAddress", d[8], 2, NULL);
    }
  if (len > 9)
    append_hex (out, 8, d + 9, len - 9);
}

static void
dump_association (GString *out, Probe *probe, const guint8 *d)
{
  g_string_append (out, "    Interface Association:\n");
  field_uint (out, 6, "bLength", d[0], NULL);
  field_uint (out, 6, "bDescriptorType", d[1], NULL);
  field_uint (out, 6, "bFirstInterface", d[2], NULL);
  field_uint (out, 6, "bInterfaceCount", d[3], NULL);
  field_uint (out, 6, "bFunctionClass", d[4], class_name (probe->ids, d[4]));
  field_uint (out, 6, "bFunctionSubClass", d[5], pb_usb_ids_subclass (probe->ids, d[4], d[5]));
  field_uint (out, 6, "bFunctionProtocol", d[6], pb_usb_ids_protocol (probe->ids, d[4], d[5], d[6]));
  field_string (out, probe, 6, "iFunction", d[7]);
}

static void
dump_other (GString *out, guint indent, const guint8 *d, guint8 len, guint8 interface_class)
{
  const char *what;

  switch (d[1])
    {
    case PB_USB_DT_HID: what = interface_class == 0x03 ? "HID Descriptor" : "Class-specific Descriptor"; break;
    case PB_USB_DT_CS_INTERFACE: what = "Class-specific Interface Descriptor"; break;
    case 0x25: what = "Class-specific Endpoint Descriptor"; break;
    default: what = "Descriptor"; break;
    }
  g_string_append_printf (out, "%*s%s (type 0x%02x, %u bytes):\n", indent, "", what, d[1], len);
  append_hex (out, indent + 2, d, len);
}

static void
dump_configuration (GString *out, Probe *probe, GBytes *bytes, guint32 speed)
{
  gsize len;
  const guint8 *c = g_bytes_get_data (bytes, &len);
  guint16 total = c[2] | c[3] << 8;
  gsize offset = first_descriptor_offset (c, len);
  /* SuperSpeed counts bMaxPower in 8 mA units, slower speeds in 2 mA. */
  guint power_unit = speed >= PB_USBIP_SPEED_SUPER ? 8 : 2;
  guint8 interface_class = 0;
  guint indent = 4;
  guint8 dlen, type;
  char power[16];

  g_snprintf (power, sizeof power, "%umA", c[8] * power_unit);
  g_string_append (out, "  Configuration Descriptor:\n");
  field_uint (out, 4, "bLength", c[0], NULL);
  field_uint (out, 4, "bDescriptorType", c[1], NULL);
  field_hex (out, 4, "wTotalLength", total, 4, len < total ? "(the device returned fewer bytes)" : NULL);
  field_uint (out, 4, "bNumInterfaces", c[4], NULL);
  field_uint (out, 4, "bConfigurationValue", c[5], NULL);
  field_string (out, probe, 4, "iConfiguration", c[6]);
  field_hex (out, 4, "bmAttributes", c[7], 2, NULL);
  g_string_append_printf (out, "      %s\n", (c[7] & 0x40) ? "Self Powered" : "(Bus Powered)");
  if (c[7] & 0x20)
    g_string_append (out, "      Remote Wakeup\n");
  field (out, 4, "MaxPower", power, NULL);

  for (; next_descriptor (c, len, &offset, &dlen, &type); offset += dlen)
    {
      const guint8 *d = c + offset;

      if (type == PB_USB_DT_INTERFACE && dlen >= 9)
        {
          dump_interface (out, probe, d, dlen);
          interface_class = d[5];
          indent = 6;
        }
      else if (type == PB_USB_DT_ENDPOINT && dlen >= 7)
        {
          dump_endpoint (out, d, dlen);
          indent = 8;
        }
      else if (type == PB_USB_DT_INTERFACE_ASSOCIATION && dlen >= 8)
        dump_association (out, probe, d);
      else
        dump_other (out, indent, d, dlen, interface_class);
    }
  if (offset < len)
    {
      g_string_append_printf (out, "  Malformed descriptor at offset %" G_GSIZE_FORMAT " (%" G_GSIZE_FORMAT
                              " bytes left):\n", offset, len - offset);
      append_hex (out, 4, c + offset, len - offset);
    }
}

static char *
format_probe (Probe *probe, const char *host, guint16 port)
{
  const PbUsbipDeviceRecord *record = pb_remote_device_get_record (probe->device);
  const guint8 *d = probe->device_descriptor;
  guint16 vendor_id = d[8] | d[9] << 8, product_id = d[10] | d[11] << 8;
  const char *vendor = pb_usb_ids_vendor (probe->ids, vendor_id);
  const char *product = pb_usb_ids_product (probe->ids, vendor_id, product_id);
  g_autofree char *busid = printable (record->busid);
  g_autofree char *path = printable (record->path);
  g_autofree char *shown_host = printable (host);
  GString *out = g_string_new (NULL);

  /* Vendor ids of our own virtual devices may be missing from usb.ids: the device's own
   * strings name it then. */
  if (vendor == NULL && probe->string_read[d[14]])
    vendor = probe->strings[d[14]];
  if (product == NULL && probe->string_read[d[15]])
    product = probe->strings[d[15]];

  g_string_append_printf (out, "Device %s on %s port %u, speed %s\n", busid, shown_host, port,
                          pb_usbip_speed_to_string (record->speed));
  g_string_append_printf (out, "Path on the server: %s\n", path);
  g_string_append_printf (out, "Bus %03u Device %03u: ID %04x:%04x %s %s\n", record->busnum, record->devnum,
                          vendor_id, product_id, vendor != NULL ? vendor : "unknown vendor",
                          product != NULL ? product : "unknown product");
  g_string_append (out, "Device Descriptor:\n");
  field_uint (out, 2, "bLength", d[0], NULL);
  field_uint (out, 2, "bDescriptorType", d[1], NULL);
  field_bcd (out, 2, "bcdUSB", d[2] | d[3] << 8);
  field_uint (out, 2, "bDeviceClass", d[4], class_name (probe->ids, d[4]));
  field_uint (out, 2, "bDeviceSubClass", d[5], pb_usb_ids_subclass (probe->ids, d[4], d[5]));
  field_uint (out, 2, "bDeviceProtocol", d[6], pb_usb_ids_protocol (probe->ids, d[4], d[5], d[6]));
  field_uint (out, 2, "bMaxPacketSize0", d[7], NULL);
  field_hex (out, 2, "idVendor", vendor_id, 4, pb_usb_ids_vendor (probe->ids, vendor_id));
  field_hex (out, 2, "idProduct", product_id, 4, pb_usb_ids_product (probe->ids, vendor_id, product_id));
  field_bcd (out, 2, "bcdDevice", d[12] | d[13] << 8);
  field_string (out, probe, 2, "iManufacturer", d[14]);
  field_string (out, probe, 2, "iProduct", d[15]);
  field_string (out, probe, 2, "iSerial", d[16]);
  field_uint (out, 2, "bNumConfigurations", d[17], NULL);
  if (probe->language != 0)
    g_string_append_printf (out, "  (strings in language 0x%04x)\n", probe->language);

  for (guint i = 0; i < probe->configurations->len; i++)
    dump_configuration (out, probe, probe->configurations->pdata[i], record->speed);

  if (probe->configured)
    g_string_append_printf (out, "SET_CONFIGURATION %u: done\n", probe->set_value);
  g_string_append_printf (out, "Active configuration: %u\n", probe->active_configuration);
  if (probe->have_status)
    {
      g_string_append_printf (out, "Device Status:     0x%04x\n", probe->device_status);
      g_string_append_printf (out, "  %s\n", (probe->device_status & 1) ? "Self Powered" : "(Bus Powered)");
      if (probe->device_status & 2)
        g_string_append (out, "  Remote Wakeup Enabled\n");
    }
  return g_string_free (out, FALSE);
}

int
pb_cli_probe (int argc, char **argv)
{
  g_autofree char *host = NULL;
  g_autofree char *busid = NULL;
  gint port = PB_USBIP_DEFAULT_PORT;
  g_autoptr(GError) error = NULL;
  g_autoptr(GOptionContext) context = NULL;
  g_autofree char *text = NULL;
  g_autoptr(GSocketConnection) connection = NULL;
  PbUsbipDeviceRecord record;
  Probe probe = { 0 };
  GOptionEntry entries[] = {
    { "remote", 'r', 0, G_OPTION_ARG_STRING, &host, "The USB/IP server (name or address)", "HOST" },
    { "port", 'p', 0, G_OPTION_ARG_INT, &port, "Its TCP port (default 3240)", "N" },
    { "busid", 'b', 0, G_OPTION_ARG_STRING, &busid, "Bus ID of the device to probe (see plugboard list)", "BUSID" },
    { NULL }
  };

  context = g_option_context_new ("— import a device and enumerate it from userspace");
  g_option_context_add_main_entries (context, entries, NULL);
  g_option_context_set_description (context,
    "Imports the device (OP_REQ_IMPORT) and enumerates it itself over the USB/IP\n"
    "connection, with no kernel driver and no root: reads the device and configuration\n"
    "descriptors and the manufacturer, product and serial strings, selects the first\n"
    "configuration (SET_CONFIGURATION) and reads it back (GET_CONFIGURATION). Prints an\n"
    "lsusb -v style dump: device fields, each configuration, interface (class names from\n"
    "usb.ids) and endpoint; class-specific descriptors in hex. Each request times out\n"
    "after 5 seconds. The device is released when probe exits.\n\n"
    "Useful to check that a server and its device answer before attaching it for real.\n\n"
    "Examples:\n"
    "  plugboard probe -r 192.168.1.20 -b 1-1.4\n"
    "  plugboard probe -r localhost --port 3241 -b 100-1\n\n"
    "Exit status: 0 enumerated, 1 the device failed, 2 bad command line, 3 server\n"
    "unreachable or a request timed out, 4 no such bus ID, 5 device busy, 6 protocol error.");
  if (!g_option_context_parse (context, &argc, &argv, &error))
    {
      fprintf (stderr, "plugboard probe: %s\n", error->message);
      return PB_EXIT_USAGE;
    }
  if (argc > 1)
    {
      fprintf (stderr, "plugboard probe: unexpected argument “%s”\n", argv[1]);
      return PB_EXIT_USAGE;
    }
  if (host == NULL || host[0] == '\0')
    {
      fprintf (stderr, "plugboard probe: which server? Give -r HOST (see --help)\n");
      return PB_EXIT_USAGE;
    }
  if (busid == NULL || busid[0] == '\0')
    {
      fprintf (stderr, "plugboard probe: which device? Give -b BUSID (plugboard list -r %s shows them)\n", host);
      return PB_EXIT_USAGE;
    }
  if (!parse_port ("probe", port))
    return PB_EXIT_USAGE;

  /* Connect and import apart (what pb_remote_import() does in one), so that an unknown host
   * and an unknown bus ID get their own exit codes. */
  connection = pb_remote_connect (host, (guint16) port, NULL, &error);
  if (connection == NULL)
    {
      fprintf (stderr, "plugboard probe: %s\n", error->message);
      return pb_cli_exit_code_for_error (error);
    }
  if (!pb_remote_import_on (connection, busid, &record, NULL, &error))
    {
      g_autofree char *shown_host = printable (host);
      g_io_stream_close (G_IO_STREAM (connection), NULL, NULL);
      fprintf (stderr, "plugboard probe: %s: %s\n", shown_host, error->message);
      return pb_cli_exit_code_for_error (error);
    }
  probe.device = pb_remote_device_new (connection, &record);
  probe.ids = pb_usb_ids_load_default ();

  if (!run_probe (&probe, &error))
    {
      g_autofree char *shown_busid = printable (busid);
      fprintf (stderr, "plugboard probe: %s: %s\n", shown_busid, error->message);
      probe_clear (&probe);
      return pb_cli_exit_code_for_error (error);
    }
  text = format_probe (&probe, host, (guint16) port);
  fputs (text, stdout);
  probe_clear (&probe);
  return PB_EXIT_OK;
}
