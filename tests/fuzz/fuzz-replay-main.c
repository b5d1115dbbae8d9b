/* Replays a libFuzzer corpus without libFuzzer: every file in the given folders (or the files
 * given) goes once through LLVMFuzzerTestOneInput. Lets the normal and ASan suites run the seeds. */
#include <glib.h>
#include <stdint.h>
#include <stdio.h>

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

static int
replay_path (const char *path)
{
  if (g_file_test (path, G_FILE_TEST_IS_DIR))
    {
      g_autoptr(GDir) dir = g_dir_open (path, 0, NULL);
      const char *name;
      int count = 0;
      if (dir == NULL)
        return -1;
      while ((name = g_dir_read_name (dir)) != NULL)
        {
          g_autofree char *child = g_build_filename (path, name, NULL);
          int n = replay_path (child);
          if (n < 0)
            return -1;
          count += n;
        }
      return count;
    }
  g_autofree char *contents = NULL;
  gsize len = 0;
  if (!g_file_get_contents (path, &contents, &len, NULL))
    return -1;
  LLVMFuzzerTestOneInput ((const uint8_t *) contents, len);
  return 1;
}

int
main (int argc, char **argv)
{
  int total = 0;
  for (int i = 1; i < argc; i++)
    {
      int n = replay_path (argv[i]);
      if (n < 0)
        {
          fprintf (stderr, "cannot read %s\n", argv[i]);
          return 1;
        }
      total += n;
    }
  if (total == 0)
    {
      fprintf (stderr, "no corpus files replayed\n");
      return 1;
    }
  printf ("replayed %d inputs\n", total);
  return 0;
}
