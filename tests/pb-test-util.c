#include "pb-test-util.h"

#include <glib/gstdio.h>

const char *
pb_test_plugboard_path (void)
{
  const char *path = g_getenv ("PB_PLUGBOARD_BIN");
  g_assert_nonnull (path);
  return path;
}

char *
pb_test_make_scratch_dir (void)
{
  g_autoptr(GError) error = NULL;
  char *dir = g_dir_make_tmp ("plugboard-test-XXXXXX", &error);
  g_assert_no_error (error);
  return dir;
}

void
pb_test_remove_tree (const char *path)
{
  g_autoptr(GDir) dir = g_dir_open (path, 0, NULL);
  const char *name;
  if (dir != NULL)
    while ((name = g_dir_read_name (dir)) != NULL)
      {
        g_autofree char *child = g_build_filename (path, name, NULL);
        if (g_file_test (child, G_FILE_TEST_IS_DIR) && !g_file_test (child, G_FILE_TEST_IS_SYMLINK))
          pb_test_remove_tree (child);
        else
          g_unlink (child);
      }
  g_rmdir (path);
}
