/* USB mass storage, Bulk-Only Transport: CBW on bulk OUT, data, CSW on bulk IN. Built on the
 * public PbVirtualDevice API only.
 *
 * Media I/O (pread, pwrite, fdatasync) runs on a worker thread so that a stalled image (a hung
 * disk, NFS, a suspended device-mapper target) never blocks the main loop: other devices and
 * sessions go on, and an unlink of the request whose I/O hangs is answered at once. All BOT state
 * lives on the main context; a worker only moves bytes between the image and the job's own
 * buffer, and its result comes back to the main context through an idle source.
 *
 * Why one GThreadPool per device with at most one thread, rather than g_task_run_in_thread():
 * a thread stuck on a dead disk then blocks only its own device, never GIO's shared pool (which
 * resolvers and async file operations of the whole process rely on), and per-device FIFO order
 * comes for free. Non-exclusive pools share idle threads, so an idle device costs no thread.
 *
 * Why the job owns a buffer instead of the worker using the URB's: a cancel (unlink, session
 * teardown, reset) must complete the URB at once, after which the session may free or reuse its
 * memory while the worker is still inside pread/pwrite. The staging buffer is bounded by the URB
 * length (capped at PB_USBIP_MAX_TRANSFER_LENGTH), and a device has at most one job at any time,
 * including one abandoned by a cancel and still running, so memory and threads stay bounded
 * whatever the host does.
 *
 * I/O that cannot stall skips the worker (try_io_now): an image in memory, or data the kernel can
 * move without waiting (RWF_NOWAIT). */
#define G_LOG_DOMAIN "plugboard"

#include "pb-mass-storage.h"
#include "pb-mass-storage-private.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/magic.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/uio.h>
#include <unistd.h>

#include "pb-error.h"
#include "pb-scsi.h"

#define EP_IN 0x81
#define EP_OUT 0x02
#define BULK_PACKET_HIGH_SPEED 512
#define BULK_PACKET_FULL_SPEED 64
/* The staging buffer of an I/O is kept for the next one up to this size (Linux's usb-storage
 * moves at most 1 MiB per request); a larger one, which only a hostile host asks for, goes. */
#define SPARE_BUFFER_MAX (1024 * 1024)

typedef enum {
  BOT_IDLE,     /* waiting for a CBW */
  BOT_DATA_IN,
  BOT_DATA_OUT,
  BOT_STATUS,   /* the CSW goes to the next bulk IN request */
} BotState;

/* The image descriptor, shared by the device and its jobs: a job still running after the device
 * went keeps it open, so its pread/pwrite never lands on a recycled descriptor number. */
typedef struct {
  gatomicrefcount ref;
  int fd;
  gboolean in_memory;  /* tmpfs, ramfs, hugetlbfs or a memfd: I/O cannot stall on a disk */
} MscImage;

typedef enum {
  MSC_IO_READ,
  MSC_IO_WRITE,
  MSC_IO_SYNC,
} MscIoKind;

typedef struct {
  /* Set before the job is queued; the worker only reads them. */
  MscIoKind kind;
  MscImage *image;
  GMainContext *context;  /* where the result goes */
  guint8 *buffer;         /* the job's own: never the URB's */
  gsize buffer_size;
  gsize length;
  guint64 offset;

  /* Set by the worker before it hands the job back (the source attach orders the accesses). */
  gboolean ok;
  gsize done;

  /* Main context only. */
  PbMassStorage *owner;   /* NULL once the device is gone */
  PbUrb *urb;             /* the request the I/O serves; NULL once it left us (cancel, reset) */
  gboolean abandoned;     /* its command is over: the result is dropped */
  gsize taken;            /* write: bytes of the OUT request the transport takes */
} MscJob;

struct _PbMassStorage {
  GObject parent_instance;

  PbVirtualDevice *device;
  MscImage *image;
  GMainContext *context;    /* the thread-default context at creation: all state lives there */
  GThreadPool *pool;        /* at most one worker thread */
  MscJob *job;              /* at the worker (for this command, or abandoned), or NULL */
  guint8 *spare;            /* the last job's buffer, for the next one */
  gsize spare_size;
  PbScsiDisk disk;

  BotState state;
  gboolean needs_reset;     /* invalid CBW: both pipes stay halted until a reset recovery */
  PbBotCbw cbw;
  PbScsiCommand command;
  guint64 host_remaining;   /* of dCBWDataTransferLength, not yet moved */
  guint64 device_remaining; /* of what the command means to move */
  guint64 moved;            /* bytes of the command's data moved: the residue is the rest */
  gboolean io_failed;
  gboolean sync_wanted;     /* SYNCHRONIZE CACHE: the CSW waits for a flush of the image */
  guint8 csw_status;
  /* Requests waiting, linked by device_link; device_data points at the queue. Bulk IN waits
   * for data or a CSW; bulk OUT waits only behind a write at the worker, to keep its order. */
  GQueue held_in;
  GQueue held_out;
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
static void service_out (PbMassStorage *self);

/* ---- the image and its worker ---- */

static MscImage *
msc_image_ref (MscImage *image)
{
  g_atomic_ref_count_inc (&image->ref);
  return image;
}

static void
msc_image_unref (MscImage *image)
{
  if (!g_atomic_ref_count_dec (&image->ref))
    return;
  if (image->fd >= 0)
    close (image->fd);
  g_free (image);
}

/* The test gate (pb-mass-storage-private.h) and the count of live jobs. */
static GMutex gate_lock;
static GCond gate_cond;
static gboolean gate_closed;  /* also read without the lock, as a hint */
static guint gate_waiting;
static gint live_jobs;
static gint fast_path_allowed = TRUE;

static void
gate_pass (void)
{
  if (!g_atomic_int_get (&gate_closed))
    return;
  g_mutex_lock (&gate_lock);
  gate_waiting++;
  g_cond_broadcast (&gate_cond);
  while (gate_closed)
    g_cond_wait (&gate_cond, &gate_lock);
  gate_waiting--;
  g_mutex_unlock (&gate_lock);
}

void
pb_mass_storage_set_io_gate (gboolean closed)
{
  g_mutex_lock (&gate_lock);
  g_atomic_int_set (&gate_closed, closed);
  g_cond_broadcast (&gate_cond);
  g_mutex_unlock (&gate_lock);
}

void
pb_mass_storage_set_fast_path (gboolean allowed)
{
  g_atomic_int_set (&fast_path_allowed, allowed);
}

gboolean
pb_mass_storage_wait_io_gated (guint n, guint timeout_ms)
{
  gint64 deadline = g_get_monotonic_time () + (gint64) timeout_ms * 1000;
  gboolean reached;

  g_mutex_lock (&gate_lock);
  while (!(reached = gate_waiting >= n))
    if (!g_cond_wait_until (&gate_cond, &gate_lock, deadline))
      {
        reached = gate_waiting >= n;
        break;
      }
  g_mutex_unlock (&gate_lock);
  return reached;
}

guint
pb_mass_storage_get_io_count (void)
{
  return (guint) g_atomic_int_get (&live_jobs);
}

static gboolean
read_image (int fd, guint8 *buffer, gsize length, guint64 offset, gsize *done)
{
  *done = 0;
  while (*done < length)
    {
      gssize n = pread (fd, buffer + *done, length - *done, (off_t) (offset + *done));
      if (n < 0 && errno == EINTR)
        continue;
      if (n <= 0)
        return FALSE; /* an error, or the image shrank under us */
      *done += (gsize) n;
    }
  return TRUE;
}

static gboolean
write_image (int fd, const guint8 *buffer, gsize length, guint64 offset)
{
  gsize done = 0;

  while (done < length)
    {
      gssize n = pwrite (fd, buffer + done, length - done, (off_t) (offset + done));
      if (n < 0 && errno == EINTR)
        continue;
      if (n <= 0)
        return FALSE;
      done += (gsize) n;
    }
  return TRUE;
}

/* ---- the fast path: I/O that cannot block, done at once on the main context ---- */

/* The worker costs a thread hop and a copy per request. Skip it when the I/O cannot stall: the
 * image lives in memory, or the kernel can do it without waiting (RWF_NOWAIT: data already in
 * the page cache). Anything short of the whole request falls back to the worker, which redoes
 * it from the start (the same bytes at the same offset: harmless). */
static gboolean
try_io_now (PbMassStorage *self, MscIoKind kind, guint8 *buffer, gsize length, guint64 offset)
{
  struct iovec iov = { .iov_base = buffer, .iov_len = length };
  gssize n;

  if (self->job != NULL || !g_atomic_int_get (&fast_path_allowed))
    return FALSE; /* an abandoned job may still be writing */
  if (self->image->in_memory)
    {
      gsize done;
      return kind == MSC_IO_READ ? read_image (self->image->fd, buffer, length, offset, &done)
                                 : write_image (self->image->fd, buffer, length, offset);
    }
  do
    n = kind == MSC_IO_READ ? preadv2 (self->image->fd, &iov, 1, (off_t) offset, RWF_NOWAIT)
                            : pwritev2 (self->image->fd, &iov, 1, (off_t) offset, RWF_NOWAIT);
  while (n < 0 && errno == EINTR);
  return n == (gssize) length; /* EAGAIN, EOPNOTSUPP (no RWF_NOWAIT here), short: the worker */
}

static gboolean
image_in_memory (int fd)
{
  struct statfs fs;
  struct stat st;

  /* A regular file only: fstatfs() of a device node tells where the node lives (devtmpfs is a
   * tmpfs), not where the device keeps its data (the QEMU suite's stalled dm device). */
  if (fstat (fd, &st) < 0 || !S_ISREG (st.st_mode) || fstatfs (fd, &fs) < 0)
    return FALSE;
  return fs.f_type == TMPFS_MAGIC || fs.f_type == RAMFS_MAGIC || fs.f_type == HUGETLBFS_MAGIC;
}

/* Runs wherever the job's source is dispatched or destroyed; touches nothing of the device. */
static void
msc_job_free (gpointer data)
{
  MscJob *job = data;

  g_free (job->buffer);
  msc_image_unref (job->image);
  g_main_context_unref (job->context);
  g_free (job);
  g_atomic_int_add (&live_jobs, -1);
}

static gboolean on_job_done (gpointer data);

/* The worker thread: the I/O, then the result goes back to the device's main context. Only
 * the fields the job owns are touched here, never the device or the URB. */
static void
msc_worker (gpointer data, gpointer user_data)
{
  MscJob *job = data;
  GSource *source;

  gate_pass ();
  switch (job->kind)
    {
    case MSC_IO_READ:
      job->ok = read_image (job->image->fd, job->buffer, job->length, job->offset, &job->done);
      break;
    case MSC_IO_WRITE:
      job->ok = write_image (job->image->fd, job->buffer, job->length, job->offset);
      break;
    case MSC_IO_SYNC:
    default:
      /* EINVAL/EROFS: the image cannot be synced (a special file); nothing is lost by that. */
      job->ok = fdatasync (job->image->fd) == 0 || errno == EINVAL || errno == EROFS;
      break;
    }

  /* Not g_main_context_invoke(): from a thread without a thread-default context it may run
   * the callback right here when the default context is free at that moment. */
  source = g_idle_source_new ();
  g_source_set_priority (source, G_PRIORITY_DEFAULT);
  g_source_set_callback (source, on_job_done, job, msc_job_free);
  g_source_set_static_name (source, "PbMassStorage I/O done");
  g_source_attach (source, job->context);
  g_source_unref (source);
}

/* Queues an I/O of length bytes at offset. urb (when given) is the request it serves: it stays
 * ours until the result comes back or it leaves through cancel_io() or abort_command(). */
static MscJob *
start_io (PbMassStorage *self, MscIoKind kind, PbUrb *urb, gsize length, guint64 offset)
{
  g_autoptr(GError) error = NULL;
  MscJob *job;

  g_assert (self->job == NULL);

  job = g_new0 (MscJob, 1);
  job->kind = kind;
  job->image = msc_image_ref (self->image);
  job->context = g_main_context_ref (self->context);
  if (length > 0 && self->spare != NULL && self->spare_size >= length)
    {
      job->buffer = g_steal_pointer (&self->spare);
      job->buffer_size = self->spare_size;
    }
  else if (length > 0)
    {
      job->buffer = g_malloc (length);
      job->buffer_size = length;
    }
  job->length = length;
  job->offset = offset;
  job->owner = self;
  job->urb = urb;
  if (urb != NULL)
    urb->device_data = job;
  if (kind == MSC_IO_WRITE)
    memcpy (job->buffer, urb->buffer, length);
  g_atomic_int_inc (&live_jobs);
  self->job = job;

  /* The job is queued even when no thread could be started; it then waits for one (cancels
   * are still answered meanwhile). */
  if (!g_thread_pool_push (self->pool, job, &error))
    g_warning ("mass storage: cannot start an I/O thread: %s", error->message);
  return job;
}

/* The current command no longer wants the result; the job keeps running (a worker stuck in
 * the kernel cannot be stopped) and holds the device's one I/O slot until it returns. Gives
 * back the URB it served, if any. */
static PbUrb *
abandon_io (PbMassStorage *self)
{
  MscJob *job = self->job;
  PbUrb *urb;

  if (job == NULL || job->abandoned)
    return NULL;
  job->abandoned = TRUE;
  urb = g_steal_pointer (&job->urb);
  if (urb != NULL)
    urb->device_data = NULL;
  return urb;
}

/* ---- request queues ---- */

static void
hold (GQueue *queue, PbUrb *urb, gboolean at_head)
{
  urb->device_data = queue;
  urb->device_link.data = urb;
  if (at_head)
    g_queue_push_head_link (queue, &urb->device_link);
  else
    g_queue_push_tail_link (queue, &urb->device_link);
}

static void
unhold (GQueue *queue, PbUrb *urb)
{
  g_queue_unlink (queue, &urb->device_link);
  urb->device_data = NULL;
}

static void
complete_queue (GQueue *queue, gint32 status)
{
  while (queue->head != NULL)
    {
      PbUrb *urb = queue->head->data;
      unhold (queue, urb);
      pb_urb_complete (urb, status, 0);
    }
}

static void
complete_held (PbMassStorage *self, gint32 status)
{
  complete_queue (&self->held_in, status);
  complete_queue (&self->held_out, status);
}

/* ---- BOT ---- */

static void
reset_bot (PbMassStorage *self)
{
  self->state = BOT_IDLE;
  self->host_remaining = 0;
  self->device_remaining = 0;
  self->moved = 0;
  self->io_failed = FALSE;
  self->sync_wanted = FALSE;
  self->csw_status = PB_BOT_CSW_PASSED;
}

/* The transport starts over (class reset, reconfiguration, port reset, new client): the
 * command's I/O result will be dropped, and the request it served waits again at the head of
 * its queue, as if the I/O had never started (nothing was copied into it). */
static void
abort_command (PbMassStorage *self)
{
  MscIoKind kind = self->job != NULL ? self->job->kind : MSC_IO_SYNC;
  PbUrb *urb = abandon_io (self);

  if (urb != NULL)
    hold (kind == MSC_IO_READ ? &self->held_in : &self->held_out, urb, TRUE);
  reset_bot (self);
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
  /* The flush runs at the worker when the CSW is asked for. */
  self->sync_wanted = command->sync;

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

/* n bytes of urb hold the command's data (n may be 0 after a failed read): account, complete. */
static void
finish_data_in (PbMassStorage *self, PbUrb *urb, gsize n)
{
  gint32 status = PB_URB_OK;

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
send_data (PbMassStorage *self, PbUrb *urb)
{
  gsize n = (gsize) MIN ((guint64) urb->length, MIN (self->host_remaining, self->device_remaining));

  if (self->command.media_io)
    {
      if (try_io_now (self, MSC_IO_READ, urb->buffer, n, self->command.offset))
        {
          self->command.offset += n;
          finish_data_in (self, urb, n);
          return;
        }
      start_io (self, MSC_IO_READ, urb, n, self->command.offset); /* read_done() goes on */
      return;
    }
  memcpy (urb->buffer, self->command.response + (self->command.length - self->device_remaining), n);
  finish_data_in (self, urb, n);
}

static void
read_done (PbMassStorage *self, MscJob *job)
{
  PbUrb *urb = g_steal_pointer (&job->urb);
  gsize n = job->length;

  urb->device_data = NULL;
  if (!job->ok)
    {
      /* Send what was read, then end the data phase: the CSW says failed. */
      media_failed (self, FALSE);
      self->device_remaining = job->done;
      n = job->done;
    }
  memcpy (urb->buffer, job->buffer, n);
  self->command.offset += n;
  finish_data_in (self, urb, n);
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
          unhold (&self->held_in, urb);
          pb_urb_complete (urb, PB_URB_EPIPE, 0);
          continue;
        }
      if (urb->length == 0)
        {
          /* Nothing fits in it: it cannot take data or a CSW, so it consumes neither. */
          unhold (&self->held_in, urb);
          pb_urb_complete (urb, PB_URB_OK, 0);
          continue;
        }
      switch (self->state)
        {
        case BOT_DATA_IN:
          /* One I/O at a time per device, an abandoned one included: the next read waits. */
          if (self->command.media_io && self->job != NULL)
            return;
          unhold (&self->held_in, urb);
          send_data (self, urb);
          break;
        case BOT_STATUS:
          if (self->sync_wanted)
            {
              if (self->job == NULL)
                start_io (self, MSC_IO_SYNC, NULL, 0, 0);
              return; /* the CSW waits for the flush */
            }
          unhold (&self->held_in, urb);
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
sync_done (PbMassStorage *self, MscJob *job)
{
  self->sync_wanted = FALSE;
  if (!job->ok)
    {
      pb_scsi_disk_set_sense (&self->disk, PB_SCSI_SENSE_MEDIUM_ERROR, PB_SCSI_ASC_WRITE_ERROR, 0);
      raise_status (self, PB_BOT_CSW_FAILED);
    }
}

/* The transport took n bytes of urb, useful of them for the command: account, complete. */
static void
finish_data_out (PbMassStorage *self, PbUrb *urb, gsize n, gsize useful)
{
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
receive_data (PbMassStorage *self, PbUrb *urb)
{
  gsize n = (gsize) MIN ((guint64) urb->length, self->host_remaining);
  gsize useful = (gsize) MIN ((guint64) n, self->device_remaining);

  if (useful > 0 && self->command.media_io && !self->io_failed)
    {
      if (try_io_now (self, MSC_IO_WRITE, urb->buffer, useful, self->command.offset))
        {
          self->command.offset += useful;
          finish_data_out (self, urb, n, useful);
          return;
        }
      /* The request completes when the data is on the image (write_done()). */
      MscJob *job = start_io (self, MSC_IO_WRITE, urb, useful, self->command.offset);
      job->taken = n;
      return;
    }
  finish_data_out (self, urb, n, useful);
}

static void
write_done (PbMassStorage *self, MscJob *job)
{
  PbUrb *urb = g_steal_pointer (&job->urb);

  urb->device_data = NULL;
  if (!job->ok)
    media_failed (self, TRUE);
  self->command.offset += job->length;
  finish_data_out (self, urb, job->taken, job->length);
}

static void
take_out (PbMassStorage *self, PbUrb *urb)
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

/* OUT requests are taken in order; during a data-out phase each waits for the worker (its own
 * command's previous write, or an abandoned I/O still running). */
static gboolean
out_must_wait (PbMassStorage *self)
{
  return self->state == BOT_DATA_OUT && self->job != NULL;
}

static void
service_out (PbMassStorage *self)
{
  while (self->held_out.head != NULL && !out_must_wait (self))
    {
      PbUrb *urb = self->held_out.head->data;

      unhold (&self->held_out, urb);
      /* The framework checked the halt when the request arrived; it may have come since. */
      if (pb_virtual_device_get_halt (self->device, EP_OUT))
        pb_urb_complete (urb, PB_URB_EPIPE, 0);
      else
        take_out (self, urb);
    }
}

static void
handle_out (PbMassStorage *self, PbUrb *urb)
{
  if (self->held_out.head != NULL || out_must_wait (self))
    hold (&self->held_out, urb, FALSE);
  else
    take_out (self, urb);
}

/* On the main context: the worker is done with job. */
static gboolean
on_job_done (gpointer data)
{
  MscJob *job = data;
  g_autoptr(PbMassStorage) self = NULL;

  if (job->owner == NULL)
    return G_SOURCE_REMOVE; /* the device went meanwhile: drop the result */
  self = g_object_ref (job->owner);
  g_assert (self->job == job);
  self->job = NULL;
  if (!job->abandoned)
    switch (job->kind)
      {
      case MSC_IO_READ:
        read_done (self, job);
        break;
      case MSC_IO_WRITE:
        write_done (self, job);
        break;
      case MSC_IO_SYNC:
      default:
        sync_done (self, job);
        break;
      }
  if (job->buffer != NULL && job->buffer_size <= SPARE_BUFFER_MAX)
    {
      g_free (self->spare);
      self->spare = g_steal_pointer (&job->buffer);
      self->spare_size = job->buffer_size;
    }
  /* The worker is free: whatever waited for it goes on. */
  service_out (self);
  service_in (self);
  return G_SOURCE_REMOVE;
}

/* The host unlinked the request whose I/O is at the worker: it completes now, the result will
 * be dropped. The host gave up on part of the data phase, so the command cannot pass: a phase
 * error (which asks the host for a reset recovery), the data phase ended with a stall as in
 * case 5/13, and the residue counts the lost part. A write may still land on the image, as
 * on a real disk; the CSW does not claim it did. */
static void
cancel_io (PbMassStorage *self)
{
  gboolean read = self->job->kind == MSC_IO_READ;
  PbUrb *urb = abandon_io (self);

  raise_status (self, PB_BOT_CSW_PHASE_ERROR);
  self->device_remaining = 0;
  stall_and_enter_status (self, read ? EP_IN : EP_OUT);
  pb_urb_complete (urb, PB_URB_ECONNRESET, 0);
  service_out (self);
  service_in (self);
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
      hold (&self->held_in, urb, FALSE);
      service_in (self);
    }
}

static void
msc_cancel (PbVirtualDevice *device, PbUrb *urb, gpointer user_data)
{
  PbMassStorage *self = user_data;

  /* Every request not completed yet is in a queue or at the worker; device_data says where. */
  if (urb->device_data == &self->held_in || urb->device_data == &self->held_out)
    {
      unhold (urb->device_data, urb);
      pb_urb_complete (urb, PB_URB_ECONNRESET, 0);
    }
  else if (self->job != NULL && self->job->urb == urb)
    cancel_io (self);
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
      abort_command (self);
      pb_urb_complete (urb, PB_URB_OK, 0);
      service_out (self);
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
  abort_command (self);
  service_out (self);
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

  abort_command (self);
  complete_held (self, PB_URB_ESHUTDOWN);
  self->needs_reset = FALSE;
  pb_scsi_disk_set_sense (&self->disk, PB_SCSI_SENSE_NO_SENSE, 0, 0);
}

/* A new client, or the last one left: the next one finds a freshly plugged disk. */
static void
msc_power_cycle (PbVirtualDevice *device, gpointer user_data)
{
  PbMassStorage *self = user_data;

  abort_command (self);
  complete_held (self, PB_URB_ESHUTDOWN);
  self->needs_reset = FALSE;
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
  self->image->fd = fcntl (fd, F_DUPFD_CLOEXEC, 3);
  self->image->in_memory = self->image->fd >= 0 && image_in_memory (self->image->fd);
  if (self->image->fd < 0)
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
  abort_command (self);
  complete_held (self, PB_URB_ESHUTDOWN);
  /* An I/O still at the worker finishes on its own (it holds the image open) and its result
   * is dropped; nobody waits for it, so a hung disk cannot hold up the process. */
  if (self->job != NULL)
    {
      self->job->owner = NULL;
      self->job = NULL;
    }
  if (self->pool != NULL)
    {
      /* Not immediate: a job not started yet still runs, so that it is freed. */
      g_thread_pool_free (self->pool, FALSE, FALSE);
      self->pool = NULL;
    }
  if (self->device != NULL)
    pb_virtual_device_detach (self->device);
  g_clear_object (&self->device);
  G_OBJECT_CLASS (pb_mass_storage_parent_class)->dispose (object);
}

static void
pb_mass_storage_finalize (GObject *object)
{
  PbMassStorage *self = PB_MASS_STORAGE (object);

  msc_image_unref (self->image);
  g_main_context_unref (self->context);
  g_free (self->spare);
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
  self->image = g_new0 (MscImage, 1);
  g_atomic_ref_count_init (&self->image->ref);
  self->image->fd = -1;
  self->context = g_main_context_ref_thread_default ();
  /* Non-exclusive with one thread: creating it starts no thread and cannot fail. */
  self->pool = g_thread_pool_new (msc_worker, NULL, 1, FALSE, NULL);
}
