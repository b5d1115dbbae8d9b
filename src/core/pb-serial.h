/* PbSerial: a CDC-ACM serial port built on the public PbVirtualDevice API. Data from the host
 * goes to a pseudo-terminal on the serving side (a local program opens the pty's path), and what
 * the program writes there goes to the host; in echo mode the host's data comes back to it. */
#pragma once

#include "pb-virtual-device.h"

G_BEGIN_DECLS

#define PB_TYPE_SERIAL (pb_serial_get_type ())
G_DECLARE_FINAL_TYPE (PbSerial, pb_serial, PB, SERIAL, GObject)

typedef enum {
  PB_SERIAL_MODE_ECHO,
  PB_SERIAL_MODE_PTY,
} PbSerialMode;

PbSerial *pb_serial_new (PbSerialMode mode, GError **error);
PbVirtualDevice *pb_serial_get_device (PbSerial *self);
/* Path of the pty's slave side (/dev/pts/N) in PTY mode, NULL in echo mode. */
const char *pb_serial_get_pty_path (PbSerial *self);
/* Line coding the host set last (SET_LINE_CODING): bits per second, stop bits (0: 1, 1: 1.5,
 * 2: 2), parity (0 none, 1 odd, 2 even, 3 mark, 4 space), data bits. */
void pb_serial_get_line_coding (PbSerial *self, guint32 *rate, guint8 *stop_bits, guint8 *parity, guint8 *data_bits);
/* Control line state (SET_CONTROL_LINE_STATE): bit 0 DTR, bit 1 RTS. */
guint16 pb_serial_get_control_lines (PbSerial *self);

G_END_DECLS
