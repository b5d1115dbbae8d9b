/* The embedded default disk: a small FAT-formatted image made in memory, so `plugboard serve`
 * has something to serve with no arguments. */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

#define PB_DEFAULT_IMAGE_SIZE (16u * 1024u * 1024u)

/* Returns a read-write fd (memfd) holding a FAT16 file system of PB_DEFAULT_IMAGE_SIZE bytes,
 * volume label PLUGBOARD, with one file README.TXT saying what it is. -1 and error on failure. */
int pb_default_image_create (GError **error);
/* The text of README.TXT in the default image (tests compare it). */
const char *pb_default_image_readme_text (void);

G_END_DECLS
