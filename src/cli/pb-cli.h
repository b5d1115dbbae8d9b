/* The `plugboard` command line: one function per verb, dispatched from plugboard.c. */
#pragma once

#include <glib.h>

#include "pb-keyboard.h"
#include "pb-virtual-device.h"

G_BEGIN_DECLS

/* Exit codes, documented in `plugboard --help` and README. */
typedef enum {
  PB_EXIT_OK = 0,
  PB_EXIT_FAILURE = 1,      /* anything else */
  PB_EXIT_USAGE = 2,        /* bad command line */
  PB_EXIT_UNREACHABLE = 3,  /* connection refused, unknown host, timeout */
  PB_EXIT_NOT_FOUND = 4,    /* no such bus ID */
  PB_EXIT_BUSY = 5,         /* device in use */
  PB_EXIT_PROTOCOL = 6,     /* protocol version mismatch or malformed reply */
} PbExitCode;

/* A built-in virtual device from its spec (msc[:IMAGE[,ro]], keyboard, serial[:pty]). Returns
 * the owning object (PbMassStorage, PbKeyboard or PbSerial; the caller keeps it alive while the
 * device is served), its device and a one-line description. */
GObject *pb_cli_make_virtual_device (const char *spec, PbVirtualDevice **device, char **description, GError **error);

/* --type: the keyboard types text PB_CLI_TYPE_DELAY_MS after the import, once the host's HID
 * driver can take reports (see pb-cli-devices.c). */
#define PB_CLI_TYPE_DELAY_MS 2000
void pb_cli_type_later (PbKeyboard *keyboard, const char *text);

/* --type-stdin: the keyboard types whatever arrives on standard input, as it arrives, until EOF.
 * Scripts (and the QEMU suite) use it to type once they know the host's driver is ready. */
void pb_cli_type_from_stdin (PbKeyboard *keyboard);

/* Maps an error from the library to an exit code. */
int pb_cli_exit_code_for_error (const GError *error);

int pb_cli_serve (int argc, char **argv);
int pb_cli_list (int argc, char **argv);
int pb_cli_probe (int argc, char **argv);
int pb_cli_attach (int argc, char **argv);
int pb_cli_detach (int argc, char **argv);
int pb_cli_port (int argc, char **argv);
int pb_cli_virtual (int argc, char **argv);

G_END_DECLS
