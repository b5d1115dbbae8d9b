/* USB mass storage, Bulk-Only Transport: CBW on bulk OUT, data, CSW on bulk IN. Data moves
 * between the URBs and the image with pread/pwrite, no staging copy. */
#define G_LOG_DOMAIN "plugboard"

#include "pb-mass-storage.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pb-scsi.h"

#define EP_IN 0x81
#define EP_OUT 0x02

typedef enum {
  BOT_IDLE,      /* waiting for a CBW */
  BOT_DATA_IN,
  BOT_DATA_OUT,
  BOT_STATUS,    /* CSW ready for the next bulk IN */
} BotState;

struct _PbMassStorage {
  GObject parent_instance;

  PbVirtualDevice *device;
  int fd;
  PbScsiDisk disk;

  BotState state;
  gboolean needs_reset;     /* invalid CBW: both endpoints stay halted until reset recovery */
  PbBotCbw cbw;
  PbScsiCommand command;
  guint64 host_remaining;   /* of dCBWDataTransferLength */
  guint64 device_remaining; /* of what the command moves */
  guint64 processed;        /* bytes the device sent or took in: the residue is the rest */
  guint8 csw_status;
  GQueue held_in;           /* bulk IN URBs waiting for data or a CSW */
};

G_DEFINE_FINAL_TYPE (PbMassStorage, pb_mass_storage, G_TYPE_OBJECT)

static const guint8 device_descriptor[18] = {
  18, PB_USB_DT_DEVICE, 0x00, 0x02, /* USB 2.0 */
  0x00, 0x00, 0x00, 64,             /* class per interface, ep0 64 bytes */
  0x09, 0x12, 0x01, 0x00,           /* pid.codes test VID 1209, PID 0001 */
  0x00, 0x01,                       /* bcdDevice 1.00 */
  1, 2, 3, 1,                       /* strings, one configuration */
};

static const guint8 configuration[] = {
  9, PB_USB_DT_CONFIG, 32, 0, 1, 1, 0, 0x80, 250, /* bus powered, 500 mA */
  9, PB_USB_DT_INTERFACE, 0, 0, 2, 0x08, 0x06, 0x50, 0, /* mass storage, SCSI, BOT */
  7, PB_USB_DT_ENDPOINT, EP_IN, 0x02, 0x00, 0x02, 0,
  7, PB_USB_DT_ENDPOINT, EP_OUT, 0x02, 0x00, 0x02, 0,
};

static void service_in (PbMassStorage *self);

static void
reset_bot (PbMassStorage *self)
{
  self->state = BOT_IDLE;
  self->host_remaining = 0;
  self->device_remaining = 0;
  self->processed = 0;
  self->csw_status = 0;
}

static void
enter_status (PbMassStorage *self, guint8 status)
{
  if (status > self->csw_status)
    self->csw_status = status;
  self->state = BOT_STATUS;
}

static void
start_command (PbMassStorage *self)
{
  PbScsiCommand *command = &self->command;
  gboolean host_in = self->cbw.data_in && self->cbw.data_length > 0;
  gboolean host_out = !self->cbw.data_in && self->cbw.data_length > 0;

  pb_scsi_disk_prepare (&self->disk, self->cbw.cdb, self->cbw.cdb_length, command);
  self->host_remaining = self->cbw.data_length;
  self->device_remaining = command->length;
  self->processed = 0;
  self->csw_status = command->ok ? 0 : 1;

  if (command->sync && fdatasync (self->fd) < 0 && errno != EINVAL)
    {
      pb_scsi_disk_set_sense (&self->disk, PB_SCSI_SENSE_MEDIUM_ERROR, PB_SCSI_ASC_WRITE_ERROR, 0);
      self->csw_status = 1;
    }

  /* The thirteen cases of the BOT specification, reduced to what the host sees. */
  if (self->cbw.data_length == 0)
    {
      /* Hn: the device wanted data (cases 2, 3) is a phase error. */
      enter_status (self, command->direction != PB_SCSI_DATA_NONE ? 2 : self->csw_status);
      return;
    }
  if (host_in)
    {
      if (command->direction == PB_SCSI_DATA_OUT)
        {
          /* Case 10: the host reads what the device wants to receive. */
          self->device_remaining = 0;
          self->csw_status = 2;
        }
      else if (command->media_io && command->length > self->cbw.data_length)
        self->csw_status = 2; /* case 7: the host expects less than the device has */
      self->state = BOT_DATA_IN;
      return;
    }
  if (host_out)
    {
      if (command->direction == PB_SCSI_DATA_IN)
        {
          /* Case 8: the device would send while the host sends. */
          self->device_remaining = 0;
          self->csw_status = 2;
        }
      else if (command->media_io && command->length > self->cbw.data_length)
        self->csw_status = 2; /* case 13 */
      self->state = BOT_DATA_OUT;
    }
}

static void
complete_in_data (PbMassStorage *self, PbUrb *urb)
{
  guint64 n = MIN ((guint64) urb->length, MIN (self->host_remaining, self->device_remaining));
  gint32 status = PB_URB_OK;

  if (n == 0)
    {
      /* The device has nothing (more) for the host: stall bulk IN; the CSW follows once the
       * host clears the halt (cases 4 and 5). */
      enter_status (self, self->csw_status);
      pb_urb_complete (urb, PB_URB_EPIPE, 0);
      return;
    }
  if (self->command.media_io)
    {
      gssize got = pread (self->fd, urb->buffer, n, (off_t) self->command.offset);
      if (got < 0)
        got = 0;
      if ((guint64) got < n)
        {
          /* A short image or an I/O error: report it, end the data phase here. */
          pb_scsi_disk_set_sense (&self->disk, PB_SCSI_SENSE_MEDIUM_ERROR, PB_SCSI_ASC_UNRECOVERED_READ_ERROR, 0);
          self->csw_status = MAX (self->csw_status, 1);
          self->device_remaining = (guint64) got;
          n = (guint64) got;
        }
      self->command.offset += n;
    }
  else
    memcpy (urb->buffer, self->command.response + (self->command.length - self->device_remaining), n);

  self->host_remaining -= n;
  self->device_remaining -= n;
  self->processed += n;
  /* Done when the host has what it asked for, or the device has no more and this URB says so
   * by coming back short (a full URB would leave the host waiting: the next one stalls). */
  if (self->host_remaining == 0 || (self->device_remaining == 0 && n < urb->length))
    enter_status (self, self->csw_status);
  if (n < urb->length && (urb->transfer_flags & PB_USBIP_URB_SHORT_NOT_OK))
    status = PB_URB_EREMOTEIO;
  pb_urb_complete (urb, status, (guint32) n);
}

static void
complete_csw (PbMassStorage *self, PbUrb *urb)
{
  guint8 csw[PB_BOT_CSW_SIZE];

  pb_bot_csw_encode (csw, self->cbw.tag, (guint32) (self->cbw.data_length - MIN (self->processed, self->cbw.data_length)),
                     self->csw_status);
  reset_bot (self);
  pb_urb_complete_with_data (urb, csw, sizeof csw);
}

static void
service_in (PbMassStorage *self)
{
  PbUrb *urb;

  while ((urb = g_queue_peek_head (&self->held_in)) != NULL)
    {
      if (self->needs_reset)
        {
          g_queue_pop_head (&self->held_in);
          pb_urb_complete (urb, PB_URB_EPIPE, 0);
          continue;
        }
      if (self->state == BOT_DATA_IN)
        {
          g_queue_pop_head (&self->held_in);
          complete_in_data (self, urb);
        }
      else if (self->state == BOT_STATUS)
        {
          g_queue_pop_head (&self->held_in);
          complete_csw (self, urb);
        }
      else
        return; /* waiting for a CBW or OUT data */
    }
}

static void
handle_out (PbMassStorage *self, PbUrb *urb)
{
  if (self->needs_reset)
    {
      pb_urb_complete (urb, PB_URB_EPIPE, 0);
      return;
    }
  switch (self->state)
    {
    case BOT_IDLE:
      if (!pb_bot_cbw_parse (urb->buffer, urb->length, &self->cbw))
        {
          /* Invalid CBW: stall both pipes until a reset recovery (BOT 6.6.1). */
          self->needs_reset = TRUE;
          pb_virtual_device_set_halt (self->device, EP_IN, TRUE);
          pb_virtual_device_set_halt (self->device, EP_OUT, TRUE);
          pb_urb_complete (urb, PB_URB_EPIPE, 0);
          service_in (self);
          return;
        }
      start_command (self);
      pb_urb_complete (urb, PB_URB_OK, urb->length);
      service_in (self);
      return;

    case BOT_DATA_OUT:
      {
        guint64 n = MIN ((guint64) urb->length, self->host_remaining);
        guint64 useful = MIN (n, self->device_remaining);

        if (useful > 0 && self->command.media_io)
          {
            gssize put = pwrite (self->fd, urb->buffer, useful, (off_t) self->command.offset);
            if (put < 0 || (guint64) put < useful)
              {
                pb_scsi_disk_set_sense (&self->disk, PB_SCSI_SENSE_MEDIUM_ERROR, PB_SCSI_ASC_WRITE_ERROR, 0);
                self->csw_status = MAX (self->csw_status, 1);
              }
            self->command.offset += useful;
          }
        /* Data beyond what the command takes is accepted and dropped (case 11); the residue
         * tells the host. */
        self->device_remaining -= useful;
        self->processed += useful;
        self->host_remaining -= n;
        if (self->host_remaining == 0)
          enter_status (self, self->csw_status);
        pb_urb_complete (urb, PB_URB_OK, (guint32) n);
        service_in (self);
        return;
      }

    case BOT_DATA_IN:
    case BOT_STATUS:
    default:
      /* The host sends while the device is in another phase: stall it. */
      pb_urb_complete (urb, PB_URB_EPIPE, 0);
      return;
    }
}

/* ---- PbVirtualDevice callbacks ---- */

static void
msc_transfer (PbVirtualDevice *device, PbUrb *urb, gpointer user_data)
{
  PbMassStorage *self = user_data;

  if (urb->type != PB_ENDPOINT_BULK)
    {
      pb_urb_complete (urb, PB_URB_EPIPE, 0);
      return;
    }
  if (urb->direction == PB_USBIP_DIR_OUT)
    handle_out (self, urb);
  else
    {
      urb->device_data = self;
      g_queue_push_tail (&self->held_in, urb);
      service_in (self);
    }
}

static void
msc_cancel (PbVirtualDevice *device, PbUrb *urb, gpointer user_data)
{
  PbMassStorage *self = user_data;

  if (g_queue_remove (&self->held_in, urb))
    pb_urb_complete (urb, PB_URB_ECONNRESET, 0);
}

static gboolean
msc_control (PbVirtualDevice *device, PbUrb *urb, gpointer user_data)
{
  PbMassStorage *self = user_data;
  guint8 type = pb_urb_setup_request_type (urb);

  if ((type & (PB_USB_TYPE_MASK | PB_USB_RECIP_MASK)) != (PB_USB_TYPE_CLASS | PB_USB_RECIP_INTERFACE) ||
      pb_urb_setup_index (urb) != 0)
    return FALSE;
  switch (pb_urb_setup_request (urb))
    {
    case 0xff: /* Bulk-Only Mass Storage Reset */
      if (type & PB_USB_DIR_IN || pb_urb_setup_value (urb) != 0 || pb_urb_setup_length (urb) != 0)
        return FALSE;
      self->needs_reset = FALSE;
      reset_bot (self);
      pb_urb_complete (urb, PB_URB_OK, 0);
      return TRUE;
    case 0xfe: /* Get Max LUN */
      {
        static const guint8 max_lun = 0;
        if (!(type & PB_USB_DIR_IN) || pb_urb_setup_length (urb) < 1)
          return FALSE;
        pb_urb_complete_with_data (urb, &max_lun, 1);
        return TRUE;
      }
    default:
      return FALSE;
    }
}

static void
msc_clear_halt (PbVirtualDevice *device, guint8 address, gpointer user_data)
{
  PbMassStorage *self = user_data;

  /* After an invalid CBW only a reset recovery may unstall the pipes. */
  if (self->needs_reset && (address == EP_IN || address == EP_OUT))
    pb_virtual_device_set_halt (device, address, TRUE);
  else if (address == EP_IN)
    service_in (self);
}

static void
msc_restart (PbVirtualDevice *device, gpointer user_data)
{
  PbMassStorage *self = user_data;
  PbUrb *urb;

  while ((urb = g_queue_pop_head (&self->held_in)) != NULL)
    pb_urb_complete (urb, PB_URB_ESHUTDOWN, 0);
  self->needs_reset = FALSE;
  reset_bot (self);
  pb_scsi_disk_set_sense (&self->disk, PB_SCSI_SENSE_NO_SENSE, 0, 0);
}

static const PbVirtualDeviceOps mass_storage_ops = {
  .control = msc_control,
  .transfer = msc_transfer,
  .cancel = msc_cancel,
  .clear_halt = msc_clear_halt,
  .opened = msc_restart,
  .closed = msc_restart,
  .reset = msc_restart,
};

/* ---- public ---- */

PbMassStorage *
pb_mass_storage_new (int fd, gboolean read_only, GError **error)
{
  g_autoptr(PbMassStorage) self = g_object_new (PB_TYPE_MASS_STORAGE, NULL);
  static guint serial_counter;
  struct stat st;
  guint64 size;
  int flags;
  g_autofree char *serial = NULL;

  if (fstat (fd, &st) < 0)
    {
      g_set_error (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT, "cannot examine the image: %s", g_strerror (errno));
      return NULL;
    }
  size = (guint64) st.st_size;
  if (S_ISBLK (st.st_mode))
    {
      off_t end = lseek (fd, 0, SEEK_END);
      size = end > 0 ? (guint64) end : 0;
    }
  else if (!S_ISREG (st.st_mode))
    {
      g_set_error_literal (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT, "the image must be a regular file or a block device");
      return NULL;
    }
  if (size == 0 || size % PB_SCSI_BLOCK_SIZE != 0)
    {
      g_set_error (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT,
                   "image size %" G_GUINT64_FORMAT " is not a positive multiple of %d bytes", size, PB_SCSI_BLOCK_SIZE);
      return NULL;
    }
  flags = fcntl (fd, F_GETFL);
  if (flags < 0 || (flags & O_ACCMODE) == O_RDONLY)
    read_only = TRUE;

  self->fd = fcntl (fd, F_DUPFD_CLOEXEC, 3);
  if (self->fd < 0)
    {
      g_set_error (error, PB_ERROR, PB_ERROR_FAILED, "cannot duplicate the image descriptor: %s", g_strerror (errno));
      return NULL;
    }
  self->disk.block_count = size / PB_SCSI_BLOCK_SIZE;
  self->disk.read_only = read_only;
  serial = g_strdup_printf ("PBMSC%07X%04X", (guint) getpid () & 0xfffffff, ++serial_counter & 0xffff);
  g_strlcpy (self->disk.serial, serial, sizeof self->disk.serial);

  self->device = pb_virtual_device_new (&mass_storage_ops, self, NULL);
  if (!pb_virtual_device_set_descriptors (self->device, PB_USBIP_SPEED_HIGH, device_descriptor,
                                          sizeof device_descriptor, configuration, sizeof configuration, error))
    return NULL;
  pb_virtual_device_set_string (self->device, 1, "Plugboard");
  pb_virtual_device_set_string (self->device, 2, "Plugboard Virtual Disk");
  pb_virtual_device_set_string (self->device, 3, self->disk.serial);
  pb_device_set_description (PB_DEVICE (self->device), "Plugboard Virtual Disk");
  return g_steal_pointer (&self);
}

PbVirtualDevice *
pb_mass_storage_get_device (PbMassStorage *self)
{
  g_return_val_if_fail (PB_IS_MASS_STORAGE (self), NULL);
  return self->device;
}

guint64
pb_mass_storage_get_block_count (PbMassStorage *self)
{
  g_return_val_if_fail (PB_IS_MASS_STORAGE (self), 0);
  return self->disk.block_count;
}

gboolean
pb_mass_storage_is_read_only (PbMassStorage *self)
{
  g_return_val_if_fail (PB_IS_MASS_STORAGE (self), TRUE);
  return self->disk.read_only;
}

static void
pb_mass_storage_dispose (GObject *object)
{
  PbMassStorage *self = PB_MASS_STORAGE (object);
  PbUrb *urb;

  /* A server or session may keep the device: finish what we hold, then cut it loose. */
  while ((urb = g_queue_pop_head (&self->held_in)) != NULL)
    pb_urb_complete (urb, PB_URB_ESHUTDOWN, 0);
  if (self->device != NULL)
    pb_virtual_device_detach (self->device);
  g_clear_object (&self->device);
  G_OBJECT_CLASS (pb_mass_storage_parent_class)->dispose (object);
}

static void
pb_mass_storage_finalize (GObject *object)
{
  PbMassStorage *self = PB_MASS_STORAGE (object);

  if (self->fd >= 0)
    close (self->fd);
  G_OBJECT_CLASS (pb_mass_storage_parent_class)->finalize (object);
}

static void
pb_mass_storage_class_init (PbMassStorageClass *klass)
{
  G_OBJECT_CLASS (klass)->dispose = pb_mass_storage_dispose;
  G_OBJECT_CLASS (klass)->finalize = pb_mass_storage_finalize;
}

static void
pb_mass_storage_init (PbMassStorage *self)
{
  self->fd = -1;
}
