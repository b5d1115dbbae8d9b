/* PbUsbIds: a one-pass reader of the usb.ids name database. */
#define G_LOG_DOMAIN "plugboard"

#include <errno.h>
#include <string.h>

#include "pb-config.h"
#include "pb-error.h"
#include "pb-usb-ids.h"

struct _PbUsbIds {
  GStringChunk *names;   /* every name, NUL-terminated; the tables point into it */
  GHashTable *vendors;   /* vid → name */
  GHashTable *products;  /* vid << 16 | pid → name */
  GHashTable *classes;   /* tagged key (see class_key) → name */
};

/* Classes, subclasses and protocols share one table; the tag in the top byte keeps
 * "class 03" apart from "subclass 00/03". */
enum { TAG_CLASS = 1, TAG_SUBCLASS = 2, TAG_PROTOCOL = 3 };

static inline gpointer
class_key (guint tag, guint8 class_code, guint8 subclass, guint8 protocol)
{
  return GUINT_TO_POINTER (tag << 24 | (guint) class_code << 16 | (guint) subclass << 8 | protocol);
}

typedef enum {
  SECTION_NONE,    /* before the first entry, or a section we do not read (AT, HID, HUT, L, …) */
  SECTION_VENDOR,
  SECTION_CLASS,
} Section;

/* Exactly n hex digits at p (and p has at least n bytes); -1 otherwise. */
static gint
parse_hex (const char *p, gsize n)
{
  gint value = 0;

  for (gsize i = 0; i < n; i++)
    {
      gint digit = g_ascii_xdigit_value (p[i]);
      if (digit < 0)
        return -1;
      value = value << 4 | digit;
    }
  return value;
}

/* Parses "HEX<blanks>NAME" at the start of line: the code and the name (trailing blanks and a
 * CR dropped). FALSE when the code is malformed, not followed by a blank, or the name is empty. */
static gboolean
parse_entry (const char *line, gsize len, gsize n_digits, gint *code, const char **name, gsize *name_len)
{
  gsize start = n_digits, end = len;

  if (len <= n_digits || (line[n_digits] != ' ' && line[n_digits] != '\t'))
    return FALSE;
  *code = parse_hex (line, n_digits);
  if (*code < 0)
    return FALSE;
  while (start < len && (line[start] == ' ' || line[start] == '\t'))
    start++;
  while (end > start && g_ascii_isspace (line[end - 1]))
    end--;
  if (end == start)
    return FALSE;
  *name = line + start;
  *name_len = end - start;
  return TRUE;
}

/* Keeps the first name given for a key, as lsusb does. */
static void
add_name (PbUsbIds *ids, GHashTable *table, gpointer key, const char *name, gsize name_len)
{
  const char *stored;

  if (g_hash_table_contains (table, key))
    return;
  if (G_LIKELY (g_utf8_validate_len (name, name_len, NULL)))
    stored = g_string_chunk_insert_len (ids->names, name, name_len);
  else
    {
      /* Old copies of the file were Latin-1 in places; never hand out invalid UTF-8. */
      g_autofree char *valid = g_utf8_make_valid (name, name_len);
      stored = g_string_chunk_insert (ids->names, valid);
    }
  g_hash_table_insert (table, key, (gpointer) stored);
}

static void
parse_contents (PbUsbIds *ids, const char *contents, gsize length)
{
  Section section = SECTION_NONE;
  gint vendor = -1, class_code = -1, subclass = -1;
  const char *p, *end;

  /* An empty mapping has no address at all: no arithmetic on it. */
  if (contents == NULL || length == 0)
    return;
  p = contents;
  end = contents + length;

  while (p < end)
    {
      const char *newline = memchr (p, '\n', end - p);
      const char *line = p;
      gsize len = (newline != NULL ? newline : end) - p;
      const char *name;
      gsize name_len;
      gint code;

      p = newline != NULL ? newline + 1 : end;
      if (len == 0 || line[0] == '#')
        continue;

      if (line[0] != '\t')
        {
          /* A top-level line starts a vendor, a class, or a section we skip. */
          vendor = class_code = subclass = -1;
          if (parse_entry (line, len, 4, &code, &name, &name_len))
            {
              section = SECTION_VENDOR;
              vendor = code;
              add_name (ids, ids->vendors, GUINT_TO_POINTER (vendor), name, name_len);
            }
          else if (len > 2 && line[0] == 'C' && line[1] == ' ' &&
                   parse_entry (line + 2, len - 2, 2, &code, &name, &name_len))
            {
              section = SECTION_CLASS;
              class_code = code;
              add_name (ids, ids->classes, class_key (TAG_CLASS, class_code, 0, 0), name, name_len);
            }
          else
            section = SECTION_NONE;
          continue;
        }

      if (len >= 2 && line[1] == '\t')
        {
          /* Third level: protocols of a subclass. Interfaces under a product are not kept. */
          if (section == SECTION_CLASS && subclass >= 0 &&
              parse_entry (line + 2, len - 2, 2, &code, &name, &name_len))
            add_name (ids, ids->classes, class_key (TAG_PROTOCOL, class_code, subclass, code), name, name_len);
          continue;
        }

      if (section == SECTION_VENDOR && parse_entry (line + 1, len - 1, 4, &code, &name, &name_len))
        add_name (ids, ids->products, GUINT_TO_POINTER ((guint) vendor << 16 | (guint) code), name, name_len);
      else if (section == SECTION_CLASS && parse_entry (line + 1, len - 1, 2, &code, &name, &name_len))
        {
          subclass = code;
          add_name (ids, ids->classes, class_key (TAG_SUBCLASS, class_code, subclass, 0), name, name_len);
        }
      else if (section == SECTION_CLASS)
        subclass = -1; /* a malformed subclass line: do not file its protocols under the previous one */
    }
}

PbUsbIds *
pb_usb_ids_load (const char *path, GError **error)
{
  g_autoptr(GError) local_error = NULL;
  g_autoptr(GMappedFile) file = NULL;
  g_autoptr(PbUsbIds) ids = NULL;

  g_return_val_if_fail (path != NULL, NULL);
  g_return_val_if_fail (error == NULL || *error == NULL, NULL);

  file = g_mapped_file_new (path, FALSE, &local_error);
  if (file == NULL)
    {
      g_set_error (error, PB_ERROR,
                   g_error_matches (local_error, G_FILE_ERROR, G_FILE_ERROR_NOENT) ? PB_ERROR_NOT_FOUND
                                                                                  : PB_ERROR_FAILED,
                   "cannot read %s: %s", path, local_error->message);
      return NULL;
    }

  ids = g_new0 (PbUsbIds, 1);
  /* The names of a current file take about 600 KiB. */
  ids->names = g_string_chunk_new (64 * 1024);
  ids->vendors = g_hash_table_new (g_direct_hash, g_direct_equal);
  ids->products = g_hash_table_new (g_direct_hash, g_direct_equal);
  ids->classes = g_hash_table_new (g_direct_hash, g_direct_equal);

  parse_contents (ids, g_mapped_file_get_contents (file), g_mapped_file_get_length (file));

  if (g_hash_table_size (ids->vendors) == 0 && g_hash_table_size (ids->classes) == 0)
    {
      g_set_error (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT, "%s holds no USB vendor or class names", path);
      return NULL;
    }
  g_debug ("usb.ids %s: %u vendors, %u products, %u class names", path, g_hash_table_size (ids->vendors),
           g_hash_table_size (ids->products), g_hash_table_size (ids->classes));
  return g_steal_pointer (&ids);
}

PbUsbIds *
pb_usb_ids_load_default (void)
{
  g_auto(GStrv) paths = g_strsplit (PB_USB_IDS_PATHS, ":", -1);

  for (guint i = 0; paths[i] != NULL; i++)
    {
      g_autoptr(GError) error = NULL;
      PbUsbIds *ids;

      if (paths[i][0] == '\0')
        continue;
      ids = pb_usb_ids_load (paths[i], &error);
      if (ids != NULL)
        return ids;
      g_debug ("usb.ids: %s", error->message);
    }
  return NULL;
}

void
pb_usb_ids_free (PbUsbIds *ids)
{
  if (ids == NULL)
    return;
  g_clear_pointer (&ids->vendors, g_hash_table_unref);
  g_clear_pointer (&ids->products, g_hash_table_unref);
  g_clear_pointer (&ids->classes, g_hash_table_unref);
  g_clear_pointer (&ids->names, g_string_chunk_free);
  g_free (ids);
}

const char *
pb_usb_ids_vendor (const PbUsbIds *ids, guint16 vendor_id)
{
  if (ids == NULL)
    return NULL;
  return g_hash_table_lookup (ids->vendors, GUINT_TO_POINTER (vendor_id));
}

const char *
pb_usb_ids_product (const PbUsbIds *ids, guint16 vendor_id, guint16 product_id)
{
  if (ids == NULL)
    return NULL;
  return g_hash_table_lookup (ids->products, GUINT_TO_POINTER ((guint) vendor_id << 16 | product_id));
}

const char *
pb_usb_ids_class (const PbUsbIds *ids, guint8 class_code)
{
  if (ids == NULL)
    return NULL;
  return g_hash_table_lookup (ids->classes, class_key (TAG_CLASS, class_code, 0, 0));
}

const char *
pb_usb_ids_subclass (const PbUsbIds *ids, guint8 class_code, guint8 subclass)
{
  if (ids == NULL)
    return NULL;
  return g_hash_table_lookup (ids->classes, class_key (TAG_SUBCLASS, class_code, subclass, 0));
}

const char *
pb_usb_ids_protocol (const PbUsbIds *ids, guint8 class_code, guint8 subclass, guint8 protocol)
{
  if (ids == NULL)
    return NULL;
  return g_hash_table_lookup (ids->classes, class_key (TAG_PROTOCOL, class_code, subclass, protocol));
}
