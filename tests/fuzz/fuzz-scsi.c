/* libFuzzer target for mass storage: CBW and SCSI decoding as pure functions (with the
 * invariants the transport relies on), then the whole BOT state machine of PbMassStorage driven
 * by a script read from the input (OUT/IN transfers, CBWs, resets, clear-halts, cancels,
 * reconfiguration, a new client) over a small in-memory image created once.
 *
 * Script: one op byte (op % 10), then its operands; a missing operand reads as a default. The
 * first byte's top bit also makes the disk read-only.
 *
 * Media I/O runs on the device's worker thread. To stay deterministic the worker waits at the
 * test gate (pb-mass-storage-private.h) while an op runs, and after each op every I/O finishes
 * and its result is dispatched before the next op; an op byte of 200 or more leaves the I/O it
 * started pending instead, so that the next ops (cancel, resets, a new client) meet it in
 * flight, as they meet a stalled disk. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "pb-mass-storage.h"
#include "pb-mass-storage-private.h"
#include "pb-scsi.h"

#define IMAGE_BLOCKS 64
#define IMAGE_SIZE (IMAGE_BLOCKS * PB_SCSI_BLOCK_SIZE)

static int image_fd = -1;
static GQueue completed = G_QUEUE_INIT;
static GQueue outstanding = G_QUEUE_INIT; /* submitted, not yet completed */

static void
on_complete (PbUrb *urb, gpointer user_data)
{
  if (urb->actual_length > urb->length || !g_queue_remove (&outstanding, urb))
    abort (); /* completed twice, or with more data than asked for */
  g_queue_push_tail (&completed, urb);
}

static void
drain_completed (void)
{
  PbUrb *urb;
  while ((urb = g_queue_pop_head (&completed)) != NULL)
    {
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
  g_queue_push_tail (&outstanding, urb);
  return urb;
}

static void
control (PbDevice *device, guint8 type, guint8 request, guint16 value, guint16 index, guint16 length)
{
  PbUrb *urb = new_urb (device, 0, (type & 0x80) ? PB_USBIP_DIR_IN : PB_USBIP_DIR_OUT, length);
  guint8 setup[8] = { type, request, value & 0xff, value >> 8, index & 0xff, index >> 8, length & 0xff, length >> 8 };

  memcpy (urb->setup, setup, 8);
  pb_device_submit (device, urb);
}

/* What pb_scsi_disk_prepare() promises the transport, checked on any CDB. */
static void
check_prepare (const uint8_t *data, size_t size, gboolean read_only)
{
  PbScsiDisk disk = { .block_count = IMAGE_BLOCKS, .read_only = read_only, .serial = "0123456789ABCDEF" };
  PbScsiCommand command;
  PbBotCbw cbw;

  pb_scsi_disk_power_on (&disk);
  for (gsize pos = 0; pos < size; pos += 16)
    {
      pb_scsi_disk_prepare (&disk, data + pos, MIN (size - pos, 16), &command);
      if ((command.direction == PB_SCSI_DATA_NONE) != (command.length == 0))
        abort ();
      if (!command.ok && (command.direction != PB_SCSI_DATA_NONE || command.sync || disk.sense_key == 0))
        abort ();
      if (command.media_io &&
          (command.offset % PB_SCSI_BLOCK_SIZE != 0 || command.length % PB_SCSI_BLOCK_SIZE != 0 ||
           command.offset > IMAGE_SIZE || command.length > IMAGE_SIZE - command.offset))
        abort ();
      if (!command.media_io && command.length > PB_SCSI_RESPONSE_MAX)
        abort ();
      if (command.direction == PB_SCSI_DATA_OUT && (!command.media_io || read_only))
        abort ();
    }

  if (pb_bot_cbw_parse (data, size, &cbw) && (size != PB_BOT_CBW_SIZE || cbw.cdb_length < 1 || cbw.cdb_length > 16 ||
                                              cbw.lun != 0))
    abort ();
}

/* Opens the gate, lets every pending I/O finish and delivers its result on the main context,
 * where the device lives (nothing else runs there). The next op closes the gate again. */
static void
settle_io (void)
{
  pb_mass_storage_set_io_gate (FALSE);
  while (pb_mass_storage_get_io_count () > 0)
    g_main_context_iteration (NULL, TRUE);
  while (g_main_context_iteration (NULL, FALSE))
    ;
}

static guint8
next_byte (const uint8_t *data, size_t size, gsize *pos, guint8 fallback)
{
  return *pos < size ? data[(*pos)++] : fallback;
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  PbMassStorage *storage;
  gboolean read_only = size > 0 && (data[0] & 0x80);
  guint32 tag = 0;
  PbDevice *device;
  gsize pos = 0;

  if (image_fd < 0)
    {
      image_fd = memfd_create ("fuzz-image", MFD_CLOEXEC);
      if (image_fd < 0 || ftruncate (image_fd, IMAGE_SIZE) < 0)
        abort ();
    }
  check_prepare (data, size, read_only);

  /* The image is a memfd, which the fast path would serve at once: keep every I/O on the
   * worker path, whose pending states the scripts explore. */
  pb_mass_storage_set_fast_path (FALSE);
  storage = pb_mass_storage_new (image_fd, read_only, NULL);
  if (storage == NULL)
    abort ();
  device = PB_DEVICE (pb_mass_storage_get_device (storage));
  if (!pb_device_open (device, NULL))
    abort ();
  control (device, 0x00, 0x09, 1, 0, 0); /* SET_CONFIGURATION 1 */

  while (pos < size)
    {
      gboolean keep_pending = data[pos] >= 200;
      guint8 op = data[pos++] % 10;
      PbUrb *urb;

      pb_mass_storage_set_io_gate (TRUE);
      switch (op)
        {
        case 0: /* raw OUT transfer of the next n bytes (n in one byte) */
          {
            gsize n = next_byte (data, size, &pos, 31);
            n = MIN (n, size - pos);
            urb = new_urb (device, 2, PB_USBIP_DIR_OUT, (guint32) n);
            memcpy (urb->buffer, data + pos, n);
            pos += n;
            pb_device_submit (device, urb);
            break;
          }
        case 1: /* IN transfer, length from two bytes (up to 64 KiB) */
          {
            guint32 n = next_byte (data, size, &pos, 13);
            n |= (guint32) next_byte (data, size, &pos, 0) << 8;
            urb = new_urb (device, 1, PB_USBIP_DIR_IN, n);
            if (n & 1)
              urb->transfer_flags |= PB_USBIP_URB_SHORT_NOT_OK;
            pb_device_submit (device, urb);
            break;
          }
        case 2: /* Bulk-Only Mass Storage Reset */
          control (device, 0x21, 0xff, 0, 0, 0);
          break;
        case 3: /* CLEAR_FEATURE(ENDPOINT_HALT) on IN or OUT */
          control (device, 0x02, 0x01, 0, (next_byte (data, size, &pos, 0) & 1) ? 0x81 : 0x02, 0);
          break;
        case 4: /* cancel the n-th outstanding URB */
          {
            guint n = outstanding.length;
            if (n > 0)
              {
                urb = g_queue_peek_nth (&outstanding, next_byte (data, size, &pos, 0) % n);
                urb->cancelled = TRUE;
                pb_device_cancel (device, urb);
              }
            break;
          }
        case 5: /* a well-formed CBW: flags, dCBWDataTransferLength (2 bytes, in 64-byte units), CDB */
          {
            guint8 flags = next_byte (data, size, &pos, 0x80);
            guint32 length = (guint32) next_byte (data, size, &pos, 0) << 6;
            guint8 cdb_length = 1 + next_byte (data, size, &pos, 9) % 16;
            guint8 *cbw;

            length |= (guint32) next_byte (data, size, &pos, 0) << 14;
            urb = new_urb (device, 2, PB_USBIP_DIR_OUT, PB_BOT_CBW_SIZE);
            cbw = urb->buffer;
            cbw[0] = 'U'; cbw[1] = 'S'; cbw[2] = 'B'; cbw[3] = 'C';
            memcpy (cbw + 4, &(guint32) { ++tag }, 4);
            cbw[8] = length; cbw[9] = length >> 8; cbw[10] = length >> 16; cbw[11] = length >> 24;
            cbw[12] = flags & 0x80;
            cbw[14] = cdb_length;
            for (guint i = 0; i < cdb_length; i++)
              cbw[15 + i] = next_byte (data, size, &pos, 0);
            pb_device_submit (device, urb);
            break;
          }
        case 6: /* Get Max LUN */
          control (device, 0xa1, 0xfe, 0, 0, 1);
          break;
        case 7: /* SET_CONFIGURATION 0 or 1 */
          control (device, 0x00, 0x09, next_byte (data, size, &pos, 1) & 1, 0, 0);
          break;
        case 8: /* port reset, as vhci forwards it */
          control (device, 0x23, 0x03, 4, 1, 0);
          break;
        case 9: /* the client goes (every URB cancelled first, as a session does) and another comes */
          while (outstanding.length > 0)
            {
              guint before = outstanding.length;
              urb = g_queue_peek_head (&outstanding);
              urb->cancelled = TRUE;
              pb_device_cancel (device, urb);
              if (outstanding.length == before)
                abort (); /* a held URB that cancel does not finish would hang a session */
            }
          pb_device_close (device);
          if (!pb_device_open (device, NULL))
            abort ();
          control (device, 0x00, 0x09, 1, 0, 0);
          break;
        }
      if (!keep_pending)
        {
          settle_io ();
          /* An OUT request waits only behind an I/O, and none is left. */
          for (GList *l = outstanding.head; l != NULL; l = l->next)
            if (((PbUrb *) l->data)->direction != PB_USBIP_DIR_IN || ((PbUrb *) l->data)->ep != 1)
              abort ();
        }
      drain_completed ();
    }

  /* Teardown as a session does it: cancel everything still held, then close. */
  while (outstanding.length > 0)
    {
      PbUrb *urb = g_queue_peek_head (&outstanding);
      guint before = outstanding.length;
      urb->cancelled = TRUE;
      pb_device_cancel (device, urb);
      if (outstanding.length == before)
        abort ();
    }
  drain_completed ();
  pb_device_close (device);
  /* A pending I/O's late result reaches a device that is gone: dropped, nothing completes. */
  g_object_unref (storage);
  settle_io ();
  if (completed.length > 0)
    abort ();
  return 0;
}
