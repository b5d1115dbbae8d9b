/* PbKeyboard: a HID boot keyboard (US layout) built on the public PbVirtualDevice API. */
#pragma once

#include "pb-virtual-device.h"

G_BEGIN_DECLS

#define PB_TYPE_KEYBOARD (pb_keyboard_get_type ())
G_DECLARE_FINAL_TYPE (PbKeyboard, pb_keyboard, PB, KEYBOARD, GObject)

/* LED bits of the output report (HID usage page 0x08, boot protocol order). */
#define PB_KEYBOARD_LED_NUM_LOCK 0x01
#define PB_KEYBOARD_LED_CAPS_LOCK 0x02
#define PB_KEYBOARD_LED_SCROLL_LOCK 0x04

PbKeyboard *pb_keyboard_new (void);
PbVirtualDevice *pb_keyboard_get_device (PbKeyboard *self);
/* Queues a key press and a release for each character (printable ASCII, '\n', '\t'). Fails with
 * PB_ERROR_INVALID_ARGUMENT, queuing nothing, on a character the US layout cannot type. The
 * reports go out as the host polls the interrupt IN endpoint. */
gboolean pb_keyboard_type_string (PbKeyboard *self, const char *text, GError **error);
/* Reports queued and not yet taken by the host. */
guint pb_keyboard_get_pending_reports (PbKeyboard *self);
/* Last LED state the host set (PB_KEYBOARD_LED_*). Emits "leds-changed" on change. */
guint8 pb_keyboard_get_leds (PbKeyboard *self);

G_END_DECLS
