/* libFuzzer target for the mass storage parsers: CBW decoding and SCSI command decoding as pure
 * functions, then the whole BOT state machine of PbMassStorage driven by a script read from the
 * input (OUT/IN transfers, resets, clear-halts) over a small in-memory image. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "pb-mass-storage.h"
#include "pb-scsi.h"

#define IMAGE_BLOCKS 64

static int image_fd = -1;
static GQueue completed = G_QUEUE_INIT;
static GQueue held = G_QUEUE_INIT;

static void
on_complete (PbUrb *urb, gpointer user_data)
{
  g_queue_remove (&held, urb);
  g_queue_push_tail (&completed, urb);
}

static void
drain_completed (void)
{
  PbUrb *urb;
  while ((urb = g_queue_pop_head (&completed)) != NULL)
    {
      if (urb->actual_length > urb->length)
        abort ();
      g_free (urb->buffer);
      g_free (urb);
    }
}

static PbUrb *
new_urb (PbDevice *device, guint ep, PbUsbipDirection direction, guint32 length)
{
  PbUrb *urb = g_new0 (PbUrb, 1);
  urb->ep = ep;
  urb->direction = direction;
  urb->type = pb_device_get_endpoint_type (device, ep, direction);
  urb->length = length;
  urb->buffer = g_malloc0 (MAX (length, 1));
  urb->complete_func = on_complete;
  urb->complete_data = NULL;
  g_queue_push_tail (&held, urb);
  return urb;
}

static void
check_prepare (const uint8_t *data, size_t size)
{
  PbScsiDisk disk = { .block_count = IMAGE_BLOCKS };
  PbScsiCommand command;
  PbBotCbw cbw;

  pb_scsi_disk_prepare (&disk, data, MIN (size, 16), &command);
  if (command.ok && command.direction == PB_SCSI_DATA_IN && !command.media_io &&
      command.length > PB_SCSI_RESPONSE_MAX)
    abort ();
  if (command.media_io && command.offset + command.length > (guint64) IMAGE_BLOCKS * PB_SCSI_BLOCK_SIZE)
    abort ();
  if (pb_bot_cbw_parse (data, size, &cbw) && (cbw.cdb_length < 1 || cbw.cdb_length > 16 || cbw.lun != 0))
    abort ();
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  g_autoptr(PbMassStorage) storage = NULL;
  PbDevice *device;
  gsize pos = 0;

  if (image_fd < 0)
    {
      image_fd = memfd_create ("fuzz-image", MFD_CLOEXEC);
      if (image_fd < 0 || ftruncate (image_fd, IMAGE_BLOCKS * PB_SCSI_BLOCK_SIZE) < 0)
        abort ();
    }
  check_prepare (data, size);

  storage = pb_mass_storage_new (image_fd, FALSE, NULL);
  if (storage == NULL)
    abort ();
  device = PB_DEVICE (pb_mass_storage_get_device (storage));
  if (!pb_device_open (device, NULL))
    abort ();
  {
    PbUrb *urb = new_urb (device, 0, PB_USBIP_DIR_OUT, 0);
    static const guint8 set_configuration[8] = { 0x00, 0x09, 1, 0, 0, 0, 0, 0 };
    memcpy (urb->setup, set_configuration, 8);
    pb_device_submit (device, urb);
  }

  /* Script: op byte, then its operands. */
  while (pos < size)
    {
      guint8 op = data[pos++] % 5;
      PbUrb *urb;

      switch (op)
        {
        case 0: /* OUT transfer of the next n bytes (n in one byte, 31 by default) */
          {
            gsize n = pos < size ? data[pos++] : 31;
            n = MIN (n, size - pos);
            urb = new_urb (device, 2, PB_USBIP_DIR_OUT, (guint32) n);
            memcpy (urb->buffer, data + pos, n);
            pos += n;
            pb_device_submit (device, urb);
            break;
          }
        case 1: /* IN transfer, length from two bytes (up to 64 KiB) */
          {
            guint32 n = 13;
            if (pos + 1 < size)
              n = data[pos] | (data[pos + 1] << 8);
            pos += 2;
            urb = new_urb (device, 1, PB_USBIP_DIR_IN, n);
            pb_device_submit (device, urb);
            break;
          }
        case 2: /* Bulk-Only Mass Storage Reset */
        case 3: /* CLEAR_FEATURE(ENDPOINT_HALT) on IN or OUT */
          {
            urb = new_urb (device, 0, PB_USBIP_DIR_OUT, 0);
            if (op == 2)
              memcpy (urb->setup, (guint8[8]) { 0x21, 0xff, 0, 0, 0, 0, 0, 0 }, 8);
            else
              memcpy (urb->setup, (guint8[8]) { 0x02, 0x01, 0, 0, (pos < size && (data[pos++] & 1)) ? 0x81 : 0x02, 0, 0, 0 }, 8);
            pb_device_submit (device, urb);
            break;
          }
        case 4: /* cancel the oldest held URB */
          urb = g_queue_peek_head (&held);
          if (urb != NULL)
            {
              urb->cancelled = TRUE;
              pb_device_cancel (device, urb);
            }
          break;
        }
      drain_completed ();
    }

  /* Teardown as a session does it: cancel everything still held, then close. */
  while (held.length > 0)
    {
      PbUrb *urb = g_queue_peek_head (&held);
      guint before = held.length;
      urb->cancelled = TRUE;
      pb_device_cancel (device, urb);
      if (held.length == before)
        abort (); /* a held URB that cancel does not finish would hang a session */
    }
  drain_completed ();
  pb_device_close (device);
  return 0;
}
