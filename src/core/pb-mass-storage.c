/* USB mass storage, Bulk-Only Transport: CBW on bulk OUT, data, CSW on bulk IN. Data moves
 * between the URBs and the image with pread/pwrite, no staging copy, so memory stays bounded
 * by the URBs the session already holds. Built on the public PbVirtualDevice API only. */
#define G_LOG_DOMAIN "plugboard"

#include "pb-mass-storage.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pb-error.h"
#include "pb-scsi.h"

#define EP_IN 0x81
#define EP_OUT 0x02
#define BULK_PACKET_HIGH_SPEED 512
#define BULK_PACKET_FULL_SPEED 64

typedef enum {
  BOT_IDLE,     /* waiting for a CBW */
  BOT_DATA_IN,
  BOT_DATA_OUT,
  BOT_STATUS,   /* the CSW goes to the next bulk IN request */
} BotState;

struct _PbMassStorage {
  GObject parent_instance;

  PbVirtualDevice *device;
  int fd;
  PbScsiDisk disk;

  BotState state;
  gboolean needs_reset;     /* invalid CBW: both pipes stay halted until a reset recovery */
  PbBotCbw cbw;
  PbScsiCommand command;
  guint64 host_remaining;   /* of dCBWDataTransferLength, not yet moved */
  guint64 device_remaining; /* of what the command means to move */
  guint64 moved;            /* bytes of the command's data moved: the residue is the rest */
  gboolean io_failed;
  guint8 csw_status;
  GQueue held_in;           /* bulk IN URBs waiting for data or a CSW, linked by device_link */
};

G_DEFINE_FINAL_TYPE (PbMassStorage, pb_mass_storage, G_TYPE_OBJECT)

static const guint8 device_descriptor[18] = {
  18, PB_USB_DT_DEVICE, 0x00, 0x02, /* USB 2.0 */
  0x00, 0x00, 0x00, 64,             /* class per interface, ep0 64 bytes */
  0x09, 0x12, 0x01, 0x00,           /* pid.codes test VID 1209, PID 0001 */
  0x00, 0x01,                       /* bcdDevice 1.00 */
  1, 2, 3, 1,                       /* manufacturer, product, serial; one configuration */
};

/* A high-speed device also describes itself at the other speed (USB 2.0 9.6.2, 9.6.4). */
static const guint8 device_qualifier[10] = {
  10, PB_USB_DT_DEVICE_QUALIFIER, 0x00, 0x02, 0x00, 0x00, 0x00, 64, 1, 0,
};

#define CONFIGURATION(type, packet) {                                           \
  9, type, 32, 0, 1, 1, 0, 0x80, 250,    /* bus powered, 500 mA */              \
  9, PB_USB_DT_INTERFACE, 0, 0, 2, 0x08, 0x06, 0x50, 0, /* mass storage, SCSI, BOT */ \
  7, PB_USB_DT_ENDPOINT, EP_IN, 0x02, (packet) & 0xff, (packet) >> 8, 0,        \
  7, PB_USB_DT_ENDPOINT, EP_OUT, 0x02, (packet) & 0xff, (packet) >> 8, 0,       \
}
static const guint8 configuration[] = CONFIGURATION (PB_USB_DT_CONFIG, BULK_PACKET_HIGH_SPEED);
static const guint8 other_speed_configuration[] = CONFIGURATION (0x07, BULK_PACKET_FULL_SPEED);

static void service_in (PbMassStorage *self);

static void
hold_in (PbMassStorage *self, PbUrb *urb)
{
  urb->device_data = self;
  urb->device_link.data = urb;
  g_queue_push_tail_link (&self->held_in, &urb->device_link);
}

static void
unhold_in (PbMassStorage *self, PbUrb *urb)
{
  g_queue_unlink (&self->held_in, &urb->device_link);
  urb->device_data = NULL;
}

static void
complete_held (PbMassStorage *self, gint32 status)
{
  while (self->held_in.head != NULL)
    {
      PbUrb *urb = self->held_in.head->data;
      unhold_in (self, urb);
      pb_urb_complete (urb, status, 0);
    }
}

static void
reset_bot (PbMassStorage *self)
{
  self->state = BOT_IDLE;
  self->host_remaining = 0;
  self->device_remaining = 0;
  self->moved = 0;
  self->io_failed = FALSE;
  self->csw_status = PB_BOT_CSW_PASSED;
}

static void
raise_status (PbMassStorage *self, guint8 status)
{
  self->csw_status = MAX (self->csw_status, status);
}

/* The data phase is over: the CSW goes to the next bulk IN request. */
static void
enter_status (PbMassStorage *self)
{
  self->state = BOT_STATUS;
}

/* Ends the data phase with a stall of one pipe; the host clears it and reads the CSW. */
static void
stall_and_enter_status (PbMassStorage *self, guint8 endpoint_address)
{
  pb_virtual_device_set_halt (self->device, endpoint_address, TRUE);
  enter_status (self);
}

static void
media_failed (PbMassStorage *self, gboolean write)
{
  pb_scsi_disk_set_sense (&self->disk, PB_SCSI_SENSE_MEDIUM_ERROR,
                          write ? PB_SCSI_ASC_WRITE_ERROR : PB_SCSI_ASC_UNRECOVERED_READ_ERROR, 0);
  raise_status (self, PB_BOT_CSW_FAILED);
  self->io_failed = TRUE;
}

static void
start_command (PbMassStorage *self)
{
  PbScsiCommand *command = &self->command;

  pb_scsi_disk_prepare (&self->disk, self->cbw.cdb, self->cbw.cdb_length, command);
  self->host_remaining = self->cbw.data_length;
  self->device_remaining = command->length;
  self->moved = 0;
  self->io_failed = FALSE;
  self->csw_status = command->ok ? PB_BOT_CSW_PASSED : PB_BOT_CSW_FAILED;

  /* EINVAL/EROFS: the image cannot be synced (a special file); nothing is lost by that. */
  if (command->sync && fdatasync (self->fd) < 0 && errno != EINVAL && errno != EROFS)
    {
      pb_scsi_disk_set_sense (&self->disk, PB_SCSI_SENSE_MEDIUM_ERROR, PB_SCSI_ASC_WRITE_ERROR, 0);
      raise_status (self, PB_BOT_CSW_FAILED);
    }

  /* The thirteen cases of BOT 6.7: Hn/Hi/Ho is what the host expects, Dn/Di/Do the device. */
  if (self->cbw.data_length == 0)
    {
      /* Cases 1, 2, 3: Hn with Di or Do is a phase error. */
      if (command->direction != PB_SCSI_DATA_NONE)
        raise_status (self, PB_BOT_CSW_PHASE_ERROR);
      enter_status (self);
    }
  else if (self->cbw.data_in)
    {
      if (command->direction == PB_SCSI_DATA_OUT)
        {
          /* Case 8 (Hi <> Do): send nothing, stall bulk IN, phase error. */
          self->device_remaining = 0;
          raise_status (self, PB_BOT_CSW_PHASE_ERROR);
          stall_and_enter_status (self, EP_IN);
        }
      else if (self->device_remaining == 0)
        stall_and_enter_status (self, EP_IN); /* case 4 (Hi > Dn): stall, full residue */
      else
        {
          /* Cases 5, 6, 7: send what both want; Hi < Di is a phase error. */
          if (self->device_remaining > self->host_remaining)
            raise_status (self, PB_BOT_CSW_PHASE_ERROR);
          self->state = BOT_DATA_IN;
        }
    }
  else
    {
      if (command->direction == PB_SCSI_DATA_IN || self->device_remaining > self->host_remaining)
        {
          /* Case 10 (Ho <> Di) and 13 (Ho < Do): take nothing, stall bulk OUT, phase error. A
           * write the host cannot finish must not change the image half-way. */
          self->device_remaining = 0;
          raise_status (self, PB_BOT_CSW_PHASE_ERROR);
          stall_and_enter_status (self, EP_OUT);
        }
      else
        self->state = BOT_DATA_OUT; /* cases 9, 11, 12: take it all, use what the command needs */
    }
}

static gboolean
read_image (PbMassStorage *self, guint8 *buffer, gsize length, guint64 offset, gsize *done)
{
  *done = 0;
  while (*done < length)
    {
      gssize n = pread (self->fd, buffer + *done, length - *done, (off_t) (offset + *done));
      if (n < 0 && errno == EINTR)
        continue;
      if (n <= 0)
        return FALSE; /* an error, or the image shrank under us */
      *done += (gsize) n;
    }
  return TRUE;
}

static gboolean
write_image (PbMassStorage *self, const guint8 *buffer, gsize length, guint64 offset)
{
  gsize done = 0;

  while (done < length)
    {
      gssize n = pwrite (self->fd, buffer + done, length - done, (off_t) (offset + done));
      if (n < 0 && errno == EINTR)
        continue;
      if (n <= 0)
        return FALSE;
      done += (gsize) n;
    }
  return TRUE;
}

static void
send_data (PbMassStorage *self, PbUrb *urb)
{
  gsize n = (gsize) MIN ((guint64) urb->length, MIN (self->host_remaining, self->device_remaining));
  gint32 status = PB_URB_OK;

  if (self->command.media_io)
    {
      gsize got;
      if (!read_image (self, urb->buffer, n, self->command.offset, &got))
        {
          /* Send what was read, then end the data phase: the CSW says failed. */
          media_failed (self, FALSE);
          self->device_remaining = got;
          n = got;
        }
      self->command.offset += n;
    }
  else
    memcpy (urb->buffer, self->command.response + (self->command.length - self->device_remaining), n);

  if (n == 0)
    {
      /* Nothing could be read: this request sees the stall itself. */
      enter_status (self);
      pb_urb_complete (urb, PB_URB_EPIPE, 0);
      return;
    }
  self->host_remaining -= n;
  self->device_remaining -= n;
  self->moved += n;
  if (self->host_remaining == 0)
    enter_status (self); /* cases 6 and 7 */
  else if (self->device_remaining == 0)
    {
      /* Case 5: the device has sent all it had. BOT wants the transfer ended with a stall
       * (short data alone would leave a host that asked in several requests waiting). */
      stall_and_enter_status (self, EP_IN);
    }
  if (n < urb->length && (urb->transfer_flags & PB_USBIP_URB_SHORT_NOT_OK))
    status = PB_URB_EREMOTEIO;
  pb_urb_complete (urb, status, (guint32) n);
}

static void
send_csw (PbMassStorage *self, PbUrb *urb)
{
  guint8 csw[PB_BOT_CSW_SIZE];
  guint64 residue = self->cbw.data_length - MIN (self->moved, (guint64) self->cbw.data_length);

  pb_bot_csw_encode (csw, self->cbw.tag, (guint32) residue, self->csw_status);
  reset_bot (self);
  if (urb->length < sizeof csw)
    {
      /* The device sends 13 bytes whatever the host asked for: babble. */
      memcpy (urb->buffer, csw, urb->length);
      pb_urb_complete (urb, PB_URB_EOVERFLOW, urb->length);
      return;
    }
  pb_urb_complete_with_data (urb, csw, sizeof csw);
}

static void
service_in (PbMassStorage *self)
{
  while (self->held_in.head != NULL)
    {
      PbUrb *urb = self->held_in.head->data;

      /* A halted pipe stalls every request, including those that waited here. */
      if (self->needs_reset || pb_virtual_device_get_halt (self->device, EP_IN))
        {
          unhold_in (self, urb);
          pb_urb_complete (urb, PB_URB_EPIPE, 0);
          continue;
        }
      if (urb->length == 0)
        {
          /* Nothing fits in it: it cannot take data or a CSW, so it consumes neither. */
          unhold_in (self, urb);
          pb_urb_complete (urb, PB_URB_OK, 0);
          continue;
        }
      switch (self->state)
        {
        case BOT_DATA_IN:
          unhold_in (self, urb);
          send_data (self, urb);
          break;
        case BOT_STATUS:
          unhold_in (self, urb);
          send_csw (self, urb);
          break;
        case BOT_IDLE:
        case BOT_DATA_OUT:
        default:
          return; /* waits for a CBW or for OUT data */
        }
    }
}

static void
receive_data (PbMassStorage *self, PbUrb *urb)
{
  gsize n = (gsize) MIN ((guint64) urb->length, self->host_remaining);
  gsize useful = (gsize) MIN ((guint64) n, self->device_remaining);

  if (useful > 0 && self->command.media_io && !self->io_failed)
    {
      if (!write_image (self, urb->buffer, useful, self->command.offset))
        media_failed (self, TRUE);
      self->command.offset += useful;
    }
  /* Data beyond what the command takes is accepted and dropped (cases 9 and 11); the
   * residue tells the host. */
  self->device_remaining -= useful;
  self->moved += useful;
  self->host_remaining -= n;
  if (self->host_remaining == 0)
    enter_status (self);
  pb_urb_complete (urb, PB_URB_OK, (guint32) n);
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
          /* BOT 6.6.1: stall both pipes and keep them so until a reset recovery. */
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
      receive_data (self, urb);
      service_in (self);
      return;

    case BOT_DATA_IN:
    case BOT_STATUS:
    default:
      /* The host sends while the device sends or owes a CSW: a second CBW before the CSW
       * is undefined in BOT; refusing it keeps the command in progress intact. */
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
      hold_in (self, urb);
      service_in (self);
    }
}

static void
msc_cancel (PbVirtualDevice *device, PbUrb *urb, gpointer user_data)
{
  PbMassStorage *self = user_data;

  /* Only held IN requests are still ours; everything else completed at once. */
  if (urb->device_data != self)
    return;
  unhold_in (self, urb);
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
      if ((type & PB_USB_DIR_IN) || pb_urb_setup_value (urb) != 0 || pb_urb_setup_length (urb) != 0)
        return FALSE;
      /* Ready for a CBW; the halts stay until the host clears them (BOT 3.1). */
      self->needs_reset = FALSE;
      reset_bot (self);
      pb_urb_complete (urb, PB_URB_OK, 0);
      return TRUE;

    case 0xfe: /* Get Max LUN */
      {
        static const guint8 max_lun = 0;
        if (!(type & PB_USB_DIR_IN) || pb_urb_setup_value (urb) != 0 || pb_urb_setup_length (urb) < 1)
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

/* SET_CONFIGURATION / SET_INTERFACE: the framework cleared the halts; start over. */
static void
msc_set_configuration (PbVirtualDevice *device, guint8 value, gpointer user_data)
{
  PbMassStorage *self = user_data;

  self->needs_reset = FALSE;
  reset_bot (self);
}

static void
msc_set_interface (PbVirtualDevice *device, guint8 interface, guint8 alt, gpointer user_data)
{
  msc_set_configuration (device, 1, user_data);
}

/* A port reset: requests in flight are lost, the transport starts over, the medium stays. */
static void
msc_reset (PbVirtualDevice *device, gpointer user_data)
{
  PbMassStorage *self = user_data;

  complete_held (self, PB_URB_ESHUTDOWN);
  self->needs_reset = FALSE;
  reset_bot (self);
  pb_scsi_disk_set_sense (&self->disk, PB_SCSI_SENSE_NO_SENSE, 0, 0);
}

/* A new client, or the last one left: the next one finds a freshly plugged disk. */
static void
msc_power_cycle (PbVirtualDevice *device, gpointer user_data)
{
  PbMassStorage *self = user_data;

  complete_held (self, PB_URB_ESHUTDOWN);
  self->needs_reset = FALSE;
  reset_bot (self);
  pb_scsi_disk_power_on (&self->disk);
}

static const PbVirtualDeviceOps mass_storage_ops = {
  .control = msc_control,
  .transfer = msc_transfer,
  .cancel = msc_cancel,
  .set_configuration = msc_set_configuration,
  .set_interface = msc_set_interface,
  .clear_halt = msc_clear_halt,
  .opened = msc_power_cycle,
  .closed = msc_power_cycle,
  .reset = msc_reset,
};

/* ---- public ---- */

static gboolean
image_size (int fd, guint64 *size, guint64 *identity, GError **error)
{
  struct stat st;

  if (fstat (fd, &st) < 0)
    {
      g_set_error (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT, "cannot examine the image: %s", g_strerror (errno));
      return FALSE;
    }
  if (S_ISBLK (st.st_mode))
    {
      /* The size ioctl leaves the (shared) file offset alone, unlike lseek. */
      if (ioctl (fd, BLKGETSIZE64, size) < 0)
        {
          g_set_error (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT, "cannot get the size of the block device: %s",
                       g_strerror (errno));
          return FALSE;
        }
      *identity = (guint64) st.st_rdev;
    }
  else if (S_ISREG (st.st_mode))
    {
      *size = (guint64) st.st_size;
      *identity = ((guint64) st.st_dev << 40) ^ (guint64) st.st_ino;
    }
  else
    {
      g_set_error_literal (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT, "the image must be a regular file or a block device");
      return FALSE;
    }
  if (*size == 0 || *size % PB_SCSI_BLOCK_SIZE != 0)
    {
      g_set_error (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT,
                   "image size %" G_GUINT64_FORMAT " is not a positive multiple of %d bytes", *size, PB_SCSI_BLOCK_SIZE);
      return FALSE;
    }
  return TRUE;
}

/* 64-bit finalizer of SplitMix64: spreads the bits of the image identity over the serial. */
static guint64
mix64 (guint64 x)
{
  x ^= x >> 30;
  x *= G_GUINT64_CONSTANT (0xbf58476d1ce4e5b9);
  x ^= x >> 27;
  x *= G_GUINT64_CONSTANT (0x94d049bb133111eb);
  x ^= x >> 31;
  return x;
}

PbMassStorage *
pb_mass_storage_new (int fd, gboolean read_only, GError **error)
{
  g_autoptr(PbMassStorage) self = NULL;
  static guint instance_counter;
  guint64 size = 0, identity = 0;
  int flags;

  if (!image_size (fd, &size, &identity, error))
    return NULL;
  flags = fcntl (fd, F_GETFL);
  if (flags < 0 || (flags & O_ACCMODE) == O_WRONLY)
    {
      g_set_error_literal (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT, "the image must be open for reading");
      return NULL;
    }
  if ((flags & O_ACCMODE) == O_RDONLY)
    read_only = TRUE;

  self = g_object_new (PB_TYPE_MASS_STORAGE, NULL);
  self->fd = fcntl (fd, F_DUPFD_CLOEXEC, 3);
  if (self->fd < 0)
    {
      g_set_error (error, PB_ERROR, PB_ERROR_FAILED, "cannot duplicate the image descriptor: %s", g_strerror (errno));
      return NULL;
    }
  self->disk.block_count = size / PB_SCSI_BLOCK_SIZE;
  self->disk.read_only = read_only;
  pb_scsi_disk_power_on (&self->disk);
  /* BOT wants at least 12 hex digits. The same image served by the same command line keeps
   * its serial across restarts (stable /dev/disk/by-id names); the counter keeps two disks
   * of one process apart. */
  g_snprintf (self->disk.serial, sizeof self->disk.serial, "%012" G_GINT64_MODIFIER "X%04X",
              mix64 (identity) & G_GUINT64_CONSTANT (0xffffffffffff), ++instance_counter & 0xffff);

  self->device = pb_virtual_device_new (&mass_storage_ops, self, NULL);
  if (!pb_virtual_device_set_descriptors (self->device, PB_USBIP_SPEED_HIGH, device_descriptor,
                                          sizeof device_descriptor, configuration, sizeof configuration, error))
    return NULL;
  pb_virtual_device_add_descriptor (self->device, PB_USB_DT_DEVICE_QUALIFIER, 0, 0, device_qualifier,
                                    sizeof device_qualifier);
  pb_virtual_device_add_descriptor (self->device, 0x07 /* OTHER_SPEED_CONFIGURATION */, 0, 0,
                                    other_speed_configuration, sizeof other_speed_configuration);
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

const char *
pb_mass_storage_get_serial (PbMassStorage *self)
{
  g_return_val_if_fail (PB_IS_MASS_STORAGE (self), NULL);
  return self->disk.serial;
}

static void
pb_mass_storage_dispose (GObject *object)
{
  PbMassStorage *self = PB_MASS_STORAGE (object);

  /* A server or session may keep the device: finish what we hold, then cut it loose. */
  complete_held (self, PB_URB_ESHUTDOWN);
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
