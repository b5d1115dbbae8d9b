#define G_LOG_DOMAIN "plugboard"

#include <locale.h>
#include <stdio.h>
#include <string.h>

#include "pb-cli.h"
#include "pb-config.h"
#include "pb-error.h"

typedef struct {
  const char *name;
  int (*run) (int argc, char **argv);
  const char *summary;
} Verb;

static const Verb verbs[] = {
  { "serve", pb_cli_serve, "Run a USB/IP server with virtual devices (no root needed)" },
  { "list", pb_cli_list, "List the devices a USB/IP server exports (-r HOST)" },
  { "probe", pb_cli_probe, "Import a device and enumerate it from userspace" },
  { "attach", pb_cli_attach, "Attach a remote device through the kernel's vhci-hcd (root)" },
  { "detach", pb_cli_detach, "Detach a vhci-hcd port (root)" },
  { "port", pb_cli_port, "List the vhci-hcd ports in use and where they point" },
  { "virtual", pb_cli_virtual, "Attach virtual devices locally over a socketpair, no network (root)" },
};

static void
print_usage (FILE *out)
{
  fprintf (out, "Usage: plugboard VERB [OPTIONS…]\n\nShare USB devices over the network with USB/IP.\n\nVerbs:\n");
  for (gsize i = 0; i < G_N_ELEMENTS (verbs); i++)
    fprintf (out, "  %-8s %s\n", verbs[i].name, verbs[i].summary);
  fprintf (out,
           "\n`plugboard VERB --help` describes each verb.\n\n"
           "Exit status:\n"
           "  0  success\n"
           "  1  failure\n"
           "  2  bad command line\n"
           "  3  server unreachable (connection refused, unknown host, timeout)\n"
           "  4  no such bus ID\n"
           "  5  device busy (imported by another client)\n"
           "  6  protocol error (version mismatch, malformed reply)\n");
}

int
pb_cli_exit_code_for_error (const GError *error)
{
  if (error == NULL || error->domain != PB_ERROR)
    return PB_EXIT_FAILURE;
  switch ((PbError) error->code)
    {
    case PB_ERROR_REFUSED:
    case PB_ERROR_UNREACHABLE:
    case PB_ERROR_TIMED_OUT:
      return PB_EXIT_UNREACHABLE;
    case PB_ERROR_NOT_FOUND:
      return PB_EXIT_NOT_FOUND;
    case PB_ERROR_BUSY:
      return PB_EXIT_BUSY;
    case PB_ERROR_PROTOCOL:
    case PB_ERROR_VERSION_MISMATCH:
    case PB_ERROR_TOO_LARGE:
      return PB_EXIT_PROTOCOL;
    case PB_ERROR_INVALID_ARGUMENT:
      return PB_EXIT_USAGE;
    default:
      return PB_EXIT_FAILURE;
    }
}

int
main (int argc, char **argv)
{
  setlocale (LC_ALL, "");

  if (argc < 2)
    {
      print_usage (stderr);
      return PB_EXIT_USAGE;
    }
  if (strcmp (argv[1], "--help") == 0 || strcmp (argv[1], "-h") == 0 || strcmp (argv[1], "help") == 0)
    {
      print_usage (stdout);
      return PB_EXIT_OK;
    }
  if (strcmp (argv[1], "--version") == 0)
    {
      printf ("plugboard %s\n", PB_VERSION);
      return PB_EXIT_OK;
    }
  for (gsize i = 0; i < G_N_ELEMENTS (verbs); i++)
    if (strcmp (argv[1], verbs[i].name) == 0)
      {
        /* The verb sees itself as argv[0], so its GOptionContext prints "plugboard VERB". */
        g_autofree char *prgname = g_strdup_printf ("plugboard %s", verbs[i].name);
        g_set_prgname (prgname);
        return verbs[i].run (argc - 1, argv + 1);
      }
  fprintf (stderr, "plugboard: unknown verb “%s”\n\n", argv[1]);
  print_usage (stderr);
  return PB_EXIT_USAGE;
}
